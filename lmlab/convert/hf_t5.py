"""Hugging Face ``T5ForConditionalGeneration`` / ``T5EncoderModel`` <-> lmlab ``EncoderDecoder`` checkpoints.

Covers T5 v1.0 (ReLU MLP, output projection tied to the embedding and scaled
by ``d_model**-0.5``), T5 v1.1, Flan-T5, mT5 and ByT5 (gated GELU with the
tanh approximation, separate unscaled output projection). MrT5's delete gate
has no Hugging Face counterpart and is refused on export.

Encoder-only files (``T5EncoderModel``, ``MT5EncoderModel``: ``shared`` and
``encoder.*``, no ``decoder.*``) import into the ``token_embedder`` and
``encoder`` subtrees alone; the tree then has no ``decoder``, and a network
that needs one initialises it fresh. Such a tree exports back as
``T5EncoderModel``.

Name mapping (``<s>`` is ``encoder`` or ``decoder``, ``<i>`` a block)::

  shared.weight                                        token_embedder/embedding
  <s>.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                       <s>/relpos_bias/rel_embedding
  <s>.block.<i>.layer.0.SelfAttention.{q,k,v,o}.weight  (self_)attention/{query,key,value,out}
  decoder.block.<i>.layer.1.EncDecAttention.*          cross_attention/*
  <s>.block.<i>.layer.<j>.layer_norm.weight            pre_*_norm/scale
  <s>.block.<i>.layer.<last>.DenseReluDense.{wi,wi_0,wi_1,wo}.weight  mlp/*/kernel
  <s>.final_layer_norm.weight                          <s>/final_norm/scale
  lm_head.weight                                       decoder/logits_dense/kernel (untied)

Projections are transposed (torch ``Linear`` is ``[out, in]``) and split into
heads; nothing is rescaled, since both implementations leave attention
scores unscaled.

Transformers 5 quirk: its ``T5Config`` always reports
``tie_word_embeddings=True`` and keeps the v1.0/v1.1 switch in
``scale_decoder_outputs`` (set from a ``tie_word_embeddings=False`` argument
or config entry). A freshly built v1.1 model there shares ``lm_head.weight``
with ``shared.weight`` but does not scale, and ``save_pretrained`` then omits
``lm_head.weight``. lmlab expresses that as an untied model whose
``logits_dense`` starts as a copy of the embedding; export always writes
``lm_head.weight`` for untied models and sets both config keys, so older
transformers versions load the folder correctly too.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from lmlab.convert import common
from lmlab.convert.common import COPY, HEADS_IN, HEADS_OUT, LINEAR, Entry, Params, StateDict
from lmlab.models.config import T5Config
from lmlab.models.encoder_decoder import EncoderDecoder

# mT5 is T5 v1.1 under another name (UMT5's per-block position biases are not).
MODEL_TYPES = ("t5", "mt5")
# Parts of a full T5ForConditionalGeneration beyond the encoder and the shared
# embedding: the decoder stack and the vocabulary projection (``decoder/logits_dense``
# when untied, the scaled embedding when tied).
HEADS = ("decoder", "lm_head")
_CLASS_STEMS = {"t5": "T5", "mt5": "MT5"}
# Hugging Face ``feed_forward_proj`` <-> lmlab ``mlp_activation``, for the
# pairs that compute exactly the same function ("gelu" in a gated T5 is
# Hugging Face's tanh-approximated ``gelu_new``).
_FROM_HF_ACTIVATION = {
    "relu": "relu",
    "gated-gelu": "gated_gelu_tanh",
    "gated-gelu_new": "gated_gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gated-relu": "gated_relu",
    "gated-silu": "gated_silu",
}
_TO_HF_ACTIVATION = {
    "relu": "relu",
    "gated_gelu_tanh": "gated-gelu",
    "gelu_tanh": "gelu_new",
    "gated_relu": "gated-relu",
    "gated_silu": "gated-silu",
}

_TIED_EMBEDDINGS = {
    "encoder.embed_tokens.weight": "shared.weight",
    "decoder.embed_tokens.weight": "shared.weight",
}
# Entries Hugging Face derives from feed_forward_proj; dropped from a base config.
_DERIVED_KEYS = ("dense_act_fn", "is_gated_act")
# Present in some old checkpoints; never used by either implementation.
_IGNORABLE = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def t5_config_from_hf(hf_config: Mapping[str, Any]) -> T5Config:
  """lmlab ``T5Config`` equivalent to a Hugging Face T5 ``config.json`` dict.

  ``vocab_multiple`` is 1 so the vocabulary keeps exactly the checkpoint's
  size. The output projection is tied (and scaled) when the checkpoint
  scales decoder outputs: ``scale_decoder_outputs`` if present (transformers
  5), else ``tie_word_embeddings`` (mT5: never). lmlab starts decoding with ``pad_id``, as
  every released T5 does (``decoder_start_token_id`` is not read).

  Encoder-only configs (``T5EncoderModel``: ``is_encoder_decoder`` false)
  give the same config; the decoder sizes then describe the decoder a full
  network would get.

  Raises:
    ConversionError: For a ``model_type`` other than t5/mt5, a decoder-only
      config or an MLP activation without an exact lmlab equivalent.
  """
  model_type = common.require_model_type(hf_config, MODEL_TYPES, "T5")
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in _FROM_HF_ACTIVATION:
    raise common.ConversionError(
        f"T5 feed_forward_proj={proj!r} has no exact lmlab equivalent; supported: "
        f"{sorted(_FROM_HF_ACTIVATION)}.")
  if hf_config.get("is_decoder", False):
    raise common.ConversionError("Decoder-only T5 checkpoints are not supported (only "
                                 "encoder-decoder and encoder-only ones).")
  scaled = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
  if model_type == "mt5":  # Never scaled (and never tied in the released weights).
    scaled = False
  num_layers = hf_config.get("num_layers", 6)
  num_decoder_layers = hf_config.get("num_decoder_layers")
  return T5Config(
      vocab_size=hf_config.get("vocab_size", 32128),
      vocab_multiple=1,
      d_model=hf_config.get("d_model", 512),
      num_heads=hf_config.get("num_heads", 8),
      head_dim=hf_config.get("d_kv", 64),
      d_ff=hf_config.get("d_ff", 2048),
      num_encoder_layers=num_layers,
      num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
      mlp_activation=_FROM_HF_ACTIVATION[proj],
      relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
      norm_eps=hf_config.get("layer_norm_epsilon", 1e-6),
      dropout_rate=hf_config.get("dropout_rate", 0.1),
      tie_word_embeddings=bool(scaled),
      pad_id=_first(hf_config.get("pad_token_id", 0), default=0),
      eos_id=_first(hf_config.get("eos_token_id", 1), default=1),
  )


def _first(value: Any, default: int) -> int:
  """A token id from a config entry that may be a list of ids or null."""
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return default if value is None else int(value)


def architecture(model_type: str = "t5", decoder: bool = True) -> str:
  """``T5ForConditionalGeneration`` / ``T5EncoderModel`` (``MT5...`` for mT5)."""
  if model_type not in _CLASS_STEMS:
    raise common.ConversionError(f"model_type={model_type!r} is not one of {MODEL_TYPES}.")
  return _CLASS_STEMS[model_type] + ("ForConditionalGeneration" if decoder else "EncoderModel")


def t5_config_to_hf(config: T5Config, base: Optional[Mapping[str, Any]] = None,
                    model_type: str = "t5", decoder: bool = True) -> dict[str, Any]:
  """Hugging Face ``config.json`` dict for an lmlab ``T5Config``.

  Args:
    config: lmlab config.
    base: Optional original Hugging Face config; its entries that lmlab does
      not model (tokenizer class, task prefixes, ...) are kept.
    model_type: ``t5`` or ``mt5`` (mT5 has no tied, scaled output projection).
    decoder: Whether the parameters have a decoder; without one the
      architecture is ``T5EncoderModel``.

  Raises:
    ConversionError: For MrT5 (delete gate), an activation Hugging Face's
      T5 cannot express, or a tied (scaled) config as mT5.
  """
  _check_exportable(config)
  arch = architecture(model_type, decoder)
  if model_type == "mt5" and config.tie_word_embeddings:
    raise common.ConversionError(
        "mT5 never scales a tied output projection; export this tied (T5 v1.0) config with "
        "model_type='t5'.")
  hf = {k: v for k, v in (base or {}).items() if k not in _DERIVED_KEYS}
  hf.update({
      "architectures": [arch],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.head_dim,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.norm_eps,
      "feed_forward_proj": _TO_HF_ACTIVATION[config.mlp_activation],
      "dropout_rate": config.dropout_rate,
      # Both keys: older transformers read the first, version 5 the second.
      "tie_word_embeddings": config.tie_word_embeddings,
      "scale_decoder_outputs": config.tie_word_embeddings,
      "is_encoder_decoder": decoder,
      "use_cache": decoder,
      "pad_token_id": config.pad_id,
      "eos_token_id": config.eos_id,
      "decoder_start_token_id": config.pad_id,
  })
  return hf


def _check_exportable(config: T5Config) -> None:
  if config.delete_gate_layer is not None:
    raise common.ConversionError("MrT5's delete gate has no Hugging Face T5 counterpart.")
  if config.mlp_activation not in _TO_HF_ACTIVATION:
    raise common.ConversionError(
        f"mlp_activation={config.mlp_activation!r} has no Hugging Face T5 equivalent.")
  if config.vocab_size is None:
    raise common.ConversionError("T5Config.vocab_size must be set.")


def abstract_t5_params(config: T5Config, decoder: bool = True) -> Params:
  """Shapes of ``EncoderDecoder(config)``'s parameters (no memory allocated).

  ``decoder=False``: only ``token_embedder`` and ``encoder`` (an encoder-only file).
  """
  if config.vocab_size is None:
    raise common.ConversionError("T5Config.vocab_size must be set.")
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = common.abstract_params(EncoderDecoder(config), ids, ids)
  return tree if decoder else {k: v for k, v in tree.items() if k != "decoder"}


def _attention_entries(path: tuple[str, ...], prefix: str) -> list[Entry]:
  return [Entry(path + (lm, "kernel"), f"{prefix}.{hf}.weight", layout)
          for lm, hf, layout in (("query", "q", HEADS_IN), ("key", "k", HEADS_IN),
                                 ("value", "v", HEADS_IN), ("out", "o", HEADS_OUT))]


def _mlp_entries(path: tuple[str, ...], prefix: str, config: T5Config) -> list[Entry]:
  inputs = ("wi_0", "wi_1") if config.mlp_activation.startswith("gated_") else ("wi",)
  return [Entry(path + (name, "kernel"), f"{prefix}.{name}.weight", LINEAR)
          for name in inputs + ("wo",)]


def t5_plan(config: T5Config, decoder: bool = True) -> list[Entry]:
  """Every lmlab parameter with its Hugging Face tensor, in Hugging Face state-dict order.

  ``decoder=False``: the encoder-only plan (``T5EncoderModel``).
  """
  plan = [Entry(("token_embedder", "embedding"), "shared.weight")]
  for stack in ("encoder", "decoder") if decoder else ("encoder",):
    count = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
    for i in range(count):
      block = f"{stack}.block.{i}"
      layer = (stack, f"layers_{i}")
      self_name = "attention" if stack == "encoder" else "self_attention"
      norms = (("pre_attention_norm", "pre_mlp_norm") if stack == "encoder" else
               ("pre_self_attention_norm", "pre_cross_attention_norm", "pre_mlp_norm"))
      plan += _attention_entries(layer + (self_name,), f"{block}.layer.0.SelfAttention")
      if i == 0:
        plan.append(Entry((stack, "relpos_bias", "rel_embedding"),
                          f"{block}.layer.0.SelfAttention.relative_attention_bias.weight"))
      plan.append(Entry(layer + (norms[0], "scale"), f"{block}.layer.0.layer_norm.weight"))
      if stack == "decoder":
        plan += _attention_entries(layer + ("cross_attention",), f"{block}.layer.1.EncDecAttention")
        plan.append(Entry(layer + (norms[1], "scale"), f"{block}.layer.1.layer_norm.weight"))
      last = len(norms) - 1
      plan += _mlp_entries(layer + ("mlp",), f"{block}.layer.{last}.DenseReluDense", config)
      plan.append(Entry(layer + (norms[-1], "scale"), f"{block}.layer.{last}.layer_norm.weight"))
    plan.append(Entry((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", COPY))
  if decoder and not config.tie_word_embeddings:
    # A transformers-5 file of a tied-but-unscaled model has no lm_head.weight.
    plan.append(Entry(("decoder", "logits_dense", "kernel"), "lm_head.weight", LINEAR,
                      fallback="shared.weight"))
  return plan


def _duplicates(config: T5Config, decoder: bool = True) -> dict[str, str]:
  if not decoder:
    return {"encoder.embed_tokens.weight": "shared.weight"}
  duplicates = dict(_TIED_EMBEDDINGS)
  if config.tie_word_embeddings:
    duplicates["lm_head.weight"] = "shared.weight"
  return duplicates


def has_decoder(state: Mapping[str, Any]) -> bool:
  """Whether a T5 state dict holds a decoder (``T5ForConditionalGeneration``)
  rather than only an encoder (``T5EncoderModel``)."""
  return any(name.startswith("decoder.") for name in state)


def params_heads(params: Params) -> tuple[str, ...]:
  """The ``HEADS`` an lmlab T5 tree has: both with a decoder, none without."""
  return HEADS if "decoder" in params else ()


def params_from_hf(state: Mapping[str, np.ndarray], config: T5Config,
                   decoder: Optional[bool] = None) -> Params:
  """lmlab ``EncoderDecoder`` parameters from a Hugging Face T5 state dict.

  Args:
    state: Tensor name -> array, as in ``T5ForConditionalGeneration.state_dict()``
      or its ``model.safetensors`` (tied duplicates may be present or not).
    config: lmlab config of the target network (``t5_config_from_hf``).
    decoder: Whether to read a decoder; default: if the state has
      ``decoder.*`` tensors (``T5EncoderModel`` files have none).

  Returns:
    Nested dict of float32 numpy arrays with exactly the structure and shapes
    of ``EncoderDecoder(config).init(...)["params"]`` (unboxed), without
    ``decoder`` for an encoder-only state.

  Raises:
    ConversionError: (a ``ValueError``) naming the first tensor that is
      missing or mis-shaped, the first unexpected one, or a tied duplicate
      (e.g. ``lm_head.weight`` of a tied config) that differs from
      ``shared.weight``.
  """
  if decoder is None:
    decoder = has_decoder(state)
  return common.import_state(state, t5_plan(config, decoder), abstract_t5_params(config, decoder),
                             duplicates=_duplicates(config, decoder), ignorable=_IGNORABLE,
                             what="T5" if decoder else "T5 encoder")


def params_to_hf(params: Params, config: T5Config) -> StateDict:
  """The Hugging Face T5 state dict (names, shapes, float32 values) of lmlab parameters.

  Includes the tied copies ``encoder.embed_tokens.weight`` and
  ``decoder.embed_tokens.weight`` (and ``lm_head.weight`` for a tied config),
  as ``T5ForConditionalGeneration.state_dict()`` does. A tree without
  ``decoder`` gives ``T5EncoderModel.state_dict()``.
  """
  _check_exportable(config)
  decoder = "decoder" in params
  return common.export_state(params, t5_plan(config, decoder), abstract_t5_params(config, decoder),
                             duplicates=_duplicates(config, decoder))


def load_hf_t5(folder: str | os.PathLike) -> tuple[T5Config, Params]:
  """lmlab config and parameters of a Hugging Face T5 folder (config.json + safetensors).

  An encoder-only folder gives a tree without ``decoder`` (see ``params_from_hf``).
  """
  hf_config, state = common.read_hf_folder(folder)
  config = t5_config_from_hf(hf_config)
  return config, params_from_hf(state, config)


def save_hf_t5(folder: str | os.PathLike, config: T5Config, params: Params,
               base: Optional[Mapping[str, Any]] = None, model_type: str = "t5") -> None:
  """Writes a folder that ``T5ForConditionalGeneration.from_pretrained`` loads.

  Like ``save_pretrained``, tied copies of ``shared.weight`` are left out;
  ``lm_head.weight`` is written whenever the model is untied. A tree without
  ``decoder`` is written as ``T5EncoderModel``. ``base`` and ``model_type``
  (``t5``/``mt5``) are as for ``t5_config_to_hf``.
  """
  decoder = "decoder" in params
  state = params_to_hf(params, config)
  for name in _duplicates(config, decoder):
    del state[name]
  common.write_hf_folder(folder, t5_config_to_hf(config, base, model_type, decoder), state)

