"""Training-step throughput and MFU of BERT-base (MLM) and T5-base (span corruption) per attention backend.

One full training step (forward, backward, global-norm clipping at 1, AdamW)
of lmlab's ``MaskedLMModel`` and ``EncoderDecoderModel`` on random batches of
the pretraining shapes, in the bf16 preset's precision (float32 parameters,
bfloat16 compute). Reported per row: step time, tokens per second (all input
plus target positions), model TFLOP/s per device from the wrappers' analytic
FLOP counts (``lmlab/models/flops.py``; 3x the forward's matmuls, no credit
for rematerialisation) and MFU against the device's dense bf16 peak
(``lmlab/training/mfu.py``). ``vs xla`` is a time ratio against the ``xla``
attention backend of the same model in the same run (> 1: faster).

Imports only the networks and wrappers (jax, flax, optax, numpy, gin-config),
not the trainer, so it runs on a bare GPU/TPU image; see
``accelerator_suite.sh`` for carrying gin-config there.

  python experiments/benchmarks/bench_models.py                    # base sizes on an accelerator
  python experiments/benchmarks/bench_models.py --smoke            # tiny sizes: code paths only
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from lmlab.models import EncoderConfig  # noqa: E402
from lmlab.models.config import T5Config  # noqa: E402
from lmlab.training import mfu  # noqa: E402
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel  # noqa: E402
from lmlab.wrappers.masked_lm import MaskedLMModel  # noqa: E402
from timing import time_steps  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  """One model at one batch shape; ``backends`` are the attention backends to compare."""
  name: str
  make: Callable[[str], object]  # attention backend -> wrapper
  batch: Callable[[np.random.RandomState], dict]
  backends: tuple[str, ...]


def bert_case(smoke: bool, rows: int, length: int) -> Case:
  width = dict(d_model=64, num_layers=2, num_heads=2, d_ff=128, vocab_size=512) if smoke else \
      dict(d_model=768, num_layers=12, num_heads=12, d_ff=3072, vocab_size=30592)
  config = EncoderConfig(**width, max_positions=length, dropout_rate=0.0,
                         attention_dropout_rate=0.0, dtype="bfloat16")

  def batch(rng):
    targets = rng.randint(4, config.vocab_size, (rows, length)).astype(np.int32)
    weights = (rng.rand(rows, length) < 0.15).astype(np.float32)
    return {"input_ids": np.where(weights > 0, 3, targets).astype(np.int32), "targets": targets,
            "loss_weights": weights, "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}

  make = lambda backend: MaskedLMModel(dataclasses.replace(config, attention_backend=backend),
                                       max_prediction_fraction=0.2)
  name = "BERT-base MLM" if not smoke else "BERT (smoke)"
  return Case(f"{name} {rows}x{length}", make, batch, ("xla", "pallas", "cudnn"))


def t5_case(smoke: bool, rows: int, input_length: int, target_length: int) -> Case:
  width = dict(d_model=64, num_heads=2, head_dim=32, d_ff=128, num_encoder_layers=2,
               num_decoder_layers=2, vocab_size=512) if smoke else \
      dict(d_model=768, num_heads=12, head_dim=64, d_ff=2048, num_encoder_layers=12,
           num_decoder_layers=12, vocab_size=32128)
  config = T5Config(**width, dtype="bfloat16")

  def batch(rng):
    ids = lambda n: rng.randint(2, config.vocab_size, (rows, n)).astype(np.int32)
    ones = lambda n: np.ones((rows, n), np.int32)
    positions = lambda n: np.tile(np.arange(n, dtype=np.int32), (rows, 1))
    return {"encoder_input_tokens": ids(input_length), "encoder_segment_ids": ones(input_length),
            "encoder_positions": positions(input_length),
            "decoder_input_tokens": ids(target_length),
            "decoder_target_tokens": ids(target_length),
            "decoder_loss_weights": ones(target_length).astype(np.float32),
            "decoder_segment_ids": ones(target_length),
            "decoder_positions": positions(target_length)}

  make = lambda backend: EncoderDecoderModel(dataclasses.replace(config, attention_backend=backend))
  name = "T5-base span corruption" if not smoke else "T5 (smoke)"
  return Case(f"{name} {rows}x({input_length}+{target_length})", make, batch, ("xla", "pallas"))


def train_step_runner(model, batch: dict):
  """A jitted AdamW step on ``batch`` (kept on device) and the state it updates."""
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))
  rows = batch[next(iter(batch))].shape[0]
  length = batch.get("input_ids", batch.get("encoder_input_tokens")).shape[1]
  params = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, rows, length)))(
      jax.random.PRNGKey(0))

  def loss(p, b):
    sums = model.loss_sums(p, b)
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0)

  @jax.jit
  def step(state, b):
    p, opt_state = state
    value, grads = jax.value_and_grad(loss)(p, b)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), value

  device_batch = jax.device_put(batch)
  holder = {"state": (params, optimizer.init(params))}

  def run():
    holder["state"], value = step(holder["state"], device_batch)
    jax.block_until_ready(value)
    holder["loss"] = float(value)

  return run, holder


def measure(case: Case, warmup: int, steps: int, repeats: int) -> list[dict]:
  batch = case.batch(np.random.RandomState(0))
  shapes = {name: value.shape for name, value in batch.items()}
  tokens = sum(np.prod(shapes[n]) for n in ("input_ids", "encoder_input_tokens",
                                             "decoder_target_tokens") if n in shapes)
  peak = mfu.peak_tflops(jax.devices()[0].device_kind)
  rows = []
  for backend in case.backends:
    model = case.make(backend)
    row = dict(model=case.name, backend=backend, seconds=None, error=None)
    try:
      run, holder = train_step_runner(model, batch)
      row["seconds"] = time_steps(run, warmup, steps, repeats)
      row["loss"] = holder["loss"]
    except Exception as error:  # noqa: BLE001 - report the row, keep the table going
      row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    if row["seconds"]:
      # The batch is this process's; every local device shares the step.
      flops = model.train_flops(shapes) / jax.local_device_count()
      row["tokens_per_second"] = tokens / row["seconds"]
      row["tflops"] = flops / row["seconds"] / 1e12
      row["mfu"] = row["tflops"] / peak if peak else None
    rows.append(row)
  return rows


def markdown(rows: Sequence[dict]) -> list[str]:
  lines = ["| model | attention | step ms | tokens/s | TFLOP/s/device | MFU | vs xla |",
           "|---|---|---:|---:|---:|---:|---:|"]
  xla = {r["model"]: r["seconds"] for r in rows if r["backend"] == "xla"}
  for r in rows:
    if not r["seconds"]:
      lines.append(f"| {r['model']} | {r['backend']} | failed: {r['error']} | | | | |")
      continue
    base = xla.get(r["model"])
    ratio = f"{base / r['seconds']:.2f}x" if base else "--"
    mfu_text = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "--"
    lines.append(f"| {r['model']} | {r['backend']} | {1e3 * r['seconds']:.1f} | "
                 f"{r['tokens_per_second']:,.0f} | {r['tflops']:.1f} | {mfu_text} | {ratio} |")
  return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny models: code paths only")
  parser.add_argument("--models", default="bert,t5", help="comma-separated: bert,t5")
  parser.add_argument("--bert_batch", default="32x512", help="ROWSxLENGTH")
  parser.add_argument("--t5_batch", default="32x512x114", help="ROWSxINPUTSxTARGETS")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--markdown", default=None, help="also write the table to this file")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parse_args(argv)
  smoke = args.smoke
  bert_shape = (4, 32) if smoke else tuple(int(x) for x in args.bert_batch.split("x"))
  t5_shape = (4, 32, 8) if smoke else tuple(int(x) for x in args.t5_batch.split("x"))
  cases = {"bert": lambda: bert_case(smoke, *bert_shape),
           "t5": lambda: t5_case(smoke, *t5_shape)}
  device = jax.devices()[0]
  print(f"devices: {jax.device_count()} x {device.device_kind}  jax {jax.__version__}  "
        f"peak {mfu.peak_tflops(device.device_kind)} TFLOP/s (bf16, dense)")
  rows = []
  for name in args.models.split(","):
    rows += measure(cases[name](), warmup=1 if smoke else 2, steps=1 if smoke else args.steps,
                    repeats=1 if smoke else args.repeats)
  table = markdown(rows)
  print("\n".join(table))
  if args.markdown:
    pathlib.Path(args.markdown).write_text("\n".join(table) + "\n")
  return rows


if __name__ == "__main__":
  main()
