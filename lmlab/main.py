"""Command line: ``python -m lmlab.main --gin_file=... [--gin.NAME=VALUE ...]``.

A thin dispatcher: parse flags, parse gin (later files win, then bindings),
call ``lmlab.runs.run``. Errors a user can fix are printed as one clear
message instead of a traceback (set LMLAB_TRACEBACK=1 for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence

import gin

GIN_MACRO_PREFIX = "--gin."
# Exit status after SIGTERM made the run save a checkpoint and stop (128 + SIGTERM,
# what schedulers expect of a terminated job; the same command resumes).
PREEMPTED_EXIT_CODE = 143


def default_gin_search_paths() -> list[str]:
  """The repo's ``gin/`` folder (checkouts, editable installs) and the installed copy.

  Installed, ``lmlab`` sits in site-packages next to the gin-config package, also
  named ``gin``: a folder with an ``__init__.py`` is that package, not gin files.
  """
  checkout = pathlib.Path(__file__).resolve().parent.parent / "gin"
  installed = pathlib.Path(sys.prefix) / "share" / "lmlab" / "gin"
  paths = []
  if checkout.is_dir() and not (checkout / "__init__.py").exists():
    paths.append(checkout)
  if installed.is_dir():
    paths.append(installed)
  return [str(p) for p in paths]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m lmlab.main",
      description="Pretrain, evaluate, fine-tune or run inference with a gin-configured lmlab "
                  "model.",
      epilog="Any --gin.NAME=VALUE binds gin macro or parameter NAME, e.g. --gin.TRAIN_STEPS=100 "
             "or --gin.MODEL_DIR='\"/tmp/run\"'.")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="Gin file (repeatable; later files win). Relative paths are also "
                           "looked up in the gin search paths, e.g. runs/quickstart.gin.")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="Gin binding such as 'TrainConfig.batch_size = 64' (repeatable).")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="Extra folders (comma-separated, repeatable) searched for gin files.")
  parser.add_argument("--run_mode", default="train", choices=("train", "eval", "infer", "finetune"),
                      help="train (default): pretrain, resuming from the newest checkpoint in "
                           "MODEL_DIR if there is one. eval: score the newest checkpoint on the "
                           "eval split, written to MODEL_DIR/eval_results.json. infer: fill "
                           "the <mask> slots of fill_mask_inputs.texts (encoders) or decode as "
                           "InferConfig says (encoder-decoders), by default into "
                           "MODEL_DIR/inference/. finetune: GLUE/SuperGLUE fine-tuning "
                           "configured by FinetuneConfig (e.g. finetune/glue.gin).")
  parser.add_argument("--init_checkpoint", default=None,
                      help="Start from this checkpoint: an lmlab MODEL_DIR, a Hugging Face model "
                           "folder (config.json + safetensors + tokenizer files; its network and "
                           "tokenizer are used) or a file written by `python -m lmlab.convert "
                           "import`. train: continued pretraining; finetune: the pretrained "
                           "network (FinetuneConfig.init_checkpoint_dir).")
  parser.add_argument("--vocabulary", default=None,
                      help="Tokenize every task with this vocabulary: embedded, bytes, byt5, a "
                           "SentencePiece .model, a vocab.txt, a tokenizer.json or a Hugging Face "
                           "folder (default: the init checkpoint's, else each task's own).")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="Directory of prepared TFDS datasets (for tasks such as lmlab.c4_mlm).")
  multi = parser.add_argument_group(
      "multi-process", "Join a run of several processes (hosts). Not needed on TPU pods, SLURM or "
      "Open MPI, where JAX finds its peers itself; give all three flags otherwise.")
  multi.add_argument("--coordinator_address", default=None,
                     help="HOST:PORT of process 0, reachable from every process.")
  multi.add_argument("--num_processes", type=int, default=None, help="Number of processes.")
  multi.add_argument("--process_id", type=int, default=None, help="This process's index.")
  return parser


def split_gin_macro_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates ``--gin.NAME=VALUE`` flags (as gin bindings) from the rest."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith(GIN_MACRO_PREFIX):
      name, sep, value = arg[len(GIN_MACRO_PREFIX):].partition("=")
      if not sep or not name:
        raise ValueError(f"Flag {arg!r} must look like --gin.NAME=VALUE.")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Parses gin files then bindings; unknown names fail here with file and line."""
  from lmlab import configurables  # noqa: F401  pylint: disable=g-import-not-at-top
  for path in [*search_paths, *default_gin_search_paths()]:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=True)


