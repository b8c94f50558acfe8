"""One entry point for every checkpoint layout lmlab imports: detect, convert, report.

``load_hf_checkpoint(folder)`` reads a Hugging Face model folder (or a
sentence-transformers folder, or a BiGS reference folder), finds out which
family and which released class it holds from ``config.json`` and the tensor
names, and returns an ``ImportedCheckpoint``: the lmlab network config, the
parameter tree, and what the checkpoint has and lacks. ``export_hf_checkpoint``
goes back, choosing the Hugging Face class from the parts the parameters
hold, and copies tokenizer files next to the weights so the folder is usable
as is.

Layouts (``architecture`` as reported; ``heads`` / ``missing`` use the names
of the lmlab parameter tree's top-level parts)::

  family  model_type            architecture                        heads
  bert    bert                  BertModel (with or without the      (pooler)
                                ``bert.`` prefix)
  bert    bert                  BertForMaskedLM                     mlm_head
  bert    bert                  BertForPreTraining (NSP dropped)    mlm_head, pooler
  bert    bert                  BertForSequenceClassification       pooler, classifier
  bert    roberta, xlm-roberta  RobertaModel / XLMRobertaModel      (pooler)
  bert    roberta, xlm-roberta  ...ForMaskedLM                      mlm_head
  bert    roberta, xlm-roberta  ...ForSequenceClassification        pooler, classifier
  bert    any of the above      sentence-transformers/<class>       as the transformer
  t5      t5, mt5               T5/MT5ForConditionalGeneration      decoder, lm_head
  t5      t5, mt5               T5/MT5EncoderModel                  (none)
  bigs    bigs                  FlaxBiGSForMaskedLM                 mlm_head
  bigs    bigs                  FlaxBiGSForSequenceClassification   pooler, classifier

For the ``bert`` and ``bigs`` families ``missing`` lists which of
``mlm_head`` and ``pooler`` the checkpoint lacks (a classifier is task
specific, never "missing"); for ``t5`` it is ``("decoder", "lm_head")`` for an
encoder-only file and empty otherwise. T5's ``lm_head`` is the vocabulary
projection (``decoder/logits_dense``, or the scaled shared embedding when
tied), so it comes and goes with the decoder. Missing parts are for the
caller to initialise where its network needs them
(``lmlab.training.pretrained.graft_pretrained``).

T5 v1.0 / v1.1 / Flan-T5 / ByT5 are all ``model_type="t5"`` and differ only
in their config (activation, tying, sizes), which ``network`` reflects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import numpy as np

from lmlab.convert import bigs, common, hf_bert, hf_t5
from lmlab.convert.common import ConversionError, Params
from lmlab.models.config import EncoderConfig, T5Config

# Files a tokenizer may consist of (fast and slow BERT/RoBERTa/T5/ByT5 tokenizers).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "merges.txt", "vocab.json", "spiece.model", "added_tokens.json")
FAMILIES = ("bert", "t5", "bigs")
# Hugging Face model_type (lower case) -> lmlab family.
_FAMILY_OF = {**{t: "bert" for t in hf_bert.MODEL_TYPES}, **{t: "t5" for t in hf_t5.MODEL_TYPES},
              "bigs": "bigs"}
MODEL_TYPES = tuple(_FAMILY_OF)
# Class-name stems -> model_type, to tell a config without ``model_type`` (longest stems first).
_ARCHITECTURE_STEMS = (("XLMRoberta", "xlm-roberta"), ("Roberta", "roberta"), ("Bert", "bert"),
                       ("MT5", "mt5"), ("T5", "t5"), ("BiGS", "bigs"))
_BERT_FULL = ("mlm_head", "pooler")  # What a bert/bigs checkpoint may lack ("missing").
# Weight files that Hugging Face writes, by format.
_SAFETENSORS = (common.WEIGHTS_FILE, common.WEIGHTS_INDEX_FILE)
_FLAX = (bigs.WEIGHTS_FILE,)
_PYTORCH = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TENSORFLOW = ("tf_model.h5",)
# sentence-transformers.
ST_MODULES_FILE = "modules.json"
_ST_TRANSFORMER_TYPES = ("Transformer", "BERT", "RoBERTa", "XLMRoBERTa", "T5")
_ST_POOLING_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                     ("pooling_mode_max_tokens", "max"),
                     ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                     ("pooling_mode_weightedmean_tokens", "weightedmean"),
                     ("pooling_mode_lasttoken", "lasttoken"))


@dataclasses.dataclass(frozen=True)
class ImportedCheckpoint:
  """An imported checkpoint and what it holds.

  Attributes:
    family: ``bert`` (BERT/RoBERTa/XLM-R encoders), ``t5`` (T5/mT5/ByT5/Flan-T5)
      or ``bigs``.
    model_type: The Hugging Face ``model_type``, lower case: ``bert``,
      ``roberta``, ``xlm-roberta``, ``t5``, ``mt5`` or ``bigs``.
    architecture: The class the weights belong to, read off the tensors
      (e.g. ``BertModel``, ``BertForPreTraining``, ``T5EncoderModel``,
      ``sentence-transformers/BertModel``).
    network: lmlab network config (``EncoderConfig`` or ``T5Config``).
    params: lmlab parameter tree (float32 numpy): ``encoder`` plus the heads
      (bert, bigs), or ``token_embedder``/``encoder`` (+ ``decoder``) (t5).
    heads: Parts present beyond the backbone: any of ``mlm_head``,
      ``pooler``, ``classifier`` (bert, bigs), or ``decoder``, ``lm_head`` (t5).
    missing: Parts a full model of the family has that the checkpoint lacks
      (see the module docstring).
    hf_config: The ``config.json`` as read (the transformer's, for
      sentence-transformers); pass it back as ``hf_config`` on export to keep
      token ids, tokenizer class, task prefixes.
    folder: Folder of the model files (the transformer's, for
      sentence-transformers), where the tokenizer files usually are too.
    label_names: Class names from ``id2label`` for a classifier; ``None`` when
      absent or the generic ``LABEL_<i>``.
    pooling: How the checkpoint turns a sequence into one vector: ``cls``
      for BERT-family poolers and classifiers (lmlab ``pooling="cls"``),
      ``mean`` for BiGS (lmlab ``pooling="mean"``), the mode a
      sentence-transformers ``Pooling`` module declares (``mean``, ``cls``,
      ``max``, ... joined with ``+``), ``None`` for T5.
    dropped: Parts of the checkpoint left out because no lmlab network has
      them (``cls.seq_relationship``, a sentence-transformers ``2_Dense``
      module, ...).
  """

  family: str
  model_type: str
  architecture: str
  network: EncoderConfig | T5Config
  params: dict
  heads: tuple[str, ...]
  missing: tuple[str, ...]
  hf_config: dict
  folder: str
  label_names: tuple[str, ...] | None
  pooling: Optional[str] = None
  dropped: tuple[str, ...] = ()


# ----------------------------------------------------------------------------
# Detection.
# ----------------------------------------------------------------------------


def _exists(folder: str, names: Sequence[str]) -> bool:
  return any(os.path.isfile(os.path.join(folder, name)) for name in names)


def _has_config_and_weights(folder: str) -> bool:
  return (os.path.isfile(os.path.join(folder, common.CONFIG_FILE))
          and _exists(folder, _SAFETENSORS + _FLAX + _PYTORCH + _TENSORFLOW))


def is_hf_folder(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a folder that ``load_hf_checkpoint`` takes as a checkpoint.

  True for ``config.json`` next to weights (``model.safetensors``, its
  ``.index.json``, ``flax_model.msgpack``), and for a sentence-transformers
  folder whose transformer module is such a folder. Folders with only
  ``pytorch_model.bin`` or ``tf_model.h5`` weights count too, so that a
  caller hands them to ``load_hf_checkpoint``, which says how to convert them,
  instead of taking them for something else. Never raises.
  """
  try:
    folder = os.fspath(path)
    if not os.path.isdir(folder):
      return False
    if os.path.isfile(os.path.join(folder, ST_MODULES_FILE)):
      return _has_config_and_weights(_st_transformer_folder(folder))
    return _has_config_and_weights(folder)
  except (OSError, ValueError, TypeError, KeyError):
    return False


