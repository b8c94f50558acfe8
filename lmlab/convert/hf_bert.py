"""Hugging Face BERT / RoBERTa / XLM-R checkpoints <-> lmlab encoder parameters (MLM, pooler, classifier).

Only the original BERT layout has a Hugging Face counterpart: post-LN
LayerNorm with biases, learned absolute positions, token-type embeddings,
an ungated MLP, and the MLM head ``dense -> gelu -> LayerNorm -> decoder``.
Other lmlab layouts (pre-LN, RMSNorm, RoPE/ALiBi, gated MLPs, no biases) are
refused with a ``ConversionError``.

Name mapping (``<p>`` is ``bert``, or ``roberta`` for RoBERTa and XLM-R, ``<i>`` a block)::

  <p>.embeddings.{word,position,token_type}_embeddings.weight
                       encoder/embeddings/{token,position,token_type}_embedder/embedding
  <p>.embeddings.LayerNorm.{weight,bias}               encoder/embeddings/norm/{scale,bias}
  <p>.encoder.layer.<i>.attention.self.{query,key,value}.{weight,bias}
                                                       encoder/layers_<i>/attention/*/{kernel,bias}
  <p>.encoder.layer.<i>.attention.output.dense.*       encoder/layers_<i>/attention/out/*
  <p>.encoder.layer.<i>.attention.output.LayerNorm.*   encoder/layers_<i>/attention_norm/*
  <p>.encoder.layer.<i>.{intermediate,output}.dense.*  encoder/layers_<i>/mlp/{wi,wo}/*
  <p>.encoder.layer.<i>.output.LayerNorm.*             encoder/layers_<i>/mlp_norm/*
  cls.predictions.transform.{dense,LayerNorm}.*  (BERT) mlm_head/{transform,norm}/*
  lm_head.{dense,layer_norm}.*                (RoBERTa) mlm_head/{transform,norm}/*
  cls.predictions.bias / lm_head.bias                  mlm_head/bias (tied decoder)
  <p>.pooler.dense.{weight,bias}                       pooler/{kernel,bias}
  classifier.{weight,bias}                     (BERT)  classifier/{kernel,bias}
  classifier.dense.{weight,bias}            (RoBERTa)  pooler/{kernel,bias}
  classifier.out_proj.{weight,bias}         (RoBERTa)  classifier/{kernel,bias}

Base models (``BertModel``, ``RobertaModel``, what ``save_pretrained`` of a
base model and sentence-transformers folders hold) name their tensors
without the ``<p>.`` prefix; import accepts both spellings, and export writes
a tree without MLM head or classifier the way ``BertModel.save_pretrained``
does (no prefix).

Heads. The parts of a checkpoint beyond the encoder are read from its
tensors (``HEADS``): ``mlm_head`` (``BertForMaskedLM``, ``RobertaForMaskedLM``,
the MLM half of ``BertForPreTraining``), ``pooler`` (``BertModel``,
``BertForPreTraining``, ``BertForSequenceClassification``; released BERT
checkpoints such as ``bert-base-uncased`` carry it) and ``classifier``
(``BertForSequenceClassification``, ``RobertaForSequenceClassification``).
The pooler is Hugging Face's ``tanh(dense(h_[CLS]))``, which is exactly lmlab's
``EncoderForSequenceClassification(..., pooling="cls")`` pooler, so a fine-tune
that starts from an imported BERT starts from BERT's pooled-[CLS] classifier
input. Next-sentence weights (``cls.seq_relationship``) have no lmlab
counterpart and are dropped. RoBERTa's classification head
``out_proj(tanh(dense(h_<s>)))`` is the same function, so its ``dense`` is
lmlab's ``pooler`` and its ``out_proj`` the ``classifier`` (a ``<p>.pooler``
that old RoBERTa classifier files may carry is unused there and dropped).
Export writes back whatever parts the parameters hold.

RoBERTa positions: Hugging Face numbers real tokens from ``pad_token_id + 1``
(2 for the released models), pads get ``pad_token_id``, and the rows below
``pad_token_id + 1`` of its position table are never used for real tokens.
lmlab numbers positions from 0, so import drops those rows
(``max_positions = max_position_embeddings - pad_token_id - 1``): lmlab
position ``i`` is Hugging Face position ``i + 2``. With right padding (or
none) lmlab's default positions then give Hugging Face's logits at every
non-pad token; with left padding pass ``positions`` explicitly. Export
writes zeros into the dropped rows (Hugging Face initialises the pad row to
zero and never trains it; row 0 is never read), so every other tensor round
trips bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lmlab.convert import common
from lmlab.convert.common import (COPY, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, Entry, Params,
                                  StateDict)
from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import EncoderForMaskedLM, EncoderForSequenceClassification

# model_type -> (tensor prefix of the base model, stem of the Hugging Face class names).
# XLM-R is RoBERTa's layout under another name (and a larger vocabulary).
_VARIANTS = {"bert": ("bert", "Bert"), "roberta": ("roberta", "Roberta"),
             "xlm-roberta": ("roberta", "XLMRoberta")}
MODEL_TYPES = tuple(_VARIANTS)
# Top-level lmlab parameters besides ``encoder`` that a checkpoint may hold.
HEADS = ("mlm_head", "pooler", "classifier")
# Hugging Face ``hidden_act`` -> lmlab activation with exactly the same function.
_FROM_HF_ACTIVATION = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_TO_HF_ACTIVATION = {"gelu": "gelu", "relu": "relu", "silu": "silu"}
# Weights of heads that no lmlab network has (BERT's next-sentence prediction).
_IGNORABLE_PREFIXES = ("cls.seq_relationship.",)
_IGNORABLE_SUFFIXES = ("embeddings.position_ids",)


def _check_model_type(model_type: str) -> None:
  if model_type not in _VARIANTS:
    raise common.ConversionError(f"model_type={model_type!r} is not one of {MODEL_TYPES}.")


def base_prefix(model_type: str) -> str:
  """Name of the base model inside the task classes: ``bert``, or ``roberta`` (also XLM-R)."""
  _check_model_type(model_type)
  return _VARIANTS[model_type][0]


def roberta_like(model_type: str) -> bool:
  """Whether the model has RoBERTa's layout (position offset, ``lm_head``, classification head)."""
  return base_prefix(model_type) == "roberta"


