"""One BiGS block vs one BERT attention block: training-step time as the sequence grows.

What is timed: forward plus backward of a single block, ``jax.jit`` of
``jax.grad`` of ``sum(block(x))`` with respect to the block's parameters *and*
its input ``x`` (the gradient a block computes inside a deep model), compiled
ahead of time, then the median over ``--repeats`` timed runs of ``--steps``
steps after ``--warmup`` untimed steps. No optimizer, no embeddings, no head:
only the token mixing and the MLP/gating that every layer of the model pays.

The two blocks, each built from ``lmlab.models`` at the same width and called
as ``Encoder.__call__`` calls them (``layer(x, segment_ids_or_mask, None,
positions, deterministic=True)``, no dropout, every token real):

- attention: ``EncoderLayer`` (BERT post-LN block: self-attention with
  ``d_model / --head_dim`` heads, exact-GELU MLP of width ``d_ff``), attention
  backend ``xla`` (plain ``jnp``, the ``L x L`` scores are materialised). It
  takes the segment ids and builds its ``L x L`` mask inside the timed
  function, as the encoder does.
- BiGS: ``BiGSLayer`` (``mixer="bigs"``, post-norm, S4D with ``--state_size``
  complex states and one kernel shared by all channels, as in the reference),
  per-token mask ``segment_ids > 0``. The S4D kernel (``O(N L)``) is
  recomputed every step, as in training; the convolution is an FFT over
  ``2L``, so the block is ``O(L log L)``.

Width choice: the same ``d_ff`` for both (default ``4 * d_model``, BERT's
3072 at 768), so the MLP of the attention block and BiGS's value/gate
projections have the same width. (The BiGS reference uses 3x, 3072 at
1024.) At that choice BiGS has ~16 d_model^2 weights per block against
~12 d_model^2 for attention, so at short lengths, where the dense layers
dominate, BiGS is expected to be *slower*; both parameter counts are printed.

How to read the table: ``ratio`` is attention time / BiGS time (> 1: BiGS is
faster). The growth exponent is the least-squares slope of ``log time``
against ``log L``: 1 is linear, 2 quadratic. It is fitted over the lengths
``>= --fit_from`` (the lengths used are printed), over all lengths, and
between the two longest lengths. Expect about 1 (a little above, from the FFT's
``log L``) for BiGS. For attention, the quadratic terms (scores, softmax,
mask: ~``4 L^2 d_model`` flops plus ``L^2 * heads`` elementwise) only overtake
the linear ones (~``24 L d_model^2`` flops) around ``L ~ 6 d_model`` in flops,
earlier where the elementwise softmax work is memory bound, so its slope
rises towards 2 only at the long end. A length whose step runs out of memory
(at compile or run time) shows ``OOM`` and is left out of the fits.

Absolute times on a shared machine are noisy; the ratios and slopes within one
run are what to read.

Usage::

    python experiments/benchmarks/bench_bigs.py                     # H=768, L=128..4096, float32
    python experiments/benchmarks/bench_bigs.py --dtype bfloat16 --batch 8 --lengths 512,1024,2048
    python experiments/benchmarks/bench_bigs.py --smoke             # tiny, checks the code paths

Imports only jax, flax, numpy and ``lmlab.models`` (it runs where the
trainer's dependencies are not installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from typing import Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.models.bigs import BiGSLayer
from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import EncoderLayer
from timing import time_steps  # sibling module: experiments/benchmarks/timing.py

MIXERS = ("bigs", "attention")
DEFAULT_LENGTHS = (128, 512, 1024, 2048, 4096)
SMOKE_LENGTHS = (16, 32, 64)
OOM_MARKERS = ("resource_exhausted", "out of memory", "failed to allocate")  # matched lower-cased


@dataclasses.dataclass(frozen=True)
class LayerBench:
  """Shapes and dtype shared by both blocks; ``d_ff=None`` means ``4 * d_model``."""

  d_model: int = 768
  d_ff: Optional[int] = None
  head_dim: int = 64
  state_size: int = 64
  batch_size: int = 1
  dtype: str = "float32"

  @property
  def resolved_d_ff(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def num_heads(self) -> int:
    return max(1, self.d_model // self.head_dim)

  def config(self, mixer: str) -> EncoderConfig:
    """``EncoderConfig`` of one block; the compute dtype is ``dtype``, parameters stay float32."""
    if mixer not in MIXERS:
      raise ValueError(f"mixer={mixer!r} is not one of {MIXERS}.")
    return EncoderConfig(
        d_model=self.d_model, num_layers=1, num_heads=self.num_heads,
        head_dim=self.d_model // self.num_heads, d_ff=self.resolved_d_ff, mixer=mixer,
        ssm_state_size=self.state_size, dropout_rate=0.0, attention_dropout_rate=0.0,
        dtype=self.dtype, attention_backend="xla")


def is_oom(exc: BaseException) -> bool:
  """Whether an exception raised while compiling or running a step means "out of memory"."""
  return isinstance(exc, MemoryError) or any(marker in str(exc).lower() for marker in OOM_MARKERS)


def grad_runner(bench: LayerBench, mixer: str, length: int, seed: int = 0):
  """A closure running one compiled forward+backward step of one block, and its parameter count.

  The step is ``grad(sum(block(x)))`` w.r.t. ``(params, x)``; it is compiled
  here (``lower().compile()``), so neither warmup nor timing includes
  compilation, and a compile-time out-of-memory surfaces from this call.
  """
  cfg = bench.config(mixer)
  layer = BiGSLayer(cfg) if mixer == "bigs" else EncoderLayer(cfg)
  shape = (bench.batch_size, length)
  x = jax.random.normal(jax.random.PRNGKey(seed), shape + (bench.d_model,), cfg.compute_dtype)
  segment_ids = jnp.ones(shape, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), shape)

  def block_mask(segment_ids: jax.Array) -> jax.Array:
    # As in ``Encoder.__call__``: a per-token mask for BiGS, segment ids for attention.
    return segment_ids > 0 if mixer == "bigs" else segment_ids

  params = jax.jit(lambda key: layer.init(key, x, block_mask(segment_ids), None, positions, True))(
      jax.random.PRNGKey(seed + 1))

  def loss(params, x, segment_ids, positions):
    out = layer.apply(params, x, block_mask(segment_ids), None, positions, True)
    return jnp.sum(jnp.asarray(out, jnp.float32))

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  compiled = grad_fn.lower(params, x, segment_ids, positions).compile()
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

  def step():
    jax.block_until_ready(compiled(params, x, segment_ids, positions))

  return step, num_params


def time_layer(bench: LayerBench, mixer: str, length: int, warmup: int, steps: int,
               repeats: int) -> tuple[Optional[float], Optional[int]]:
  """``(seconds per step, parameter count)``; ``(None, None)`` when the step runs out of memory."""
  try:
    step, num_params = grad_runner(bench, mixer, length)
    return time_steps(step, warmup, steps, repeats), num_params
  except Exception as exc:  # pylint: disable=broad-except
    if not is_oom(exc):
      raise
    return None, None


def growth_exponent(lengths: Sequence[float], times: Sequence[Optional[float]]) -> Optional[float]:
  """Least-squares slope of ``log time`` on ``log length``; missing times are skipped.

  ``None`` when fewer than two distinct lengths have a time.
  """
  pairs = [(n, t) for n, t in zip(lengths, times) if t is not None and t > 0]
  if len({n for n, _ in pairs}) < 2:
    return None
  log_n = np.log([n for n, _ in pairs])
  log_t = np.log([t for _, t in pairs])
  return float(np.polyfit(log_n, log_t, 1)[0])


def _ms(seconds: Optional[float]) -> str:
  return "OOM" if seconds is None else f"{seconds * 1e3:.2f}"


def _exponent(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value:.2f}"


def run_table(bench: LayerBench, lengths: Sequence[int], warmup: int, steps: int, repeats: int,
              emit: Callable[[str], None] = print) -> list[dict]:
  """Times both blocks at every length, printing the table row by row; returns the rows.

  Each row: ``{"length", "bigs", "attention"}`` with seconds per step (``None``
  for out of memory).
  """
  params = {}
  rows = []
  emit(f"{'L':>6}{'BiGS ms':>12}{'attention ms':>15}{'attn/BiGS':>11}")
  for length in lengths:
    row = {"length": length}
    for mixer in MIXERS:
      row[mixer], count = time_layer(bench, mixer, length, warmup, steps, repeats)
      if count is not None:
        params[mixer] = count
    ratio = (f"{row['attention'] / row['bigs']:.2f}x"
             if row["bigs"] is not None and row["attention"] is not None else "n/a")
    emit(f"{length:>6}{_ms(row['bigs']):>12}{_ms(row['attention']):>15}{ratio:>11}")
    rows.append(row)
  if params:
    emit("parameters per block: " + ", ".join(f"{m} {params[m]:,}" for m in MIXERS if m in params))
  return rows


def report_exponents(rows: Sequence[dict], fit_from: int,
                     emit: Callable[[str], None] = print) -> dict[str, dict[str, Optional[float]]]:
  """Prints and returns the growth exponents over lengths >= ``fit_from``, all, and the last two."""
  all_lengths = [row["length"] for row in rows]
  long_lengths = [n for n in all_lengths if n >= fit_from]
  last_two = sorted(all_lengths)[-2:]
  fits = {"long": long_lengths, "all": all_lengths, "last two": last_two}
  result = {}
  emit("growth exponent (slope of log time vs log L):")
  for name, used in fits.items():
    result[name] = {}
    cells = []
    for mixer in MIXERS:
      times = [row[mixer] for row in rows if row["length"] in used]
      result[name][mixer] = growth_exponent(used, times)
      cells.append(f"{mixer} {_exponent(result[name][mixer])}")
    label = {"long": f"L >= {fit_from}", "all": "all L", "last two": "two longest"}[name]
    emit(f"  {label:<12} (L = {', '.join(map(str, used)) or 'none'}): " + ", ".join(cells))
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                      help="comma-separated sequence lengths")
  parser.add_argument("--hidden", type=int, default=768, help="d_model of both blocks")
  parser.add_argument("--d_ff", type=int, default=None,
                      help="MLP width (attention) and value/gate width (BiGS); default 4 * hidden")
  parser.add_argument("--head_dim", type=int, default=64, help="heads = hidden // head_dim")
  parser.add_argument("--state_size", type=int, default=64, help="S4D complex states (BiGS)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--steps", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--fit_from", type=int, default=512,
                      help="the 'long' exponent fit uses the lengths >= this")
  parser.add_argument("--smoke", action="store_true",
                      help="hidden 32, lengths 16,32,64, one repeat: checks the code paths")
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
  bench = LayerBench(d_model=args.hidden, d_ff=args.d_ff, head_dim=args.head_dim,
                     state_size=args.state_size, batch_size=args.batch, dtype=args.dtype)
  warmup, steps, repeats, fit_from = args.warmup, args.steps, args.repeats, args.fit_from
  if args.smoke:
    lengths, fit_from = list(SMOKE_LENGTHS), SMOKE_LENGTHS[1]
    bench = dataclasses.replace(bench, d_model=32, d_ff=None, head_dim=32, state_size=8)
    warmup, steps, repeats = 1, 1, 1
  device = jax.devices()[0]
  print(f"jax {jax.__version__}, flax {flax.__version__} on {device.platform} "
        f"({device.device_kind}, {jax.device_count()} device), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print(f"one block each: d_model {bench.d_model}, d_ff {bench.resolved_d_ff}, attention "
        f"{bench.num_heads} heads x {bench.d_model // bench.num_heads}, S4D state "
        f"{bench.state_size}, batch {bench.batch_size}, {bench.dtype}; forward+backward "
        f"(grad w.r.t. params and input), median of {repeats} x {steps} step(s) after "
        f"{warmup} warmup\n")
  rows = run_table(bench, lengths, warmup, steps, repeats)
  report_exponents(rows, fit_from)


if __name__ == "__main__":
  main()