def _model_type(hf_config: Mapping[str, Any], folder: str,
                default: Optional[str] = None) -> str:
  """Lower-case ``model_type`` (from ``architectures``, else ``default``, if absent), checked
  against ``MODEL_TYPES``."""
  model_type = hf_config.get("model_type")
  if model_type is None:
    for name in hf_config.get("architectures") or ():
      name = str(name).removeprefix("Flax").removeprefix("TF")
      model_type = next((t for stem, t in _ARCHITECTURE_STEMS if name.startswith(stem)), None)
      if model_type:
        break
  model_type = model_type or default
  if model_type is None:
    raise ConversionError(
        f"{os.path.join(folder, common.CONFIG_FILE)} names neither a model_type nor a known "
        f"architecture; supported model types: {list(MODEL_TYPES)}.")
  return _checked_model_type(model_type, f"in {folder}, is not supported; lmlab imports")


def _checked_model_type(model_type: str, problem: str = "is not supported; lmlab exports") -> str:
  """``model_type`` in lower case with dashes, if it is one of ``MODEL_TYPES``."""
  normalised = str(model_type).lower().replace("_", "-")
  if normalised not in _FAMILY_OF:
    raise ConversionError(
        f"model_type={model_type!r} {problem} {list(MODEL_TYPES)} (BERT/RoBERTa/XLM-R "
        "encoders, T5/mT5/ByT5/Flan-T5, BiGS).")
  return normalised