def architecture(model_type: str, heads: Sequence[str]) -> str:
  """The Hugging Face class that holds exactly ``heads``: ``<Stem>ForSequenceClassification``
  with a classifier, ``<Stem>ForMaskedLM`` with an MLM head, else ``<Stem>Model``."""
  _check_model_type(model_type)
  stem = _VARIANTS[model_type][1]
  if "classifier" in heads:
    return f"{stem}ForSequenceClassification"
  if "mlm_head" in heads:
    return f"{stem}ForMaskedLM"
  return f"{stem}Model"


def position_offset(model_type: str, pad_id: int) -> int:
  """Hugging Face position table rows that lmlab drops: ``pad_id + 1`` for RoBERTa, else 0."""
  return pad_id + 1 if roberta_like(model_type) else 0


def bert_config_from_hf(hf_config: Mapping[str, Any]) -> EncoderConfig:
  """lmlab ``EncoderConfig`` equivalent to a BERT or RoBERTa ``config.json`` dict.

  The vocabulary keeps the checkpoint's exact size; dropout rates, epsilon
  and init range are carried over.

  Raises:
    ConversionError: For another model type, relative position embeddings,
      a decoder/cross-attention config or an activation lmlab lacks (BERT's
      MLM head applies ``hidden_act`` too, so BERT needs ``gelu``).
  """
  model_type = common.require_model_type(hf_config, MODEL_TYPES, "BERT")
  position_type = hf_config.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise common.ConversionError(
        f"position_embedding_type={position_type!r} is not supported (lmlab has learned "
        "absolute positions only in this layout).")
  if hf_config.get("is_decoder", False) or hf_config.get("add_cross_attention", False):
    raise common.ConversionError("Decoder / cross-attention BERT configs are not supported.")
  act = hf_config.get("hidden_act", "gelu")
  if act not in _FROM_HF_ACTIVATION or (model_type == "bert" and act != "gelu"):
    raise common.ConversionError(
        f"hidden_act={act!r} has no exact lmlab equivalent here (lmlab's MLM head always uses "
        "exact gelu; RoBERTa's MLP may also use relu/silu).")
  pad_id = hf_config.get("pad_token_id", 1 if roberta_like(model_type) else 0)
  pad_id = 0 if pad_id is None else pad_id
  max_positions = hf_config.get("max_position_embeddings", 512) - position_offset(model_type,
                                                                                  pad_id)
  if max_positions < 1:
    raise common.ConversionError("max_position_embeddings leaves no usable positions.")
  hidden = hf_config.get("hidden_size", 768)
  heads = hf_config.get("num_attention_heads", 12)
  if hidden % heads:
    raise common.ConversionError(f"hidden_size={hidden} is not divisible by {heads} heads.")
  return EncoderConfig(
      vocab_size=hf_config.get("vocab_size", 30522),
      d_model=hidden,
      num_layers=hf_config.get("num_hidden_layers", 12),
      num_heads=heads,
      d_ff=hf_config.get("intermediate_size", 3072),
      mlp_activation=_FROM_HF_ACTIVATION[act],
      norm_type="layernorm",
      norm_position="post",
      norm_eps=hf_config.get("layer_norm_eps", 1e-12),
      position_scheme="learned",
      max_positions=max_positions,
      use_bias=True,
      num_token_types=hf_config.get("type_vocab_size", 2),
      embedding_norm=True,
      dropout_rate=hf_config.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf_config.get("attention_probs_dropout_prob", 0.1),
      tie_output_embedding=hf_config.get("tie_word_embeddings", True),
      initializer_range=hf_config.get("initializer_range", 0.02),
      pad_id=pad_id,
  )


