"""MrT5 study measure: hard deletion on validation batches, and the encoder's speed-up from it.

  python experiments/mrt5_deletion/measure.py --model_dir=RUN --out=measures.json

Loads the finished run, takes ``--batches`` validation batches of its task
(the run's batch size and input length) and times two encoder paths on the
same parameters, interleaved (``benchmarks/timing.time_interleaved``):

- ``full``: every block on every byte (what ByT5 runs; for MrT5 the gate
  only biases attention, as in training);
- ``hard``: MrT5's inference path: the blocks before the gate, removal of the
  bytes whose gate is below ``T5Config.delete_threshold`` (host side), the
  later blocks on the shortened rows.

Writes ``hard_deletion_rate`` (share of real input bytes removed),
``encoder_speedup`` (full time / hard time; 1 for a run without a gate) and
both times in milliseconds.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "benchmarks"), str(HERE.parent.parent)]

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from studylib.trained import load_run, write_measures  # noqa: E402  pylint: disable=wrong-import-position
from timing import time_interleaved  # noqa: E402  pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", type=pathlib.Path, required=True)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--batches", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  from lmlab.data import pipeline  # pylint: disable=import-outside-toplevel
  from lmlab.models.byte_level import keep_tokens  # pylint: disable=import-outside-toplevel
  from lmlab.wrappers.encoder_decoder import EncoderDecoderModel  # pylint: disable=import-outside-toplevel

  run = load_run(args.model_dir, "T5Config")
  cfg = run.network
  module = EncoderDecoderModel(cfg).module
  variables = {"params": run.params}
  lengths = run.values.get("DataConfig.task_feature_lengths")
  batch_size = run.values["TrainConfig.batch_size"]
  dataset = pipeline.get_dataset(run.task, "validation", lengths, batch_size, shuffle=False,
                                 seed=0, repeat=True)
  batches = [{k: np.asarray(v) for k, v in b.items()}
             for b in dataset.take(args.batches).as_numpy_iterator()]

  full = jax.jit(lambda v, ids, seg, pos: module.apply(v, ids, seg, pos, method="encode")[0])
  lower = jax.jit(lambda v, ids, seg, pos: module.apply(v, ids, seg, pos, method="encode_lower"))
  upper = jax.jit(lambda v, h, seg, pos, bias: module.apply(v, h, seg, pos, bias,
                                                            method="encode_upper"))
  real = kept_real = 0

  def run_full():
    for b in batches:
      jax.block_until_ready(full(variables, b["encoder_input_tokens"], b["encoder_segment_ids"],
                                 b["encoder_positions"]))

  def run_hard():
    nonlocal real, kept_real
    real = kept_real = 0
    for b in batches:
      hidden, gate = lower(variables, b["encoder_input_tokens"], b["encoder_segment_ids"],
                           b["encoder_positions"])
      kept = keep_tokens(np.asarray(hidden), b["encoder_segment_ids"], b["encoder_positions"],
                         np.asarray(gate), threshold=cfg.delete_threshold,
                         pad_gate=cfg.delete_gate_scale, key_bias=cfg.hard_delete_key_bias)
      real += int((b["encoder_segment_ids"] > 0).sum())
      kept_real += int((kept.segment_ids > 0).sum())
      jax.block_until_ready(upper(variables, kept.hidden, kept.segment_ids, kept.positions,
                                  kept.key_bias))

  steps = {"full": run_full}
  if cfg.delete_gate_layer is not None:
    steps["hard"] = run_hard
  seconds = time_interleaved(steps, warmup=2, count=1, repeats=args.repeats)
  values = {"full_ms": seconds["full"] * 1e3, "hard_deletion_rate": 0.0, "encoder_speedup": 1.0}
  if "hard" in seconds:
    values.update(hard_ms=seconds["hard"] * 1e3, hard_deletion_rate=1.0 - kept_real / real,
                  encoder_speedup=seconds["full"] / seconds["hard"])
  write_measures(args.out, values)


if __name__ == "__main__":
  main()