def _require_safetensors(folder: str, hf_config: Mapping[str, Any]) -> None:
  """Raises, saying how to get ``model.safetensors``, unless the folder has it."""
  if _exists(folder, _SAFETENSORS):
    return
  arch = (hf_config.get("architectures") or ["AutoModel"])[0]
  resave = (f"python -c \"import transformers; transformers.{arch}.from_pretrained("
            f"'{folder}'{{}}).save_pretrained('{folder}')\"")
  if _exists(folder, _PYTORCH):
    raise ConversionError(
        f"{folder} has only PyTorch pickle weights (pytorch_model.bin); lmlab reads "
        "safetensors (no torch needed). Convert the folder once where torch and transformers "
        f"are installed: {resave.format('')} (writes model.safetensors), or download the "
        "repository's model.safetensors (for many Hub models the safetensors conversion bot "
        "opened a refs/pr/<n> branch with it).")
  if _exists(folder, _FLAX):
    raise ConversionError(
        f"{folder} has Hugging Face Flax weights (flax_model.msgpack); lmlab reads that format "
        "only for BiGS reference folders. Convert with transformers < 5: "
        f"{resave.format(', from_flax=True')}.")
  if _exists(folder, _TENSORFLOW):
    raise ConversionError(
        f"{folder} has only TensorFlow weights (tf_model.h5). Convert with transformers < 5: "
        f"{resave.format(', from_tf=True')}.")
  raise FileNotFoundError(
      f"No weights in {folder}: looked for {common.WEIGHTS_FILE} or "
      f"{common.WEIGHTS_INDEX_FILE} (also recognised, to be converted: "
      f"{', '.join(_PYTORCH + _TENSORFLOW)}).")


# ----------------------------------------------------------------------------
# Import.
# ----------------------------------------------------------------------------


def _label_names(hf_config: Mapping[str, Any], num_classes: int) -> Optional[tuple[str, ...]]:
  """Class names from ``id2label`` (``None`` if absent, incomplete or ``LABEL_<i>``)."""
  id2label = hf_config.get("id2label")
  if not isinstance(id2label, Mapping):
    return None
  names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
  if any(name is None for name in names) or all(
      str(name) == f"LABEL_{i}" for i, name in enumerate(names)):
    return None
  return tuple(str(name) for name in names)


def _num_classes(params: Params) -> int:
  return int(np.shape(nn.meta.unbox(params["classifier"]["kernel"]))[-1])