def _check_exportable(config: EncoderConfig, model_type: str) -> None:
  _check_model_type(model_type)
  problems = common.bert_layout_problems(config)
  if config.norm_type != "layernorm" or config.norm_position != "post":
    problems.append(f"{config.norm_position}-{config.norm_type} (needs post-layernorm)")
  if config.resolved_head_dim * config.num_heads != config.d_model:
    problems.append(f"head_dim={config.head_dim} with heads*head_dim != d_model")
  act = config.mlp_activation
  if act not in _TO_HF_ACTIVATION or (model_type == "bert" and act != "gelu"):
    problems.append(f"mlp_activation={act!r}")
  if problems:
    raise common.ConversionError(
        f"This EncoderConfig has no Hugging Face {model_type} equivalent: {'; '.join(problems)}.")


def _check_heads(heads: Sequence[str], model_type: str) -> None:
  """Raises unless ``heads`` is a part set some Hugging Face BERT/RoBERTa class holds."""
  unknown = sorted(set(heads) - set(HEADS))
  if unknown:
    raise common.ConversionError(f"Unknown heads {unknown}; known: {HEADS}.")
  if "classifier" in heads and ("pooler" not in heads or "mlm_head" in heads):
    raise common.ConversionError(
        f"A classifier is exported as {architecture(model_type, heads)}, which needs a pooler "
        f"and no MLM head (got {tuple(heads)}).")


def bert_config_to_hf(config: EncoderConfig, model_type: str = "bert",
                      base: Optional[Mapping[str, Any]] = None,
                      heads: Sequence[str] = ("mlm_head",),
                      num_classes: Optional[int] = None) -> dict[str, Any]:
  """Hugging Face ``config.json`` dict for an lmlab ``EncoderConfig``.

  Args:
    config: lmlab config (BERT layout).
    model_type: One of ``MODEL_TYPES``.
    base: Optional original Hugging Face config; its entries that lmlab does
      not model (token ids, tokenizer class, ...) are kept.
    heads: Parts of the parameters besides the encoder (``HEADS``); they
      choose the recorded architecture.
    num_classes: Classifier width (with a ``classifier``), for the labels.

  Raises:
    ConversionError: If the config's layout has no Hugging Face equivalent.
  """
  _check_exportable(config, model_type)
  _check_heads(heads, model_type)
  hf = dict(base or {})
  if roberta_like(model_type):
    hf.setdefault("bos_token_id", 0)
    hf.setdefault("eos_token_id", 2)
  if "classifier" in heads and num_classes is not None:
    labels = hf.get("id2label")
    if not isinstance(labels, Mapping) or len(labels) != num_classes:
      hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_classes)}
      hf["label2id"] = {f"LABEL_{i}": i for i in range(num_classes)}
  hf.update({
      "architectures": [architecture(model_type, heads)],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.d_model,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "intermediate_size": config.d_ff,
      "hidden_act": config.mlp_activation,
      "hidden_dropout_prob": config.dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "max_position_embeddings": config.max_positions + position_offset(model_type, config.pad_id),
      "type_vocab_size": config.num_token_types,
      "initializer_range": config.initializer_range,
      "layer_norm_eps": config.norm_eps,
      "pad_token_id": config.pad_id,
      "tie_word_embeddings": config.tie_output_embedding,
  })
  return hf