class _GinSearchNoise(logging.Filter):
  """Drops gin's per-candidate "Path not found" logs while it walks the search path."""

  def filter(self, record: logging.LogRecord) -> bool:
    in_gin = f"{os.sep}gin{os.sep}" in record.pathname
    return not (in_gin and ("Path not found" in record.getMessage() or
                            "system_path_file_exists" in record.getMessage()))


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for handler in logging.getLogger().handlers:
    handler.addFilter(_GinSearchNoise())
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax/seqio chatter
  # "Unable to initialize backend 'tpu'" on every machine without one.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> object:
  argv = list(sys.argv[1:] if argv is None else argv)
  setup_logging()
  try:
    rest, macro_bindings = split_gin_macro_flags(argv)
    args = build_parser().parse_args(rest)
    if not args.gin_file:
      raise ValueError("No --gin_file given: try --gin_file=runs/quickstart.gin.")
    search = [p for group in args.gin_search_paths for p in group.split(",") if p]
    bindings = [*args.gin_bindings, *macro_bindings, f"run.run_mode = {args.run_mode!r}"]
    if args.init_checkpoint:
      key = "FinetuneConfig.init_checkpoint_dir" if args.run_mode == "finetune" else "run.init_checkpoint"
      bindings.append(f"{key} = {args.init_checkpoint!r}")
    if args.vocabulary:
      key = "FinetuneConfig.vocabulary" if args.run_mode == "finetune" else "DataConfig.vocabulary"
      bindings.append(f"{key} = {args.vocabulary!r}")
    if args.tfds_data_dir:
      bindings.append(f"DataConfig.tfds_data_dir = {args.tfds_data_dir!r}")
      if args.run_mode == "finetune":
        bindings.append(f"FinetuneConfig.tfds_data_dir = {args.tfds_data_dir!r}")
    # First: TensorFlow (tf.data, TensorBoard summaries) starts quietly and never sees
    # the accelerators (importing lmlab.data hides them).
    import lmlab.data  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from lmlab.training import multihost  # pylint: disable=g-import-not-at-top
    multihost.initialize(args.coordinator_address, args.num_processes, args.process_id)
    parse_gin(args.gin_file, bindings, search)
    from lmlab import runs  # pylint: disable=g-import-not-at-top
    result = runs.run()
  except (ValueError, FileNotFoundError, PermissionError, KeyError, RuntimeError, IOError) as e:
    from lmlab.training.preemption import PreemptedError  # pylint: disable=g-import-not-at-top
    if isinstance(e, PreemptedError):  # a checkpoint was saved: not an error of the run
      print(f"lmlab: {e}", file=sys.stderr)
      raise SystemExit(PREEMPTED_EXIT_CODE) from None
    if os.environ.get("LMLAB_TRACEBACK"):
      raise
    print(f"lmlab: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print_summary(result)
  return result


def print_summary(result: object) -> None:
  """One readable block at the end of a run."""
  from lmlab.training.trainer import TrainSummary  # pylint: disable=g-import-not-at-top
  if isinstance(result, TrainSummary):
    lines = [f"steps {result.start_step} -> {result.final_step} in {result.seconds:.1f} s "
             f"({result.tokens_per_second:,.0f} tokens/s)"]
    if result.first_train_loss is not None:
      lines.append(f"train loss {result.first_train_loss:.4f} -> {result.final_train_loss:.4f}")
    if result.initial_eval and result.final_eval:
      lines.append(f"eval loss {result.initial_eval['loss']:.4f} -> {result.final_eval['loss']:.4f} "
                   f"(accuracy {result.final_eval['accuracy']:.3f})")
    elif result.final_eval:
      lines.append(f"eval loss {result.final_eval['loss']:.4f}")
    lines.append(f"checkpoint step {result.checkpoint_step}")
  elif isinstance(result, dict) and "table" in result:
    lines = [result["table"]]
  elif isinstance(result, list):
    lines = [f"{r['input']}\n  -> {r.get('filled', r.get('prediction'))}" for r in result]
  else:
    lines = [str(result)]
  print("== lmlab summary ==\n" + "\n".join(lines))


if __name__ == "__main__":
  main()