def _load_bert(folder: str, hf_config: dict, model_type: str, scan_layers: bool):
  _require_safetensors(folder, hf_config)
  config = hf_bert.bert_config_from_hf({**hf_config, "model_type": model_type})
  if scan_layers:
    config = dataclasses.replace(config, scan_layers=True)
  _, state = common.read_hf_folder(folder)
  dropped = hf_bert.dropped_parts(state, model_type)
  params = hf_bert.params_from_hf(state, config, model_type)
  heads = hf_bert.params_heads(params)
  arch = hf_bert.architecture(model_type, heads)
  if "cls.seq_relationship" in dropped and heads == ("mlm_head", "pooler"):
    arch = "BertForPreTraining"
  labels = _label_names(hf_config, _num_classes(params)) if "classifier" in heads else None
  return ImportedCheckpoint(
      family="bert", model_type=model_type, architecture=arch, network=config, params=params,
      heads=heads, missing=tuple(h for h in _BERT_FULL if h not in heads), hf_config=hf_config,
      folder=folder, label_names=labels, pooling="cls", dropped=dropped)


def _load_t5(folder: str, hf_config: dict, model_type: str):
  _require_safetensors(folder, hf_config)
  config = hf_t5.t5_config_from_hf({**hf_config, "model_type": model_type})
  _, state = common.read_hf_folder(folder)
  decoder = hf_t5.has_decoder(state)
  params = hf_t5.params_from_hf(state, config, decoder)
  heads = hf_t5.params_heads(params)
  return ImportedCheckpoint(
      family="t5", model_type=model_type, architecture=hf_t5.architecture(model_type, decoder),
      network=config, params=params, heads=heads,
      missing=tuple(h for h in hf_t5.HEADS if h not in heads), hf_config=hf_config,
      folder=folder, label_names=None, pooling=None)


def _load_bigs(folder: str, scan_layers: bool):
  hf_config, tree = bigs.read_reference_folder(folder)
  head = bigs.reference_head(tree)
  config = bigs.bigs_config_from_reference(hf_config, head)
  if scan_layers:
    config = dataclasses.replace(config, scan_layers=True)
  params = bigs.params_from_reference(tree, config, head)
  heads = ("mlm_head",) if head == "mlm" else ("pooler", "classifier")
  state = bigs.reference_state(tree)
  dropped = ()
  if head == "mlm":
    dropped = tuple(sorted({name.rsplit("/", 2)[0] for name in state
                            if name.startswith((f"{bigs.BASE}/pooler/", "cls/seq_relationship/"))}))
  labels = _label_names(hf_config, _num_classes(params)) if head != "mlm" else None
  return ImportedCheckpoint(
      family="bigs", model_type="bigs", architecture=bigs.ARCHITECTURES[head], network=config,
      params=params, heads=heads, missing=tuple(h for h in _BERT_FULL if h not in heads),
      hf_config=hf_config, folder=folder, label_names=labels, pooling="mean", dropped=dropped)


def _load_model_folder(folder: str, scan_layers: bool,
                       default_model_type: Optional[str] = None) -> ImportedCheckpoint:
  if not os.path.isfile(os.path.join(folder, common.CONFIG_FILE)):
    raise FileNotFoundError(
        f"No {common.CONFIG_FILE} in {folder}: a checkpoint folder holds config.json next to "
        f"{common.WEIGHTS_FILE} (or {common.WEIGHTS_INDEX_FILE} with its shards, or "
        f"{bigs.WEIGHTS_FILE} for BiGS), or is a sentence-transformers folder with "
        f"{ST_MODULES_FILE}.")
  hf_config = common.read_hf_config(folder)
  model_type = _model_type(hf_config, folder, default_model_type)
  family = _FAMILY_OF[model_type]
  if family == "bert":
    return _load_bert(folder, hf_config, model_type, scan_layers)
  if family == "t5":
    if scan_layers:
      raise ConversionError("scan_layers: lmlab's T5 network has no scanned layout.")
    return _load_t5(folder, hf_config, model_type)
  return _load_bigs(folder, scan_layers)


def _st_modules(folder: str) -> list[dict[str, Any]]:
  with open(os.path.join(folder, ST_MODULES_FILE)) as f:
    modules = json.load(f)
  if not isinstance(modules, list):
    raise ConversionError(f"{os.path.join(folder, ST_MODULES_FILE)} is not a list of modules.")
  return sorted(modules, key=lambda m: int(m.get("idx", 0)))


def _module_kind(module: Mapping[str, Any]) -> str:
  """``sentence_transformers.models.Pooling`` -> ``Pooling``."""
  return str(module.get("type", "")).rsplit(".", 1)[-1]