def abstract_bert_params(config: EncoderConfig, heads: Sequence[str] = ("mlm_head",),
                         num_classes: int = 1) -> Params:
  """Shapes of the ``encoder`` and ``heads`` parameters (no memory allocated).

  ``mlm_head`` is ``EncoderForMaskedLM``'s; ``pooler`` and ``classifier``
  (``num_classes`` wide) are ``EncoderForSequenceClassification``'s.
  """
  if config.vocab_size is None:
    raise common.ConversionError("EncoderConfig.vocab_size must be set.")
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = dict(common.abstract_params(EncoderForMaskedLM(config), ids))
  if "mlm_head" not in heads:
    del tree["mlm_head"]
  if "pooler" in heads or "classifier" in heads:
    classification = common.abstract_params(
        EncoderForSequenceClassification(config, num_classes, pooling="cls"), ids)
    tree.update({name: classification[name] for name in ("pooler", "classifier")
                 if name in heads})
  return tree


def _dense(path: tuple[str, ...], name: str, kernel=LINEAR, bias=COPY) -> list[Entry]:
  return [Entry(path + ("kernel",), f"{name}.weight", kernel),
          Entry(path + ("bias",), f"{name}.bias", bias)]


def _norm(path: tuple[str, ...], name: str) -> list[Entry]:
  return [Entry(path + ("scale",), f"{name}.weight"), Entry(path + ("bias",), f"{name}.bias")]


def _head_names(model_type: str) -> tuple[str, str, str, str]:
  """Names of the MLM head's transform, norm, decoder and output bias."""
  if roberta_like(model_type):
    return "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "lm_head.bias"
  return ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
          "cls.predictions.decoder", "cls.predictions.bias")


def _classification_names(model_type: str, prefix: str) -> tuple[str, str]:
  """Hugging Face names of the pooler and the classifier of a sequence classifier."""
  if roberta_like(model_type):
    return "classifier.dense", "classifier.out_proj"
  return f"{prefix}pooler.dense", "classifier"


def bert_plan(config: EncoderConfig, model_type: str = "bert",
              heads: Sequence[str] = ("mlm_head",), prefixed: bool = True) -> list[Entry]:
  """Every lmlab parameter (unscanned layout) with its Hugging Face tensor, in state-dict order.

  ``prefixed``: base-model tensors are named ``<p>.embeddings...`` (task
  classes) rather than ``embeddings...`` (``BertModel`` / ``RobertaModel``).
  """
  prefix = f"{base_prefix(model_type)}." if prefixed else ""
  emb = ("encoder", "embeddings")
  offset = position_offset(model_type, config.pad_id)
  plan = [
      Entry(emb + ("token_embedder", "embedding"), f"{prefix}embeddings.word_embeddings.weight"),
      Entry(emb + ("position_embedder", "embedding"),
            f"{prefix}embeddings.position_embeddings.weight",
            common.leading_rows_dropped(offset) if offset else COPY),
      Entry(emb + ("token_type_embedder", "embedding"),
            f"{prefix}embeddings.token_type_embeddings.weight"),
  ]
  plan += _norm(emb + ("norm",), f"{prefix}embeddings.LayerNorm")
  for i in range(config.num_layers):
    layer = ("encoder", f"layers_{i}")
    hf = f"{prefix}encoder.layer.{i}"
    for name in ("query", "key", "value"):
      plan += _dense(layer + ("attention", name), f"{hf}.attention.self.{name}", HEADS_IN,
                     HEADS_BIAS)
    plan += _dense(layer + ("attention", "out"), f"{hf}.attention.output.dense", HEADS_OUT)
    plan += _norm(layer + ("attention_norm",), f"{hf}.attention.output.LayerNorm")
    plan += _dense(layer + ("mlp", "wi"), f"{hf}.intermediate.dense")
    plan += _dense(layer + ("mlp", "wo"), f"{hf}.output.dense")
    plan += _norm(layer + ("mlp_norm",), f"{hf}.output.LayerNorm")
  pooler, classifier = _classification_names(model_type, prefix)
  if "pooler" in heads:
    plan += _dense(("pooler",), pooler if "classifier" in heads else f"{prefix}pooler.dense")
  if "mlm_head" in heads:
    transform, norm, decoder, bias = _head_names(model_type)
    plan += _dense(("mlm_head", "transform"), transform)
    plan += _norm(("mlm_head", "norm"), norm)
    if config.tie_output_embedding:
      plan.append(Entry(("mlm_head", "bias"), bias))
    else:
      plan += _dense(("mlm_head", "decoder"), decoder)
  if "classifier" in heads:
    plan += _dense(("classifier",), classifier)
  return plan


