"""Kernel benchmark: attention backends, and low-bit matmuls against bfloat16.

Four tables, all measured in one run so that ratios compare like with like:

1. **Attention time.** Forward and forward+backward of
   ``lmlab.models.attention.dot_product_attention`` with each backend
   (``xla``, ``pallas``, ``cudnn``) on bfloat16 ``q, k, v`` of shape
   ``[batch, L, heads, head_dim]``, ``batch x heads`` fixed while ``L``
   grows. Achieved TFLOP/s counts the useful matmul work only:
   ``4 * batch * heads * L^2 * head_dim`` for the forward (halved with
   ``--causal``) and 3.5 times that for forward+backward (the backward has
   five ``L x L x d`` matmuls to the forward's two), the convention of the
   FlashAttention papers, so the flash kernels' recomputation is not counted
   as work. ``vs xla`` and ``vs cudnn`` are time ratios (> 1: this backend is
   faster). A backend that cannot run a size (out of memory) prints ``OOM``.
2. **Attention memory.** XLA's compiled memory analysis of the
   forward+backward function: temporary bytes (what the step allocates beyond
   its inputs and outputs) for ``xla`` and ``pallas`` at every length, and
   bytes per token. Flat bytes per token means memory linear in ``L``; the
   ``xla`` backend materialises ``[batch, heads, L, L]`` float32 scores and
   grows quadratically. Compilation only, so it also runs on CPU at full
   sizes.
3. **int8 vs bfloat16 matmul** on ``N x N x N`` squares: the Pallas W8A8
   kernel (int8 x int8 -> int32, per-row and per-column scales applied,
   bfloat16 out) against ``jnp.dot`` in bfloat16 (cuBLAS on GPU), with XLA's
   own int8 dot as a second reference.
4. **Ternary weights**: bytes of a ``K x N`` weight stored as bfloat16 vs
   packed 2-bit ternary (plus its float32 scale), and the time of a
   matrix-vector product (``M = --matvec_rows`` rows, decode-like) with
   each: bfloat16 ``jnp.dot`` vs the Pallas kernel decoding the packed
   weights in-kernel.

On a GPU the defaults are the issue's sizes (``L`` 512..16384, head dims 64
and 128, squares 4096 and 8192). On CPU, Pallas runs in interpret mode, so
the defaults shrink to tiny sizes and the times only prove the code paths
run (interpret mode is an emulator, not a kernel); the memory table still
uses real lengths since it only compiles.

Needs only jax and flax (no gin/seqio), so it runs on a bare GPU machine::

  python experiments/benchmarks/bench_kernels.py
  python experiments/benchmarks/bench_kernels.py --lengths 1024,4096 --head_dims 128 --causal
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from lmlab.models import attention  # noqa: E402
from pallas_kernels import lowbit_matmul as lowbit  # noqa: E402
from timing import time_steps  # noqa: E402

BACKENDS = ("xla", "pallas", "cudnn")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What to measure; ``for_platform`` picks the issue's sizes on GPU/TPU and tiny ones on CPU."""
  lengths: tuple[int, ...]
  memory_lengths: tuple[int, ...]
  head_dims: tuple[int, ...]
  batch: int
  heads: int
  squares: tuple[int, ...]
  ternary_shape: tuple[int, int]
  matvec_rows: int
  warmup: int
  steps: int
  repeats: int

  @classmethod
  def for_platform(cls, platform: str) -> "Sizes":
    if platform == "cpu":
      return cls(lengths=(128, 256), memory_lengths=(512, 1024, 2048, 4096), head_dims=(64,),
                 batch=1, heads=2, squares=(256,), ternary_shape=(512, 512), matvec_rows=1,
                 warmup=1, steps=1, repeats=1)
    return cls(lengths=(512, 1024, 2048, 4096, 8192, 16384),
               memory_lengths=(512, 1024, 2048, 4096, 8192),
               head_dims=(64, 128), batch=2, heads=16, squares=(4096, 8192),
               ternary_shape=(8192, 8192), matvec_rows=1, warmup=3, steps=10, repeats=5)


def _is_oom(error: Exception) -> bool:
  text = str(error).lower()
  return "resource_exhausted" in text or "out of memory" in text or "oom" in text


def _compile(fn: Callable, *args):
  return jax.jit(fn).lower(*args).compile()


def _timed(compiled, args, sizes: Sizes) -> Optional[float]:
  """Median seconds per call, or None when the call runs out of memory."""
  try:
    return time_steps(lambda: jax.block_until_ready(compiled(*args)), sizes.warmup, sizes.steps,
                      sizes.repeats)
  except Exception as error:  # noqa: BLE001 - device OOM surfaces as a runtime error
    if _is_oom(error):
      return None
    raise


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