def _st_transformer_folder(folder: str) -> str:
  """Folder of a sentence-transformers folder's transformer module."""
  for module in _st_modules(folder):
    if _module_kind(module) in _ST_TRANSFORMER_TYPES:
      return os.path.join(folder, module.get("path", ""))
  raise ConversionError(
      f"{os.path.join(folder, ST_MODULES_FILE)} lists no transformer module (types ending in "
      f"{_ST_TRANSFORMER_TYPES}); found {[m.get('type') for m in _st_modules(folder)]}.")


def _st_pooling(folder: str, module: Mapping[str, Any]) -> Optional[str]:
  """The pooling mode a sentence-transformers ``Pooling`` module declares."""
  path = os.path.join(folder, module.get("path", ""), common.CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    config = json.load(f)
  if isinstance(config.get("pooling_mode"), str):
    return config["pooling_mode"]
  modes = [name for key, name in _ST_POOLING_MODES if config.get(key)]
  return "+".join(modes) or None


def _load_sentence_transformers(folder: str, scan_layers: bool,
                                default_model_type: Optional[str]) -> ImportedCheckpoint:
  """The transformer of a sentence-transformers folder, with its pooling and dropped modules."""
  transformer = os.path.normpath(_st_transformer_folder(folder))
  checkpoint = _load_model_folder(transformer, scan_layers, default_model_type)
  pooling, dropped = None, []
  for module in _st_modules(folder):
    kind = _module_kind(module)
    if kind == "Pooling":
      pooling = _st_pooling(folder, module)
    elif kind not in _ST_TRANSFORMER_TYPES:  # Dense, Normalize, LayerNorm, ...
      dropped.append(module.get("path") or kind)
  return dataclasses.replace(
      checkpoint, architecture=f"sentence-transformers/{checkpoint.architecture}",
      pooling=pooling, dropped=checkpoint.dropped + tuple(dropped))


def load_hf_checkpoint(folder: str | os.PathLike, *, scan_layers: bool = False,
                       default_model_type: Optional[str] = None) -> ImportedCheckpoint:
  """Imports a checkpoint folder of any supported layout (see the module docstring).

  Args:
    folder: A Hugging Face model folder (``config.json`` + safetensors), a
      sentence-transformers folder (``modules.json``; the transformer may
      be at the root or in a sub-folder such as ``0_Transformer``), or a
      BiGS reference folder (``config.json`` + ``flax_model.msgpack``).
    scan_layers: Return an encoder with ``scan_layers=True`` (stacked
      ``encoder/layers``); bert and bigs families only.
    default_model_type: Model type to assume when ``config.json`` names
      neither a ``model_type`` nor a known architecture (hand-written configs).

  Raises:
    FileNotFoundError: No such folder, no ``config.json`` or no weights.
    ConversionError: An unsupported ``model_type`` (the message lists the
      supported ones), PyTorch/TensorFlow/Flax weights where safetensors are
      needed (the message says how to convert), or tensors that do not fit
      the config (the first one is named).
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Checkpoint folder {folder} does not exist.")
  if os.path.isfile(os.path.join(folder, ST_MODULES_FILE)):
    return _load_sentence_transformers(folder, scan_layers, default_model_type)
  return _load_model_folder(folder, scan_layers, default_model_type)


# ----------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------


def copy_tokenizer_files(tokenizer_dir: str | os.PathLike,
                         folder: str | os.PathLike) -> tuple[str, ...]:
  """Copies the ``TOKENIZER_FILES`` that ``tokenizer_dir`` has into ``folder``; returns their names.

  Raises:
    FileNotFoundError: If ``tokenizer_dir`` is not a folder or has none of them.
  """
  source, target = os.fspath(tokenizer_dir), os.fspath(folder)
  if not os.path.isdir(source):
    raise FileNotFoundError(f"Tokenizer folder {source} does not exist.")
  names = tuple(name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(source, name)))
  if not names:
    raise FileNotFoundError(f"No tokenizer files in {source}: looked for {list(TOKENIZER_FILES)}.")
  os.makedirs(target, exist_ok=True)
  for name in names:
    src, dst = os.path.join(source, name), os.path.join(target, name)
    if not (os.path.exists(dst) and os.path.samefile(src, dst)):
      shutil.copyfile(src, dst)
  return names


def _with_labels(base: dict[str, Any], params: Params,
                 label_names: Optional[Sequence[str]]) -> dict[str, Any]:
  """``base`` with ``id2label``/``label2id`` from ``label_names``, checked against the classifier."""
  if label_names is None:
    return base
  label_names = [str(name) for name in label_names]
  if "classifier" not in params:
    raise ConversionError("label_names were given but the parameters have no classifier.")
  width = _num_classes(params)
  if len(label_names) != width:
    raise ConversionError(f"{len(label_names)} label_names for a classifier with {width} outputs.")
  if len(set(label_names)) != width:
    raise ConversionError(f"label_names must be distinct, got {label_names}.")
  return dict(base, id2label={str(i): name for i, name in enumerate(label_names)},
              label2id={name: i for i, name in enumerate(label_names)})


def export_hf_checkpoint(folder: str | os.PathLike, network: EncoderConfig | T5Config,
                         params: Params, *, model_type: str,
                         hf_config: Optional[Mapping[str, Any]] = None,
                         label_names: Optional[Sequence[str]] = None,
                         tokenizer_dir: Optional[str | os.PathLike] = None) -> None:
  """Writes ``params`` as a folder that Hugging Face (or the BiGS reference) loads.

  The class follows the parts ``params`` hold: for BERT/RoBERTa/XLM-R
  ``<Stem>ForSequenceClassification`` (pooler + classifier; loads with
  ``AutoModelForSequenceClassification``), ``<Stem>ForMaskedLM`` (MLM head;
  ``AutoModelForMaskedLM``), else ``<Stem>Model`` (``AutoModel``); for T5
  ``T5ForConditionalGeneration`` (``MT5...`` for mT5), or ``T5EncoderModel``
  without a decoder; for BiGS the reference's MLM or classification class.

  Args:
    folder: Folder to write (created if needed): ``config.json`` and
      ``model.safetensors`` (BiGS: ``flax_model.msgpack``).
    network: lmlab config of ``params`` (``scan_layers`` is honoured).
    params: lmlab parameter tree (numpy or jax arrays, boxed or not).
    model_type: One of ``MODEL_TYPES``.
    hf_config: Original Hugging Face config (e.g. ``ImportedCheckpoint.hf_config``);
      entries lmlab does not model (token ids, tokenizer class, ...) are kept.
    label_names: Class names, one per classifier output, written as
      ``id2label``/``label2id``. Without them, an ``id2label`` of the right
      size in ``hf_config`` is kept, else ``LABEL_<i>`` is written.
    tokenizer_dir: Folder to copy the ``TOKENIZER_FILES`` it has from.

  Raises:
    ConversionError: Unknown model type, a network of the wrong kind for it,
      label names that do not fit the classifier, or a network/parameter
      layout without a Hugging Face counterpart.
    FileNotFoundError: A ``tokenizer_dir`` without tokenizer files.
  """
  model_type = _checked_model_type(model_type)
  family = _FAMILY_OF[model_type]
  wanted = T5Config if family == "t5" else EncoderConfig
  if not isinstance(network, wanted):
    raise ConversionError(f"model_type={model_type!r} needs a {wanted.__name__}, got "
                          f"{type(network).__name__}.")
  params = nn.meta.unbox(params)
  base = _with_labels(dict(hf_config or {}), params, label_names)
  if tokenizer_dir is not None and not _exists(os.fspath(tokenizer_dir), TOKENIZER_FILES):
    raise FileNotFoundError(f"No tokenizer files in {os.fspath(tokenizer_dir)}: looked for "
                            f"{list(TOKENIZER_FILES)}.")
  if family == "bert":
    hf_bert.save_hf_bert(folder, network, params, model_type, base=base)
  elif family == "t5":
    hf_t5.save_hf_t5(folder, network, params, base=base, model_type=model_type)
  else:
    bigs.save_reference_bigs(folder, network, params, base=base)
  if tokenizer_dir is not None:
    copy_tokenizer_files(tokenizer_dir, folder)