def _duplicates(config: EncoderConfig, model_type: str) -> dict[str, str]:
  """Tensors that ``state_dict()`` holds as copies of another one (MLM classes, prefixed)."""
  _, _, decoder, bias = _head_names(model_type)
  if config.tie_output_embedding:
    return {f"{decoder}.weight": f"{base_prefix(model_type)}.embeddings.word_embeddings.weight",
            f"{decoder}.bias": bias}
  # Untied, Hugging Face computes with decoder.bias and leaves `bias` unused
  # (it is still a parameter, so export fills it with decoder.bias).
  return {bias: f"{decoder}.bias"}


def hf_heads(state: Mapping[str, Any], model_type: str = "bert") -> tuple[str, ...]:
  """The ``HEADS`` whose tensors a Hugging Face state dict holds."""
  base = base_prefix(model_type)
  if roberta_like(model_type):
    prefixes = {"mlm_head": ("lm_head.",), "pooler": (f"{base}.pooler.", "pooler.",
                                                      "classifier.dense."),
                "classifier": ("classifier.out_proj.",)}
  else:
    prefixes = {"mlm_head": ("cls.predictions.",), "pooler": (f"{base}.pooler.", "pooler."),
                "classifier": ("classifier.",)}
  return tuple(head for head in HEADS
               if any(name.startswith(prefixes[head]) for name in state))


def is_prefixed(state: Mapping[str, Any], model_type: str = "bert") -> bool:
  """Whether base-model tensors carry the ``<p>.`` prefix; ``False`` only for a state dict
  with an unprefixed ``embeddings.word_embeddings.weight`` (a saved base model)."""
  return "embeddings.word_embeddings.weight" not in state or any(
      name.startswith(f"{base_prefix(model_type)}.") for name in state)


def dropped_parts(state: Mapping[str, Any], model_type: str = "bert") -> tuple[str, ...]:
  """Parts of a checkpoint that import leaves out because no lmlab network uses them.

  BERT's next-sentence head (``cls.seq_relationship``) and the ``<p>.pooler``
  that old RoBERTa classifier files carry but never use.
  """
  dropped = []
  if any(name.startswith(_IGNORABLE_PREFIXES) for name in state):
    dropped.append(_IGNORABLE_PREFIXES[0].rstrip("."))
  base = base_prefix(model_type)
  if (roberta_like(model_type) and "classifier" in hf_heads(state, model_type)
      and any(name.startswith(f"{base}.pooler.") for name in state)):
    dropped.append(f"{base}.pooler")
  return tuple(dropped)


def params_heads(params: Params) -> tuple[str, ...]:
  """The ``HEADS`` present in an lmlab parameter tree."""
  return tuple(head for head in HEADS if head in params)


def _num_classes(params: Params) -> int:
  """Width of the tree's classifier (1 without one)."""
  if "classifier" not in params:
    return 1
  return int(np.shape(nn.meta.unbox(params["classifier"]["kernel"]))[-1])


def _unscanned(config: EncoderConfig) -> EncoderConfig:
  return dataclasses.replace(config, scan_layers=False)