def attention_fns(backend: str, causal: bool):
  """(forward, forward+backward) callables of ``q, k, v[, do]`` for one backend."""
  def forward(q, k, v):
    return attention.dot_product_attention(q, k, v, causal=causal, backend=backend)

  def forward_backward(q, k, v, do):
    out, vjp = jax.vjp(forward, q, k, v)
    return out, vjp(do)

  return forward, forward_backward


def attention_inputs(sizes: Sizes, length: int, head_dim: int, seed: int = 0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = (sizes.batch, length, sizes.heads, head_dim)
  return tuple(jax.random.normal(k, shape, jnp.float32).astype(jnp.bfloat16) for k in keys)


def attention_flops(sizes: Sizes, length: int, head_dim: int, causal: bool) -> float:
  forward = 4.0 * sizes.batch * sizes.heads * length * length * head_dim
  return forward / 2 if causal else forward


def attention_time_rows(sizes: Sizes, causal: bool, backends: Sequence[str],
                        on_row: Optional[Callable[[list[dict]], None]] = None) -> list[dict]:
  """Times every (head dim, length, backend); ``on_row(rows so far)`` after each one."""
  rows = []
  for head_dim in sizes.head_dims:
    for length in sizes.lengths:
      q, k, v, do = attention_inputs(sizes, length, head_dim)
      flops = attention_flops(sizes, length, head_dim, causal)
      for backend in backends:
        forward, forward_backward = attention_fns(backend, causal)
        row = dict(L=length, d=head_dim, backend=backend, fwd=None, fwd_bwd=None)
        try:
          row["fwd"] = _timed(_compile(forward, q, k, v), (q, k, v), sizes)
          row["fwd_bwd"] = _timed(_compile(forward_backward, q, k, v, do), (q, k, v, do), sizes)
        except Exception as error:  # noqa: BLE001
          if not _is_oom(error):
            raise
        row["fwd_tflops"] = flops / row["fwd"] / 1e12 if row["fwd"] else None
        row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd"] / 1e12 if row["fwd_bwd"] else None
        rows.append(row)
        if on_row is not None:
          on_row(rows)
  return rows


def _ratio(base: Optional[float], this: Optional[float]) -> str:
  return f"{base / this:6.2f}x" if base and this else "    --"


def _ms(seconds: Optional[float]) -> str:
  return f"{seconds * 1e3:10.3f}" if seconds else "       OOM"


def _tf(value: Optional[float]) -> str:
  return f"{value:8.2f}" if value else "      --"


def format_attention_times(rows: list[dict]) -> list[str]:
  lines = [f"{'L':>6} {'d':>4} {'backend':>8} {'fwd ms':>10} {'TFLOP/s':>8} {'fwd+bwd ms':>10} "
           f"{'TFLOP/s':>8} {'vs xla':>7} {'vs cudnn':>8}"]
  by_key = {(r["L"], r["d"], r["backend"]): r for r in rows}
  for r in rows:
    xla = by_key.get((r["L"], r["d"], "xla"), {}).get("fwd_bwd")
    cudnn = by_key.get((r["L"], r["d"], "cudnn"), {}).get("fwd_bwd")
    lines.append(f"{r['L']:>6} {r['d']:>4} {r['backend']:>8} {_ms(r['fwd'])} "
                 f"{_tf(r['fwd_tflops'])} {_ms(r['fwd_bwd'])} {_tf(r['fwd_bwd_tflops'])} "
                 f"{_ratio(xla, r['fwd_bwd']):>7} {_ratio(cudnn, r['fwd_bwd']):>8}")
  return lines


def markdown_attention_times(rows: list[dict]) -> list[str]:
  lines = ["| L | head dim | backend | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | "
           "vs xla | vs cudnn |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
  by_key = {(r["L"], r["d"], r["backend"]): r for r in rows}
  cell = lambda text: text.strip() or "--"
  for r in rows:
    xla = by_key.get((r["L"], r["d"], "xla"), {}).get("fwd_bwd")
    cudnn = by_key.get((r["L"], r["d"], "cudnn"), {}).get("fwd_bwd")
    lines.append(f"| {r['L']} | {r['d']} | {r['backend']} | {cell(_ms(r['fwd']))} | "
                 f"{cell(_tf(r['fwd_tflops']))} | {cell(_ms(r['fwd_bwd']))} | "
                 f"{cell(_tf(r['fwd_bwd_tflops']))} | {cell(_ratio(xla, r['fwd_bwd']))} | "
                 f"{cell(_ratio(cudnn, r['fwd_bwd']))} |")
  return lines


def temp_bytes(backend: str, sizes: Sizes, length: int, head_dim: int, causal: bool) -> Optional[int]:
  """Temporary bytes XLA plans for one forward+backward call (compilation only)."""
  shape = jax.ShapeDtypeStruct((sizes.batch, length, sizes.heads, head_dim), jnp.bfloat16)
  _, forward_backward = attention_fns(backend, causal)
  compiled = jax.jit(forward_backward).lower(shape, shape, shape, shape).compile()
  stats = compiled.memory_analysis()
  return None if stats is None else int(stats.temp_size_in_bytes)


def format_attention_memory(sizes: Sizes, head_dim: int, causal: bool) -> list[str]:
  lines = [f"{'L':>6} {'xla temp MiB':>13} {'B/token':>10} {'pallas temp MiB':>16} "
           f"{'B/token':>10} {'xla/pallas':>10}"]
  tokens = lambda length: sizes.batch * length
  for length in sizes.memory_lengths:
    xla = temp_bytes("xla", sizes, length, head_dim, causal)
    flash = temp_bytes("pallas", sizes, length, head_dim, causal)
    if xla is None or flash is None:
      lines.append(f"{length:>6}  (this platform reports no memory analysis)")
      continue
    lines.append(f"{length:>6} {xla / 2**20:13.1f} {xla / tokens(length):10.0f} "
                 f"{flash / 2**20:16.1f} {flash / tokens(length):10.0f} "
                 f"{xla / max(flash, 1):9.1f}x")
  return lines


# ---------------------------------------------------------------------------
# Low-bit matmuls
# ---------------------------------------------------------------------------


def matmul_rows(sizes: Sizes, markdown: Optional[list[str]] = None) -> list[str]:
  """Text table of the int8 vs bf16 squares; appends its markdown twin to ``markdown``."""
  lines = [f"{'N':>6} {'bf16 ms':>9} {'TFLOP/s':>8} {'int8 pallas ms':>14} {'TOP/s':>8} "
           f"{'vs bf16':>8} {'int8 xla ms':>11} {'TOP/s':>8}"]
  if markdown is not None:
    markdown += ["| N | bf16 ms | bf16 TFLOP/s | int8 Pallas ms | int8 TOP/s | vs bf16 | "
                 "int8 XLA ms | int8 XLA TOP/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for n in sizes.squares:
    kx, kw = jax.random.split(jax.random.PRNGKey(n))
    x = jax.random.normal(kx, (n, n), jnp.float32)
    w = jax.random.normal(kw, (n, n), jnp.float32)
    x_q, x_scale = lowbit.quantize_rows_absmax(x)
    w_q, w_scale = lowbit.quantize_columns_absmax(w)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    bf16 = _timed(_compile(jnp.dot, xb, wb), (xb, wb), sizes)
    int8_fn = functools.partial(lowbit.int8_matmul, out_dtype=jnp.bfloat16)
    int8 = _timed(_compile(int8_fn, x_q, w_q, x_scale, w_scale), (x_q, w_q, x_scale, w_scale),
                  sizes)
    xla_int8_fn = lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.int32)
    xla_int8 = _timed(_compile(xla_int8_fn, x_q, w_q), (x_q, w_q), sizes)
    flops = 2.0 * n ** 3
    rate = lambda s: flops / s / 1e12 if s else None
    lines.append(f"{n:>6} {_ms(bf16):>9} {_tf(rate(bf16))} {_ms(int8):>14} {_tf(rate(int8))} "
                 f"{_ratio(bf16, int8):>8} {_ms(xla_int8):>11} {_tf(rate(xla_int8))}")
    if markdown is not None:
      cells = (_ms(bf16), _tf(rate(bf16)), _ms(int8), _tf(rate(int8)), _ratio(bf16, int8),
               _ms(xla_int8), _tf(rate(xla_int8)))
      markdown.append(f"| {n} | " + " | ".join(c.strip() or "--" for c in cells) + " |")
  return lines


def ternary_rows(sizes: Sizes, markdown: Optional[list[str]] = None) -> list[str]:
  """Text table of packed ternary vs bf16 weights; appends its markdown twin to ``markdown``."""
  k, n = sizes.ternary_shape
  m = sizes.matvec_rows
  kx, kw = jax.random.split(jax.random.PRNGKey(k + n))
  w = jax.random.normal(kw, (k, n), jnp.float32)
  w_ternary, w_scale = lowbit.quantize_ternary_absmean(w)
  packed = lowbit.pack_ternary(w_ternary)
  x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
  wb = w.astype(jnp.bfloat16)
  bf16_bytes = wb.size * wb.dtype.itemsize
  packed_bytes = packed.size * packed.dtype.itemsize + np.size(w_scale) * 4
  bf16 = _timed(_compile(jnp.dot, x, wb), (x, wb), sizes)
  ternary_fn = functools.partial(lowbit.ternary_matmul, k=k, out_dtype=jnp.bfloat16)
  ternary = _timed(_compile(ternary_fn, x, packed, w_scale), (x, packed, w_scale), sizes)
  if markdown is not None:
    markdown += [f"| weight {k} x {n}, activations [{m}, {k}] bf16 | weight bytes | matvec ms |",
                 "|---|---:|---:|", f"| bfloat16 | {bf16_bytes:,} | {_ms(bf16).strip()} |",
                 f"| ternary 2-bit (Pallas) | {packed_bytes:,} | {_ms(ternary).strip()} |",
                 f"| ratio | {bf16_bytes / packed_bytes:.1f}x | {_ratio(bf16, ternary).strip()} |"]
  return [f"weight {k} x {n}, activations [{m}, {k}] bfloat16",
          f"{'':>14} {'weight bytes':>14} {'matvec ms':>10}",
          f"{'bfloat16':>14} {bf16_bytes:>14,} {_ms(bf16)}",
          f"{'ternary 2-bit':>14} {packed_bytes:>14,} {_ms(ternary)}",
          f"{'ratio':>14} {bf16_bytes / packed_bytes:13.1f}x {_ratio(bf16, ternary):>10}"]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split(",") if part)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", type=_ints, help="attention lengths (comma-separated)")
  parser.add_argument("--memory_lengths", type=_ints, help="lengths of the memory table")
  parser.add_argument("--head_dims", type=_ints, help="attention head dims")
  parser.add_argument("--batch", type=int)
  parser.add_argument("--heads", type=int)
  parser.add_argument("--squares", type=_ints, help="int8 vs bf16 matmul sizes N (N x N x N)")
  parser.add_argument("--ternary_shape", type=_ints, help="K,N of the ternary weight")
  parser.add_argument("--backends", type=lambda s: tuple(s.split(",")), default=BACKENDS)
  parser.add_argument("--causal", action="store_true", help="causal attention (default: bidirectional)")
  parser.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                      help="tables to skip: time,memory,int8,ternary")
  parser.add_argument("--repeats", type=int)
  parser.add_argument("--markdown", default=None,
                      help="also write the time, int8 and ternary tables as markdown here")
  return parser.parse_args(argv)


