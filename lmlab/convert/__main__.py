"""Command line: convert Hugging Face (and BiGS reference) checkpoints to lmlab files and back.

Import any supported folder (Hugging Face ``config.json`` + ``model.safetensors``,
a sentence-transformers folder, a BiGS reference folder); the family and the
released class are detected (``lmlab.convert.auto``)::

  python -m lmlab.convert import --family auto --hf_dir ./t5-small --output t5.npz

This writes the parameter tree (``.npz`` or ``.msgpack``) and, next to it,
``t5.config.json`` holding the lmlab config, the family, the Hugging Face
model type, the original Hugging Face config and what import found (class,
heads, missing parts, pooling, class names). Export reads both back, and can
copy the tokenizer files into the folder so it is complete::

  python -m lmlab.convert export --params t5.npz --hf_dir ./t5-again --tokenizer_dir ./t5-small

The exported folder loads with ``from_pretrained``; its class follows the
parts the parameters hold (e.g. ``BertForSequenceClassification`` once a
classifier was trained; ``--label_names a,b,c`` names its classes). Entries
of the original Hugging Face config that lmlab does not model (token ids,
tokenizer class, task prefixes) are carried over from the sidecar.

``--family t5|bert|bigs`` instead of ``auto`` insists on that family (import
fails with exit status 2 on another one). BiGS folders are the reference Flax
model's (``config.json`` + ``flax_model.msgpack``, see ``lmlab.convert.bigs``);
the head (masked LM or sequence classification) is taken from the checkpoint::

  python -m lmlab.convert import --family bigs --hf_dir ./bigs-128 --output bigs.msgpack
  python -m lmlab.convert export --family bigs --params bigs.msgpack --hf_dir ./bigs-again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

from lmlab.convert import auto, common
from lmlab.models.config import EncoderConfig, T5Config

FAMILIES = auto.FAMILIES
# Model type assumed for a config.json that names none, when a family is given.
_DEFAULT_MODEL_TYPES = {"bert": "bert", "t5": "t5", "bigs": "bigs"}


def default_config_path(params_path: str) -> str:
  """``dir/name.npz`` -> ``dir/name.config.json`` (the sidecar of a parameter file)."""
  return os.path.splitext(params_path)[0] + ".config.json"


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m lmlab.convert",
      description="Convert Hugging Face T5 / BERT / RoBERTa and reference BiGS checkpoints to "
      "and from lmlab.")
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import", help="Hugging Face folder -> lmlab parameter file.")
  imp.add_argument("--family", choices=("auto",) + FAMILIES, default="auto",
                   help="auto (default: detected from config.json and the tensors; see "
                   "lmlab.convert.auto), or the family the folder must hold: t5 "
                   "(T5/mT5/ByT5/Flan-T5 ForConditionalGeneration or EncoderModel), bert "
                   "(BERT/RoBERTa/XLM-R base models, MLM, pre-training and sequence classifiers; "
                   "sentence-transformers folders) or bigs (reference FlaxBiGSForMaskedLM / "
                   "FlaxBiGSForSequenceClassification).")
  imp.add_argument("--hf_dir", required=True,
                   help="Folder with config.json + model.safetensors (bigs: flax_model.msgpack), "
                   "or a sentence-transformers folder.")
  imp.add_argument("--output", required=True, help="Parameter file to write (.npz or .msgpack).")
  imp.add_argument("--config_output", default=None,
                   help="lmlab config JSON to write (default: <output stem>.config.json).")
  exp = commands.add_parser("export", help="lmlab parameter file -> Hugging Face folder.")
  exp.add_argument("--family", choices=("auto",) + FAMILIES, default="auto",
                   help="auto (default): the family recorded at import.")
  exp.add_argument("--params", required=True, help="Parameter file (.npz or .msgpack).")
  exp.add_argument("--config", default=None,
                   help="lmlab config JSON written by import (default: <params stem>.config.json).")
  exp.add_argument("--hf_dir", required=True, help="Folder to write.")
  exp.add_argument("--model_type", choices=auto.MODEL_TYPES, default=None,
                   help="Hugging Face model type to write (default: as recorded at import).")
  exp.add_argument("--tokenizer_dir", default=None,
                   help=f"Copy the tokenizer files found there ({', '.join(auto.TOKENIZER_FILES)}) "
                   "into the exported folder.")
  exp.add_argument("--label_names", default=None,
                   help="Comma-separated class names of the classifier, written as "
                   "id2label/label2id (default: as recorded at import, if the classifier still "
                   "has that many outputs).")
  return parser


def run_import(family: str, hf_dir: str, output: str, config_output: Optional[str] = None) -> None:
  """Converts a checkpoint folder into a parameter file plus its config sidecar.

  The sidecar records the lmlab config, the family, the Hugging Face model
  type and config, and what ``auto.load_hf_checkpoint`` reported.

  Raises:
    ConversionError: If ``family`` is not ``auto`` and the folder holds another family.
  """
  checkpoint = auto.load_hf_checkpoint(hf_dir, default_model_type=_DEFAULT_MODEL_TYPES.get(family))
  if family != "auto" and checkpoint.family != family:
    raise common.ConversionError(
        f"{hf_dir} holds a {checkpoint.family} checkpoint (model_type "
        f"{checkpoint.model_type!r}, {checkpoint.architecture}), not {family}; use --family "
        f"{checkpoint.family} or auto.")
  common.save_params(output, checkpoint.params)
  sidecar: dict[str, Any] = {
      "family": checkpoint.family, "hf_model_type": checkpoint.model_type,
      "config": dataclasses.asdict(checkpoint.network), "hf_config": checkpoint.hf_config,
      "architecture": checkpoint.architecture, "heads": list(checkpoint.heads),
      "missing": list(checkpoint.missing), "pooling": checkpoint.pooling,
      "dropped": list(checkpoint.dropped), "hf_dir": checkpoint.folder,
      "label_names": None if checkpoint.label_names is None else list(checkpoint.label_names)}
  if checkpoint.family == "bigs":
    classifier = "classifier" in checkpoint.heads
    sidecar["head"] = "classification" if classifier else "mlm"
    sidecar["num_classes"] = (int(checkpoint.params["classifier"]["kernel"].shape[-1])
                              if classifier else None)
  with open(config_output or default_config_path(output), "w") as f:
    json.dump(sidecar, f, indent=2, sort_keys=True)
    f.write("\n")


def _recorded_labels(sidecar: dict[str, Any], params: dict) -> Optional[list[str]]:
  """The sidecar's class names if the parameters still have a classifier that wide."""
  names = sidecar.get("label_names")
  classifier = params.get("classifier") if isinstance(params, dict) else None
  if not names or not classifier or "kernel" not in classifier:
    return None
  return list(names) if len(names) == classifier["kernel"].shape[-1] else None


