"""BiGS reference (jxiw/BiGS ``modeling_flax_bigs.py``) Flax parameters <-> lmlab BiGS encoders.

The reference is a Flax model, so its checkpoints are parameter trees rather
than state dicts: ``flax_model.msgpack`` (a ``FlaxPreTrainedModel`` save)
next to a ``config.json`` of ``BiGSConfig`` fields. Kernels are ``[in, out]``
on both sides and every tensor keeps its shape, so each one is copied as is;
only the names differ. Reference names below are the ``/``-joined paths of
the flattened tree (``<i>`` is a layer index, a plain string in the
reference)::

  s4_bert/embeddings/{word,position,token_type}_embeddings/embedding
                              encoder/embeddings/{token,position,token_type}_embedder/embedding
  s4_bert/embeddings/LayerNorm/*       encoder/embeddings/norm/*
  s4_bert/encoder/layer/<i>/LayerNorm/*                 encoder/layers_<i>/norm/*
  s4_bert/encoder/layer/<i>/{fs4,bs4}/{A_re,A_im,C,D,log_step}
                                       encoder/layers_<i>/{forward_ssm,backward_ssm}/...
  s4_bert/encoder/layer/<i>/{dv,du_forward,du_backward,duc_forward,duc_backward,dol,do}/*
      encoder/layers_<i>/{value,forward_in,backward_in,forward_out,backward_out,gate_in,out}/*
  cls/predictions/transform/{dense,LayerNorm}/*         mlm_head/{transform,norm}/*
  cls/predictions/bias                 mlm_head/bias (tied) or mlm_head/decoder/bias (untied)
  cls/predictions/decoder/kernel       mlm_head/decoder/kernel (untied only)
  s4_bert/pooler/dense/*, classifier/* pooler/*, classifier/*  (sequence classification)

With ``scan_layers`` the lmlab blocks are stacked under ``encoder/layers``
(``common.stack_layers``).

Behaviour that lmlab reproduces, and what it refuses:

* The reference runs every row at full length and lets padding flow through
  both SSMs; lmlab does the same with ``ssm_mask_padding=False`` (set on
  import; a config with masking is refused on export, since the reference
  would then compute something else on padded rows).
* The reference builds the S4D kernel for ``max_position_embeddings`` and
  only accepts inputs of exactly that length; lmlab builds it for the input
  length. A causal kernel's first ``L`` taps do not depend on its total
  length, so outputs agree at every length the reference accepts, and
  lmlab also takes shorter inputs.
* The MLM head applies ``hidden_act`` (Hugging Face's exact ``gelu``);
  lmlab's MLM head always uses exact gelu, so other activations are
  refused. (The blocks use the tanh approximation in both, whatever the
  config says.)
* The classification pooler averages the non-padding tokens
  (``pooler_type="non_padding_mean"``), which is lmlab's ``pooling="mean"``;
  the reference's other pooler (``mean`` over all positions, padding
  included) is refused for classification. The reference pools over its
  ``attention_mask``, lmlab over ``segment_ids > 0`` (by default
  ``input_ids != pad_id``); pass ``segment_ids`` where the two differ.
* Pre-training checkpoints' ``s4_bert/pooler`` and ``cls/seq_relationship``
  carry nothing the MLM network needs and are skipped on MLM import.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.convert import common
from lmlab.convert.common import ConversionError, Entry, Params
from lmlab.models.config import SSM_A_INITS, EncoderConfig
from lmlab.models.encoder import EncoderForMaskedLM, EncoderForSequenceClassification

MODEL_TYPE = "BiGS"
WEIGHTS_FILE = "flax_model.msgpack"
HEADS = ("mlm", "classification")
POOLER_TYPE = "non_padding_mean"
ARCHITECTURES = {"mlm": "FlaxBiGSForMaskedLM",
                  "classification": "FlaxBiGSForSequenceClassification"}
BASE = "s4_bert"  # Attribute name of the base model in every reference head module.
# Other spellings of the base model's top key: the FlaxPreTrainedModel
# ``base_model_prefix``, and the bare base model (FlaxBiGSModel) whose tree
# starts at its children.
_BASE_ALIASES = ("BiGS",)
_BASE_CHILDREN = ("embeddings", "encoder", "pooler")
# lmlab block module -> reference module, SSMs and dense layers.
_SSMS = (("forward_ssm", "fs4"), ("backward_ssm", "bs4"))
_SSM_PARAMS = ("A_re", "A_im", "C", "D", "log_step")
_DENSES = (("value", "dv"), ("forward_in", "du_forward"), ("backward_in", "du_backward"),
           ("forward_out", "duc_forward"), ("backward_out", "duc_backward"),
           ("gate_in", "dol"), ("out", "do"))
# Pre-training extras that the MLM network has no use for.
_MLM_IGNORABLE = (f"{BASE}/pooler/dense/kernel", f"{BASE}/pooler/dense/bias",
                  "cls/seq_relationship/kernel", "cls/seq_relationship/bias")


class BiGSCheckpoint(NamedTuple):
  """What ``load_reference_bigs`` returns.

  Attributes:
    config: lmlab config.
    params: lmlab parameter tree of the network for ``head``.
    head: ``mlm`` (``EncoderForMaskedLM``) or ``classification``
      (``EncoderForSequenceClassification(config, num_classes, pooling="mean")``).
    num_classes: Classifier outputs; ``None`` for ``mlm``.
  """

  config: EncoderConfig
  params: Params
  head: str
  num_classes: Optional[int]


# ----------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------


def _check_head(head: str) -> None:
  if head not in HEADS:
    raise ValueError(f"head={head!r} is not one of {HEADS}.")


def bigs_config_from_reference(ref_config: Mapping[str, Any],
                               head: Optional[str] = None) -> EncoderConfig:
  """lmlab ``EncoderConfig`` (``mixer="bigs"``) equivalent to a reference ``config.json`` dict.

  Missing fields take ``BiGSConfig``'s defaults. Dropout, epsilon and init
  range are carried over; ``num_heads`` (unused by BiGS) is 1.

  Args:
    ref_config: The reference config (``BiGSConfig`` fields).
    head: If ``classification``, the pooler type is checked too (the MLM
      network has no pooler, so any value is fine for it).

  Raises:
    ConversionError: For another model type, an MLM activation lmlab lacks,
      an unknown S4D initialisation, no token types, or (classification) a
      pooler lmlab cannot reproduce.
  """
  model_type = ref_config.get("model_type", MODEL_TYPE)
  if str(model_type).lower() != MODEL_TYPE.lower():
    raise ConversionError(f"config.json has model_type={model_type!r}; the BiGS converter "
                          f"handles {MODEL_TYPE!r}.")
  act = ref_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ConversionError(
        f"hidden_act={act!r} is not supported: the reference applies it in the MLM head, where "
        "lmlab always uses exact gelu.")
  scaling = ref_config.get("scaling", "hippo")
  if scaling not in SSM_A_INITS:
    raise ConversionError(f"scaling={scaling!r} is not one of lmlab's S4D initialisations "
                          f"{SSM_A_INITS}.")
  if head is not None:
    _check_head(head)
  pooler = ref_config.get("pooler_type", POOLER_TYPE)
  if head == "classification" and pooler != POOLER_TYPE:
    raise ConversionError(
        f"pooler_type={pooler!r} is not supported: lmlab's mean pooling averages the non-padding "
        f"tokens only ({POOLER_TYPE!r}).")
  token_types = ref_config.get("type_vocab_size", 2)
  if token_types < 1:
    raise ConversionError(
        f"type_vocab_size={token_types}: the reference always embeds token types.")
  pad_id = ref_config.get("pad_token_id", 0)
  return EncoderConfig(
      mixer="bigs",
      vocab_size=ref_config.get("vocab_size", 30522),
      d_model=ref_config.get("hidden_size", 768),
      num_layers=ref_config.get("num_hidden_layers", 24),
      num_heads=1,
      d_ff=ref_config.get("intermediate_size", 3072),
      norm_type="layernorm",
      norm_position="pre" if ref_config.get("pre_norm", True) else "post",
      norm_eps=ref_config.get("layer_norm_eps", 1e-12),
      position_scheme="learned",
      max_positions=ref_config.get("max_position_embeddings", 512),
      use_bias=True,
      num_token_types=token_types,
      embedding_norm=True,
      dropout_rate=ref_config.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=0.0,
      tie_output_embedding=ref_config.get("tie_word_embeddings", True),
      initializer_range=ref_config.get("initializer_range", 0.02),
      pad_id=0 if pad_id is None else pad_id,
      ssm_state_size=ref_config.get("num_ssm", 64),
      ssm_a_init=scaling,
      ssm_shared_kernel=True,
      ssm_mask_padding=False,
  )


def _check_exportable(config: EncoderConfig) -> None:
  problems = common.bert_layout_problems(config)
  if config.mixer != "bigs":
    problems.append(f"mixer={config.mixer!r} (needs bigs)")
  if config.norm_type != "layernorm":
    problems.append(f"norm_type={config.norm_type!r} (needs layernorm)")
  if not config.ssm_shared_kernel:
    problems.append("ssm_shared_kernel=False (the reference has one S4D system per direction)")
  if config.ssm_mask_padding:
    problems.append("ssm_mask_padding=True (the reference lets padding flow through the SSMs)")
  if problems:
    raise ConversionError(f"This EncoderConfig has no BiGS reference equivalent: "
                          f"{'; '.join(problems)}.")


def bigs_config_to_reference(config: EncoderConfig, head: str = "mlm",
                             num_classes: Optional[int] = None,
                             base: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Reference ``config.json`` dict for an lmlab BiGS ``EncoderConfig``.

  Args:
    config: lmlab config (``mixer="bigs"``).
    head: ``mlm`` or ``classification`` (sets ``architectures`` and, for
      classification, the label maps that give ``num_labels``).
    num_classes: Classifier outputs (classification only).
    base: Optional original reference config; entries lmlab does not model
      (``decode``, ``use_pykeops_kernel``, label names, ...) are kept.

  Raises:
    ConversionError: If the config has no reference equivalent.
  """
  _check_head(head)
  _check_exportable(config)
  ref = dict(base or {})
  ref.update({
      "architectures": [ARCHITECTURES[head]],
      "model_type": MODEL_TYPE,
      "vocab_size": config.vocab_size,
      "hidden_size": config.d_model,
      "num_hidden_layers": config.num_layers,
      "intermediate_size": config.d_ff,
      "hidden_act": "gelu",
      "hidden_dropout_prob": config.dropout_rate,
      "max_position_embeddings": config.max_positions,
      "type_vocab_size": config.num_token_types,
      "initializer_range": config.initializer_range,
      "layer_norm_eps": config.norm_eps,
      "pad_token_id": config.pad_id,
      "num_ssm": config.ssm_state_size,
      "pre_norm": config.norm_position == "pre",
      "scaling": config.ssm_a_init,
      "pooler_type": POOLER_TYPE,
      "tie_word_embeddings": config.tie_output_embedding,
  })
  if head == "classification" and num_classes is not None:
    labels = ref.get("id2label")
    if not isinstance(labels, Mapping) or len(labels) != num_classes:
      ref["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_classes)}
      ref["label2id"] = {f"LABEL_{i}": i for i in range(num_classes)}
  return ref


# ----------------------------------------------------------------------------
# Plans.
# ----------------------------------------------------------------------------


def _dense(path: tuple[str, ...], name: str, bias: bool = True) -> list[Entry]:
  entries = [Entry(path + ("kernel",), f"{name}/kernel")]
  return entries + [Entry(path + ("bias",), f"{name}/bias")] if bias else entries


def _norm(path: tuple[str, ...], name: str) -> list[Entry]:
  return [Entry(path + ("scale",), f"{name}/scale"), Entry(path + ("bias",), f"{name}/bias")]


def bigs_plan(config: EncoderConfig, head: str = "mlm") -> list[Entry]:
  """Every lmlab parameter (unscanned layout) with its reference name, in reference tree order."""
  _check_head(head)
  emb = ("encoder", "embeddings")
  ref_emb = f"{BASE}/embeddings"
  plan = [
      Entry(emb + ("token_embedder", "embedding"), f"{ref_emb}/word_embeddings/embedding"),
      Entry(emb + ("position_embedder", "embedding"), f"{ref_emb}/position_embeddings/embedding"),
      Entry(emb + ("token_type_embedder", "embedding"),
            f"{ref_emb}/token_type_embeddings/embedding"),
  ]
  plan += _norm(emb + ("norm",), f"{ref_emb}/LayerNorm")
  for i in range(config.num_layers):
    layer = ("encoder", f"layers_{i}")
    ref = f"{BASE}/encoder/layer/{i}"
    plan += _norm(layer + ("norm",), f"{ref}/LayerNorm")
    for name, ref_name in _SSMS:
      plan += [Entry(layer + (name, p), f"{ref}/{ref_name}/{p}") for p in _SSM_PARAMS]
    for name, ref_name in _DENSES:
      plan += _dense(layer + (name,), f"{ref}/{ref_name}")
  if head == "classification":
    plan += _dense(("pooler",), f"{BASE}/pooler/dense")
    plan += _dense(("classifier",), "classifier")
    return plan
  plan += _dense(("mlm_head", "transform"), "cls/predictions/transform/dense")
  plan += _norm(("mlm_head", "norm"), "cls/predictions/transform/LayerNorm")
  if config.tie_output_embedding:
    plan.append(Entry(("mlm_head", "bias"), "cls/predictions/bias"))
  else:  # The reference decoder has no bias of its own; it adds cls/predictions/bias.
    plan += [Entry(("mlm_head", "decoder", "kernel"), "cls/predictions/decoder/kernel"),
             Entry(("mlm_head", "decoder", "bias"), "cls/predictions/bias")]
  return plan


def abstract_bigs_params(config: EncoderConfig, head: str = "mlm",
                         num_classes: Optional[int] = None) -> Params:
  """Shapes of the lmlab network's parameters for ``head`` (no memory allocated)."""
  _check_head(head)
  if config.vocab_size is None:
    raise ConversionError("EncoderConfig.vocab_size must be set.")
  ids = jnp.zeros((1, 2), jnp.int32)
  if head == "classification":
    if num_classes is None:
      raise ValueError("num_classes is needed for the classification head.")
    model = EncoderForSequenceClassification(config, num_classes, pooling="mean")
  else:
    model = EncoderForMaskedLM(config)
  return common.abstract_params(model, ids)


def _unscanned(config: EncoderConfig) -> EncoderConfig:
  return dataclasses.replace(config, scan_layers=False)


# ----------------------------------------------------------------------------
# Reference trees.
# ----------------------------------------------------------------------------


def normalise_reference_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
  """The tree with the base model under ``s4_bert``, whichever way it was saved.

  Accepts a ``{"params": ...}`` wrapper, a base model saved under the
  ``base_model_prefix`` (``BiGS``), and a bare base model (top keys
  ``embeddings``/``encoder``/``pooler``, with any head next to them).
  """
  tree = dict(tree)
  if set(tree) == {"params"} and isinstance(tree["params"], Mapping):
    tree = dict(tree["params"])
  if BASE not in tree:
    for alias in _BASE_ALIASES:
      if alias in tree:
        tree[BASE] = tree.pop(alias)
        break
    else:
      if "embeddings" in tree or "encoder" in tree:
        tree[BASE] = {key: tree.pop(key) for key in _BASE_CHILDREN if key in tree}
  return tree


def reference_state(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """``{"/"-joined path: array}`` of a (normalised) reference tree."""
  flat = common.flatten(normalise_reference_tree(tree))
  return {common.path_str(path): np.asarray(value) for path, value in flat.items()}


def reference_head(tree: Mapping[str, Any]) -> str:
  """``classification`` if the tree has a top-level ``classifier``, else ``mlm``."""
  return "classification" if "classifier" in normalise_reference_tree(tree) else "mlm"


def _num_classes_of(state: Mapping[str, np.ndarray]) -> int:
  kernel = state.get("classifier/kernel")
  if kernel is None or np.ndim(kernel) != 2:
    raise ConversionError("Not a BiGS sequence classifier: tensor 'classifier/kernel' (2-D) is "
                          "missing.")
  return int(np.shape(kernel)[1])


def params_from_reference(tree: Mapping[str, Any], config: EncoderConfig, head: str = "mlm",
                          num_classes: Optional[int] = None) -> Params:
  """lmlab parameters from a reference BiGS parameter tree.

  Args:
    tree: Nested reference parameters (``FlaxBiGSForMaskedLM`` or
      ``FlaxBiGSForSequenceClassification`` ``params``; see
      ``normalise_reference_tree`` for the accepted tops).
    config: lmlab config (``bigs_config_from_reference``); ``scan_layers``
      and ``tie_output_embedding`` are honoured.
    head: ``mlm`` (``EncoderForMaskedLM``) or ``classification``
      (``EncoderForSequenceClassification(..., pooling="mean")``).
    num_classes: Classifier outputs; default: read off ``classifier/kernel``.

  Returns:
    Nested dict of float32 numpy arrays shaped like the lmlab init.

  Raises:
    ConversionError: Naming the first missing, mis-shaped or unexpected
      reference tensor (another architecture, size or head).
  """
  _check_head(head)
  _check_exportable(config)
  state = reference_state(tree)
  if head == "classification" and num_classes is None:
    num_classes = _num_classes_of(state)
  flat_config = _unscanned(config)
  params = common.import_state(
      state, bigs_plan(flat_config, head), abstract_bigs_params(flat_config, head, num_classes),
      ignorable=_MLM_IGNORABLE if head == "mlm" else (),
      what="BiGS masked LM" if head == "mlm" else "BiGS sequence classifier")
  return common.stack_layers(params, config.num_layers) if config.scan_layers else params


def params_to_reference(params: Params, config: EncoderConfig, head: str = "mlm") -> dict[str, Any]:
  """The reference's nested parameter tree (float32 numpy) of lmlab parameters.

  The base model sits under ``s4_bert`` and the head under ``cls``
  (``mlm``) or ``classifier`` (``classification``), as the reference head
  modules hold them.

  Raises:
    ConversionError: If the config has no reference equivalent or ``params``
      do not fit it.
  """
  _check_head(head)
  _check_exportable(config)
  params = jax.device_get(nn.meta.unbox(params))
  if config.scan_layers:
    params = common.unstack_layers(params, config.num_layers)
  num_classes = None
  if head == "classification":
    classifier = params.get("classifier", {}) if isinstance(params, Mapping) else {}
    if "kernel" not in classifier:
      raise ConversionError("lmlab parameter classifier/kernel is missing.")
    num_classes = int(np.shape(classifier["kernel"])[-1])
  flat_config = _unscanned(config)
  state = common.export_state(params, bigs_plan(flat_config, head),
                              abstract_bigs_params(flat_config, head, num_classes))
  return common.unflatten({tuple(name.split("/")): value for name, value in state.items()})


# ----------------------------------------------------------------------------
# Folders.
# ----------------------------------------------------------------------------


def read_reference_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """``config.json`` and the restored ``flax_model.msgpack`` tree of a reference folder."""
  from flax import serialization  # pylint: disable=import-outside-toplevel

  folder = os.fspath(folder)
  config = common.read_hf_config(folder)
  weights = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.exists(weights):
    raise FileNotFoundError(f"No {WEIGHTS_FILE} in {folder} (the BiGS reference saves Flax "
                            "parameters there).")
  with open(weights, "rb") as f:
    tree = serialization.msgpack_restore(f.read())
  if not isinstance(tree, Mapping):
    raise ConversionError(f"{weights} does not hold a parameter tree.")
  return config, tree


def load_reference_bigs(folder: str | os.PathLike, head: Optional[str] = None) -> BiGSCheckpoint:
  """lmlab config and parameters of a reference BiGS folder (config.json + flax_model.msgpack).

  Args:
    folder: The folder.
    head: ``mlm`` or ``classification``; default: ``classification`` if the
      tree has a top-level ``classifier``, else ``mlm``.
  """
  ref_config, tree = read_reference_folder(folder)
  head = head or reference_head(tree)
  config = bigs_config_from_reference(ref_config, head)
  params = params_from_reference(tree, config, head)
  num_classes = int(params["classifier"]["kernel"].shape[-1]) if head == "classification" else None
  return BiGSCheckpoint(config, params, head, num_classes)


def save_reference_bigs(folder: str | os.PathLike, config: EncoderConfig, params: Params,
                        head: Optional[str] = None,
                        base: Optional[Mapping[str, Any]] = None) -> None:
  """Writes ``config.json`` and ``flax_model.msgpack`` that the reference loads.

  Args:
    folder: Folder to write (created if needed).
    config: lmlab config of ``params``.
    params: lmlab parameters.
    head: ``mlm`` or ``classification``; default: ``classification`` if
      ``params`` has a ``classifier``, else ``mlm``.
    base: Optional original reference config whose extra entries are kept.
  """
  from flax import serialization  # pylint: disable=import-outside-toplevel

  head = head or ("classification" if "classifier" in params else "mlm")
  tree = params_to_reference(params, config, head)
  num_classes = None
  if head == "classification":
    num_classes = int(np.shape(tree["classifier"]["kernel"])[-1])
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, common.CONFIG_FILE), "w") as f:
    json.dump(bigs_config_to_reference(config, head, num_classes, base), f, indent=2,
              sort_keys=True)
    f.write("\n")
  with open(os.path.join(folder, WEIGHTS_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize(tree))
