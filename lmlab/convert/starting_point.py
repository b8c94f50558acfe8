"""Where a run's parameters come from: an lmlab run, a Hugging Face folder or a converted file.

Pretraining (continued), fine-tuning and evaluation can all start from

* an lmlab MODEL_DIR (its newest or a chosen checkpoint); the network config
  is the run's own (the model gin file);
* a Hugging Face model folder (``config.json`` + safetensors, with its
  tokenizer files), converted on the fly by ``lmlab.convert.auto``; the
  network config *and the vocabulary* come from the folder, so every task
  of the run is tokenized as the checkpoint was trained;
* a parameter file written by ``python -m lmlab.convert import`` (``.npz`` /
  ``.msgpack`` with its ``.config.json`` sidecar); the network config comes
  from the sidecar.

``load_starting_point`` reads any of them into a ``StartingPoint``; the run
modes then graft its parameters onto the fresh model
(``lmlab.training.pretrained``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional, Union

from lmlab.convert import auto, common
from lmlab.models.config import EncoderConfig, T5Config
from lmlab.training import checkpointing

logger = logging.getLogger(__name__)
PARAMS_SUFFIXES = (".npz", ".msgpack")
Network = Union[EncoderConfig, T5Config]


@dataclasses.dataclass(frozen=True)
class StartingPoint:
  """Parameters a run starts from, and what came with them.

  Attributes:
    source: The path it was read from.
    kind: ``lmlab_run``, ``hugging_face`` or ``params_file``.
    params: Host (numpy) parameter tree in lmlab's layout.
    step: The checkpoint step (lmlab runs), else None.
    network: The network config the parameters belong to (None for an lmlab
      run, whose config is the model gin file's).
    family: ``bert``, ``t5`` or ``bigs`` when known.
    vocabulary: The vocabulary spec the checkpoint was trained with (its
      folder, for ``vocabularies.load_vocabulary``), None if it has none.
    label_names: Class names of an imported classifier head (``id2label``).
    model_type: Hugging Face ``model_type`` (for export), when known.
    hf_config: The Hugging Face config, when known (kept on export).
    missing: Top-level parts a full network of its family has that the
      checkpoint lacks (a T5 encoder-only import: ``decoder``); a run that
      needs them starts them fresh instead of refusing the checkpoint.
    pooling: How the checkpoint pools a sequence (``cls`` for BERT-family
      poolers and classifiers, ``mean`` for BiGS or a sentence-transformers
      mean pooling), when it says.
  """
  source: str
  kind: str
  params: Any
  step: Optional[int] = None
  network: Optional[Network] = None
  family: Optional[str] = None
  vocabulary: Optional[str] = None
  label_names: Optional[tuple[str, ...]] = None
  model_type: Optional[str] = None
  hf_config: Optional[dict] = None
  pooling: Optional[str] = None
  missing: tuple[str, ...] = ()

  def required_prefixes(self, inherited: tuple[str, ...]) -> tuple[str, ...]:
    """The parts of ``inherited`` (a wrapper's ``inherited_prefixes``) this checkpoint must hold."""
    return tuple(prefix for prefix in inherited if prefix not in self.missing)


def _network_from_sidecar(sidecar: dict) -> Network:
  family = sidecar.get("family")
  config = sidecar["config"]
  if family == "t5":
    return T5Config(**config)
  return EncoderConfig(**config)


def _params_file(path: str) -> StartingPoint:
  sidecar_path = os.path.splitext(path)[0] + ".config.json"
  if not os.path.exists(sidecar_path):
    raise FileNotFoundError(
        f"{path} has no {os.path.basename(sidecar_path)} next to it: the network config of a "
        "converted parameter file lives there (python -m lmlab.convert import writes both).")
  with open(sidecar_path, encoding="utf-8") as f:
    sidecar = json.load(f)
  hf_config = sidecar.get("hf_config") or {}
  return StartingPoint(source=path, kind="params_file", params=common.load_params(path),
                       network=_network_from_sidecar(sidecar), family=sidecar.get("family"),
                       model_type=sidecar.get("hf_model_type"), hf_config=hf_config,
                       label_names=_label_names(hf_config))


def _label_names(hf_config: dict) -> Optional[tuple[str, ...]]:
  """Class names of ``id2label`` unless they are the generic ``LABEL_<i>``."""
  labels = hf_config.get("id2label")
  if not isinstance(labels, dict) or not labels:
    return None
  names = tuple(str(labels[k]) for k in sorted(labels, key=int))
  if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
    return None
  return names


def _hugging_face(path: str) -> StartingPoint:
  checkpoint = auto.load_hf_checkpoint(path)
  if checkpoint.missing:  # what the run's model needs of them is logged when grafting
    logger.info("%s (%s) has no %s.", path, checkpoint.architecture, ", ".join(checkpoint.missing))
  # sentence-transformers keep the transformer (and often its tokenizer) in a subfolder
  has_tokenizer = any(os.path.exists(os.path.join(checkpoint.folder, name))
                      for name in auto.TOKENIZER_FILES)
  return StartingPoint(source=path, kind="hugging_face", params=checkpoint.params,
                       network=checkpoint.network, family=checkpoint.family,
                       vocabulary=checkpoint.folder if has_tokenizer else path,
                       label_names=checkpoint.label_names, model_type=checkpoint.model_type,
                       hf_config=checkpoint.hf_config, pooling=checkpoint.pooling,
                       missing=tuple(checkpoint.missing))


def load_starting_point(path: str, step: Optional[int] = None, *,
                        what: str = "the init checkpoint") -> StartingPoint:
  """Reads an lmlab run, a Hugging Face folder or a converted parameter file.

  Args:
    path: MODEL_DIR of an lmlab run, a Hugging Face model folder, or an
      ``.npz``/``.msgpack`` parameter file with its ``.config.json``.
    step: For lmlab runs, the checkpoint step (None: the newest).
    what: How to name the setting in errors (e.g. ``--init_checkpoint``).

  Raises:
    FileNotFoundError: Nothing usable at ``path`` (says what was looked for).
  """
  path = os.fspath(path)
  if os.path.isfile(path) and path.endswith(PARAMS_SUFFIXES):
    return _params_file(path)
  if os.path.isdir(path) and auto.is_hf_folder(path):
    return _hugging_face(path)
  if os.path.isdir(path) and os.path.isdir(checkpointing.checkpoint_dir(path)):
    found_step, params = checkpointing.load_params(path, step, what=what)
    return StartingPoint(source=path, kind="lmlab_run", params=params, step=found_step)
  raise FileNotFoundError(
      f"{what}={path!r} is neither an lmlab MODEL_DIR (with checkpoints/), a Hugging Face model "
      "folder (config.json with model.safetensors), nor a parameter file (.npz/.msgpack written "
      "by `python -m lmlab.convert import`).")


def check_vocabulary_fits(vocab_size: int, network: Network, vocabulary: str) -> None:
  """Refuses a vocabulary with more ids than the network has embedding rows.

  Checkpoints may have more rows than tokens (T5: 32128 rows for 32100 ids),
  never fewer: a token beyond the table would index garbage.
  """
  rows = network.vocab_size
  if rows is not None and vocab_size > rows:
    raise ValueError(
        f"The vocabulary {vocabulary} has {vocab_size} ids but the network's embedding has only "
        f"{rows} rows: the tokenizer does not belong to this checkpoint. Use the checkpoint's own "
        "tokenizer files (leave the vocabulary unset to take them from its folder).")