def run_export(family: str, params_path: str, hf_dir: str, config_path: Optional[str] = None,
               model_type: Optional[str] = None, tokenizer_dir: Optional[str] = None,
               label_names: Optional[Sequence[str]] = None) -> None:
  """Writes a Hugging Face folder from a parameter file and its config sidecar."""
  with open(config_path or default_config_path(params_path)) as f:
    sidecar: dict[str, Any] = json.load(f)
  recorded = sidecar.get("family")
  if family == "auto":
    if recorded not in FAMILIES:
      raise common.ConversionError(
          f"The config file records no family (got {recorded!r}); pass --family.")
    family = recorded
  elif recorded is not None and recorded != family:
    raise common.ConversionError(
        f"The config file is for family {recorded!r}, not {family!r}.")
  params = common.load_params(params_path)
  network = (T5Config if family == "t5" else EncoderConfig)(**sidecar["config"])
  if family == "bigs":
    model_type = "bigs"
  else:
    model_type = model_type or sidecar.get("hf_model_type") or _DEFAULT_MODEL_TYPES[family]
  if label_names is None:
    label_names = _recorded_labels(sidecar, params)
  auto.export_hf_checkpoint(hf_dir, network, params, model_type=model_type,
                            hf_config=sidecar.get("hf_config"), label_names=label_names,
                            tokenizer_dir=tokenizer_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point; returns the process exit status (2 for a checkpoint that does not fit)."""
  args = build_parser().parse_args(argv)
  try:
    if args.command == "import":
      run_import(args.family, args.hf_dir, args.output, args.config_output)
    else:
      labels = None if args.label_names is None else [
          name.strip() for name in args.label_names.split(",")]
      run_export(args.family, args.params, args.hf_dir, args.config, args.model_type,
                 args.tokenizer_dir, labels)
  except (common.ConversionError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
