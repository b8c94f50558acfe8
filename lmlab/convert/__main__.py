"""Command line: convert Hugging Face (and BiGS reference) checkpoints to lmlab files and back.

Import a Hugging Face folder (``config.json`` + ``model.safetensors``)::

  python -m lmlab.convert import --family t5 --hf_dir ./t5-small --output t5.npz

This writes the parameter tree (``.npz`` or ``.msgpack``) and, next to it,
``t5.config.json`` holding the lmlab config, the Hugging Face model type and
the original Hugging Face config. Export reads both back::

  python -m lmlab.convert export --family t5 --params t5.npz --hf_dir ./t5-again

The exported folder loads with ``from_pretrained``. Entries of the original
Hugging Face config that lmlab does not model (token ids, tokenizer class,
task prefixes) are carried over from the sidecar.

``--family bigs`` reads and writes folders of the BiGS reference Flax model
(``config.json`` + ``flax_model.msgpack``, see ``lmlab.convert.bigs``). The
head (masked LM or sequence classification) is taken from the checkpoint and
recorded in the sidecar::

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

from lmlab.convert import bigs, common, hf_bert, hf_t5
from lmlab.models.config import EncoderConfig, T5Config

FAMILIES = ("t5", "bert", "bigs")


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
  imp.add_argument("--family", choices=FAMILIES, required=True,
                   help="t5 (T5ForConditionalGeneration), bert (Bert/RobertaForMaskedLM, "
                   "BertForPreTraining, BertModel, BertForSequenceClassification; the pooler is "
                   "kept) or "
                   "bigs (reference FlaxBiGSForMaskedLM / FlaxBiGSForSequenceClassification).")
  imp.add_argument("--hf_dir", required=True,
                   help="Folder with config.json + model.safetensors (bigs: flax_model.msgpack).")
  imp.add_argument("--output", required=True, help="Parameter file to write (.npz or .msgpack).")
  imp.add_argument("--config_output", default=None,
                   help="lmlab config JSON to write (default: <output stem>.config.json).")
  exp = commands.add_parser("export", help="lmlab parameter file -> Hugging Face folder.")
  exp.add_argument("--family", choices=FAMILIES, required=True)
  exp.add_argument("--params", required=True, help="Parameter file (.npz or .msgpack).")
  exp.add_argument("--config", default=None,
                   help="lmlab config JSON written by import (default: <params stem>.config.json).")
  exp.add_argument("--hf_dir", required=True, help="Folder to write.")
  exp.add_argument("--model_type", choices=hf_bert.MODEL_TYPES, default=None,
                   help="For --family bert: bert or roberta (default: as recorded at import).")
  return parser


def run_import(family: str, hf_dir: str, output: str, config_output: Optional[str] = None) -> None:
  """Converts a Hugging Face folder into a parameter file plus its config sidecar."""
  hf_config = common.read_hf_config(hf_dir)
  extra: dict[str, Any] = {}
  if family == "t5":
    config, params = hf_t5.load_hf_t5(hf_dir)
    model_type = "t5"
  elif family == "bigs":
    checkpoint = bigs.load_reference_bigs(hf_dir)
    config, params = checkpoint.config, checkpoint.params
    model_type = bigs.MODEL_TYPE
    extra = {"head": checkpoint.head, "num_classes": checkpoint.num_classes}
  else:
    config, params = hf_bert.load_hf_bert(hf_dir)
    model_type = hf_config.get("model_type", "bert")
  common.save_params(output, params)
  sidecar = {"family": family, "hf_model_type": model_type,
             "config": dataclasses.asdict(config), "hf_config": hf_config, **extra}
  with open(config_output or default_config_path(output), "w") as f:
    json.dump(sidecar, f, indent=2, sort_keys=True)
    f.write("\n")


def run_export(family: str, params_path: str, hf_dir: str, config_path: Optional[str] = None,
               model_type: Optional[str] = None) -> None:
  """Writes a Hugging Face folder from a parameter file and its config sidecar."""
  with open(config_path or default_config_path(params_path)) as f:
    sidecar: dict[str, Any] = json.load(f)
  if sidecar.get("family", family) != family:
    raise common.ConversionError(
        f"The config file is for family {sidecar['family']!r}, not {family!r}.")
  params = common.load_params(params_path)
  if family == "t5":
    hf_t5.save_hf_t5(hf_dir, T5Config(**sidecar["config"]), params,
                     base=sidecar.get("hf_config"))
  elif family == "bigs":
    bigs.save_reference_bigs(hf_dir, EncoderConfig(**sidecar["config"]), params,
                             head=sidecar.get("head"), base=sidecar.get("hf_config"))
  else:
    model_type = model_type or sidecar.get("hf_model_type", "bert")
    hf_bert.save_hf_bert(hf_dir, EncoderConfig(**sidecar["config"]), params, model_type,
                         base=sidecar.get("hf_config"))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point; returns the process exit status (2 for a checkpoint that does not fit)."""
  args = build_parser().parse_args(argv)
  try:
    if args.command == "import":
      run_import(args.family, args.hf_dir, args.output, args.config_output)
    else:
      run_export(args.family, args.params, args.hf_dir, args.config, args.model_type)
  except (common.ConversionError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