def sizes_from_args(args: argparse.Namespace) -> Sizes:
  sizes = Sizes.for_platform(jax.default_backend())
  overrides = {name: getattr(args, name) for name in (
      "lengths", "memory_lengths", "head_dims", "batch", "heads", "squares", "ternary_shape",
      "repeats") if getattr(args, name) is not None}
  return dataclasses.replace(sizes, **overrides)


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parse_args(argv)
  sizes = sizes_from_args(args)
  platform = jax.default_backend()
  print(f"devices: {jax.devices()}  jax {jax.__version__}")
  if platform == "cpu":
    print("CPU: Pallas kernels run in interpret mode (an emulator); the times below only show "
          "that every path runs, not kernel speed.")
  mask = "causal" if args.causal else "bidirectional"
  md: list[str] = []

  def write_markdown(title: str, lines: list[str], partial: bool = False) -> None:
    section = ["", f"### {title}", "", *lines]
    if args.markdown:  # rewritten as rows come in, so a cut-off run keeps what it measured
      pathlib.Path(args.markdown).write_text("\n".join(md + section) + "\n")
    if not partial:
      md.extend(section)

  if "time" not in args.skip:
    title = f"attention time: bfloat16, {mask}, batch {sizes.batch} x heads {sizes.heads}"
    print(f"\n== {title} ==")
    rows = attention_time_rows(
        sizes, args.causal, args.backends,
        on_row=lambda done: write_markdown(title, markdown_attention_times(done), partial=True))
    print("\n".join(format_attention_times(rows)))
    write_markdown(title, markdown_attention_times(rows))
  if "memory" not in args.skip:
    head_dim = max(sizes.head_dims)
    print(f"\n== attention memory: forward+backward temporaries (compiled), head_dim {head_dim} ==")
    print("\n".join(format_attention_memory(sizes, head_dim, args.causal)))
  if "int8" not in args.skip:
    print("\n== int8 (W8A8, Pallas) vs bfloat16 matmul, N x N x N ==")
    table: list[str] = []
    print("\n".join(matmul_rows(sizes, table)))
    write_markdown("int8 (W8A8, Pallas) vs bfloat16 matmul, N x N x N", table)
  if "ternary" not in args.skip:
    print("\n== packed ternary vs bfloat16 weights: bytes and matrix-vector time ==")
    table = []
    print("\n".join(ternary_rows(sizes, table)))
    write_markdown("packed ternary vs bfloat16 weights: bytes and matrix-vector time", table)


if __name__ == "__main__":
  main()