def _normalise_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames old TensorFlow-era ``LayerNorm.gamma/beta`` and drops known-unused tensors."""
  renamed = {}
  for name, value in state.items():
    if name.startswith(_IGNORABLE_PREFIXES) or name.endswith(_IGNORABLE_SUFFIXES):
      continue
    if name.endswith("LayerNorm.gamma"):
      name = name[:-len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
      name = name[:-len("beta")] + "bias"
    renamed[name] = value
  return renamed


def params_from_hf(state: Mapping[str, np.ndarray], config: EncoderConfig,
                   model_type: str = "bert") -> Params:
  """lmlab parameters from a BERT/RoBERTa state dict: ``encoder`` plus the heads it holds.

  The heads (``mlm_head``, ``pooler``, ``classifier``; see ``hf_heads``) are
  read from the tensor names; next-sentence weights are ignored. The tree
  applies with ``EncoderForMaskedLM`` (with an MLM head) or
  ``EncoderForSequenceClassification(..., pooling="cls")`` (with pooler and
  classifier); a pooler next to an MLM head is kept for fine-tuning.

  Base-model tensors may carry the ``<p>.`` prefix or not (``BertModel``
  files have none).

  Args:
    state: Tensor name -> array (``state_dict()`` or ``model.safetensors``).
    config: lmlab config (``bert_config_from_hf``); ``scan_layers`` is honoured.
    model_type: One of ``MODEL_TYPES`` (tensor prefixes, position offset).

  Returns:
    Nested dict of float32 numpy arrays shaped like the lmlab init.

  Raises:
    ConversionError: Naming the first missing, mis-shaped or unexpected
      tensor, or a tied duplicate that differs from its original.
  """
  _check_exportable(config, model_type)
  state = _normalise_names(state)
  heads = hf_heads(state, model_type)
  _check_heads(heads, model_type)
  prefixed = is_prefixed(state, model_type)
  flat_config = _unscanned(config)
  plan = bert_plan(flat_config, model_type, heads, prefixed)
  num_classes = 1
  if "classifier" in heads:
    num_classes = int(np.shape(state[plan[-1].hf_name])[0])  # the classifier's bias
  tied = config.tie_output_embedding
  duplicates = _duplicates(config, model_type) if "mlm_head" in heads else {}
  ignorable = () if tied else tuple(duplicates)
  if roberta_like(model_type) and "classifier" in heads:
    # An old file's <p>.pooler: RobertaForSequenceClassification does not use it.
    ignorable += tuple(name for name in state
                       if name.startswith(f"{base_prefix(model_type)}.pooler."))
  params = common.import_state(
      state, plan, abstract_bert_params(flat_config, heads, num_classes),
      duplicates=duplicates if tied else None, ignorable=ignorable, what=f"{model_type} model")
  return common.stack_layers(params, config.num_layers) if config.scan_layers else params


def params_to_hf(params: Params, config: EncoderConfig, model_type: str = "bert") -> StateDict:
  """The Hugging Face ``state_dict()`` (float32 numpy) of lmlab parameters.

  Holds the encoder and every head the tree has (pooler included), and the
  tied ``decoder`` copies of an MLM head, as ``state_dict()`` does. For
  RoBERTa the position rows below ``pad_token_id + 1`` are zeros. Without
  MLM head and classifier the names carry no ``<p>.`` prefix, as in
  ``BertModel.state_dict()``.
  """
  _check_exportable(config, model_type)
  heads = params_heads(params)
  _check_heads(heads, model_type)
  num_classes = _num_classes(params)
  if config.scan_layers:
    params = common.unstack_layers(params, config.num_layers)
  flat_config = _unscanned(config)
  return common.export_state(
      params, bert_plan(flat_config, model_type, heads, _export_prefixed(heads)),
      abstract_bert_params(flat_config, heads, num_classes),
      duplicates=_duplicates(config, model_type) if "mlm_head" in heads else None)


def _export_prefixed(heads: Sequence[str]) -> bool:
  """Task classes prefix their base model's tensors; base models (pooler at most) do not."""
  return bool({"mlm_head", "classifier"} & set(heads))


def load_hf_bert(folder: str | os.PathLike) -> tuple[EncoderConfig, Params]:
  """lmlab config and parameters of a BERT/RoBERTa folder (config.json + safetensors).

  Use ``hf_model_type(folder)`` to tell BERT from RoBERTa when saving back.
  """
  hf_config, state = common.read_hf_folder(folder)
  config = bert_config_from_hf(hf_config)
  return config, params_from_hf(state, config, hf_config.get("model_type", "bert"))


def hf_model_type(folder: str | os.PathLike) -> str:
  """``bert``, ``roberta`` or ``xlm-roberta``: the model type recorded in a folder's config.json."""
  return common.require_model_type(common.read_hf_config(folder), MODEL_TYPES, "BERT")


def save_hf_bert(folder: str | os.PathLike, config: EncoderConfig, params: Params,
                 model_type: str = "bert", base: Optional[Mapping[str, Any]] = None) -> None:
  """Writes a folder that Hugging Face's ``from_pretrained`` loads.

  The recorded architecture follows the heads (``architecture``):
  ``<Stem>ForMaskedLM`` with an MLM head (a pooler is written too;
  ``BertForMaskedLM`` does not use it, ``BertForPreTraining``/``BertModel``
  do), ``<Stem>ForSequenceClassification`` with a classifier, else
  ``<Stem>Model`` (tensors without prefix). Tied decoder copies are left
  out, as ``save_pretrained`` does.
  """
  state = params_to_hf(params, config, model_type)
  heads = params_heads(params)
  if config.tie_output_embedding and "mlm_head" in heads:
    for name in _duplicates(config, model_type):
      del state[name]
  hf_config = bert_config_to_hf(config, model_type, base, heads, _num_classes(params))
  common.write_hf_folder(folder, hf_config, state)
