"""Low-bit matmul kernels in Pallas: W8A8 int8 and packed ternary (BitNet b1.58).

Two kernels, each with a pure-jnp reference that defines the expected result
and with the quantizers that produce its inputs. This module documents both
and holds the int8 kernel; the ternary kernel lives in
:mod:`pallas_kernels.lowbit_ternary`, the quantizers, packing and references
in :mod:`pallas_kernels.lowbit_formats`, the per-backend block rules in
:mod:`pallas_kernels.lowbit_layout`; all public names are re-exported here.

W8A8 int8 (:func:`int8_matmul`)
  ``out[m, n] = (sum_k x_q[m, k] * w_q[k, n]) * x_scale[m] * w_scale[n]``
  with ``x_q`` and ``w_q`` int8, the sum accumulated exactly in int32 and the
  two float32 scales applied once to the finished sum, in that order (the
  reference uses the same order, so float32 outputs match bit for bit).
  ``x_scale`` is per row of the activations (dynamic, per token) and
  ``w_scale`` per output column of the weights, as produced by
  :func:`quantize_rows_absmax` and :func:`quantize_columns_absmax`.

Ternary (:func:`ternary_matmul`)
  Weights in {-1, 0, +1} stored at 2 bits each (:func:`pack_ternary`) and
  decoded inside the kernel, so the weight matrix crosses memory at a quarter
  of its int8 size. Activations are either int8 (with an optional per-row
  scale; products summed exactly in int32) or bfloat16/float32 (summed in
  float32). The weight scale is either per tensor (a scalar, as in BitNet
  b1.58) or per group: one float32 per ``group_size`` consecutive rows of K
  and per output column, an array of shape ``[ceil(K / group_size), N]``.
  Each group is summed on its own (exactly, for int8 activations), scaled,
  and the scaled groups are added in float32 in group order:
  ``out = (sum_g acc_g * scale[g, :]) * x_scale[:, None]``.

Packing format
  ``pack_ternary`` maps a ``[K, N]`` ternary matrix to ``uint8[ceil(K/4), N]``.
  Byte ``(r, n)`` holds the weights of rows ``4r .. 4r+3`` of column ``n``;
  row ``4r + s`` sits in bits ``2s .. 2s+1`` (little end first). Codes:
  ``0 -> 0``, ``1 -> +1``, ``2 -> -1`` (code 3 is never written and decodes to
  0). Decoding is branch-free: ``w = (c & 1) - (c >> 1)``. Rows past K in the
  last byte are code 0, so padding never changes a result.

Ternary decode
  A K tile of ``block_k`` rows is ``block_k / 4`` byte rows; bit plane ``s``
  of those bytes holds weight rows ``k0 + s, k0 + s + 4, ...``. Rather than
  reading the matching stride-4 activation columns in the kernel (a strided
  lane gather that Mosaic cannot do and Triton does slowly), the wrapper
  permutes the activation columns within each K tile so that plane ``s``
  meets the contiguous columns ``[s * block_k / 4, (s + 1) * block_k / 4)``.
  The permutation costs one pass over the (small) activations; the packed
  weights are read as stored.

Platforms
  Each kernel has one variant per Pallas backend, chosen when the function
  is lowered (``_tiling.dispatch``): interpret mode on CPU (no Pallas
  compiler there; slow, for checking indexing and arithmetic), Triton on
  NVIDIA/AMD GPUs, Mosaic on TPUs. Default blocks come from the backend of
  the variant, not from the host, so lowering for a GPU from a CPU machine
  uses GPU blocks. Block arguments left as None take those defaults; given
  ones are made legal for the backend (see below) and shrunk for small
  inputs. Shapes that are not multiples of the blocks are zero-padded and
  the result sliced back; zero activations, zero weight codes and zero or
  unit scales in the padding contribute nothing.

  * Interpret and Triton: a 2-D grid ``(M / block_m, N / block_n)``; each
    program receives the full K extent of its activation rows and weight
    columns and walks K in ``block_k`` steps with a ``fori_loop``,
    accumulating in registers (Triton gives every program its own output
    and cannot accumulate across programs). For Triton every tile a dot
    sees must be a power of two and at least 16, so blocks are rounded up to
    powers of two, ``block_k / 4 >= 16`` for ternary; ``num_warps`` and
    ``num_stages`` are set per kernel (chosen for Hopper-class GPUs, not yet
    tuned by measurement). The interpret variant keeps the caller's blocks
    as given, so tests can use tiny tiles.
  * Mosaic TPU: a 3-D grid ``(M / block_m, N / block_n, K / block_k)`` with K
    an ``"arbitrary"`` (sequential) axis and the accumulators in VMEM
    scratch. Blocks obey the TPU tiling: N and K blocks are multiples of 128
    lanes; M blocks are multiples of 32 rows for int8 activations (an (8,
    128) tile of 32-bit words packs 32 int8 rows; the packed ternary bytes
    then have ``block_k / 4`` rows, a multiple of 32 too), 16 for bfloat16
    and 8 for float32. Scales travel as 2-D ``[M, 1]`` / ``[1, N]`` /
    ``[groups, r, N]`` arrays (rank-1 blocks are illegal there). The four
    decoded bit planes are stacked into one ``[block_k, block_n]`` tile for
    a single MXU dot.

  Per-group scales on the accelerator layouts: a K step must not straddle
  a group. Groups that are a multiple of the K granule (128 on TPU, 64 on
  Triton) are walked in whole K steps; smaller groups are rounded up to a
  power of two that divides the granule and several groups share one K
  step, each summed with the activations of the other groups masked to zero
  (exact, at ``granule / group`` dots per step); other group sizes are
  zero-padded per group to a legal size in the wrapper, which copies the
  packed weights on every call (slow; prefer group sizes that are multiples
  of 128). No combination of dtype, scale layout or shape is refused.
"""


from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import _tiling
from pallas_kernels import lowbit_layout as lay
from pallas_kernels.lowbit_formats import (  # re-exported
    int8_matmul_reference, pack_ternary, pad_to, quantize_columns_absmax,
    quantize_rows_absmax, quantize_ternary_absmean, ternary_matmul_reference,
    unpack_ternary)
from pallas_kernels.lowbit_ternary import (  # re-exported
    ternary_matmul, ternary_matmul_interpreted_as)

__all__ = [
    "int8_matmul", "int8_matmul_interpreted_as", "int8_matmul_reference",
    "pack_ternary", "quantize_columns_absmax", "quantize_rows_absmax",
    "quantize_ternary_absmean", "ternary_matmul", "ternary_matmul_interpreted_as",
    "ternary_matmul_reference", "unpack_ternary",
]

INTERPRET, TRITON, MOSAIC_TPU = _tiling.INTERPRET, _tiling.TRITON, _tiling.MOSAIC_TPU

# ---------------------------------------------------------------------------
# W8A8 int8 matmul
# ---------------------------------------------------------------------------


def _int8_loop_kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, block_k, num_k):
  """Interpret/Triton: one output tile, int32 sum over K tiles, then scale."""

  def body(t, acc):
    start = pl.multiple_of(t * block_k, block_k)
    x = x_ref[:, pl.ds(start, block_k)]
    w = w_ref[pl.ds(start, block_k), :]
    return acc + jnp.dot(x, w, preferred_element_type=jnp.int32)

  acc = jax.lax.fori_loop(0, num_k, body, jnp.zeros(o_ref.shape, jnp.int32))
  out = acc.astype(jnp.float32) * xs_ref[...][:, None] * ws_ref[...][None, :]
  o_ref[...] = out.astype(o_ref.dtype)


def _int8_tpu_kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, acc_ref):
  """Mosaic: one K step of one output tile; scales applied at the last step."""
  t = pl.program_id(2)

  @pl.when(t == 0)
  def _():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.int32)

  acc_ref[...] += jnp.dot(x_ref[...], w_ref[...], preferred_element_type=jnp.int32)

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    out = acc_ref[...].astype(jnp.float32) * xs_ref[...] * ws_ref[...]
    o_ref[...] = out.astype(o_ref.dtype)


def _int8_variant(backend, blocks, out_dtype, interpret):
  """``fn(x_q, w_q, x_scale, w_scale)`` laid out for ``backend``."""

  def run(x_q, w_q, x_scale, w_scale):
    (m, k), n = x_q.shape, w_q.shape[1]
    bm, bn, bk = lay.blocks("int8", backend, blocks)
    rows = lay.tpu_rows((jnp.int8, out_dtype))
    bm = lay.fit(backend, bm, m, rows)
    bn = lay.fit(backend, bn, n, _tiling.TPU_LANES)
    bk = lay.fit(backend, bk, k, _tiling.TPU_LANES)
    mp, np_, kp = (_tiling.round_up(m, bm), _tiling.round_up(n, bn),
                   _tiling.round_up(k, bk))
    x_p, w_p = pad_to(x_q, (mp, kp)), pad_to(w_q, (kp, np_))
    xs_p = pad_to(x_scale.astype(jnp.float32), (mp,))
    ws_p = pad_to(w_scale.astype(jnp.float32), (np_,))
    common = dict(out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
                  interpret=interpret, name="int8_matmul")
    if backend == MOSAIC_TPU:
      out = pl.pallas_call(
          _int8_tpu_kernel,
          grid=(mp // bm, np_ // bn, kp // bk),
          in_specs=[pl.BlockSpec((bm, bk), lambda i, j, t: (i, t)),
                    pl.BlockSpec((bk, bn), lambda i, j, t: (t, j)),
                    pl.BlockSpec((bm, 1), lambda i, j, t: (i, 0)),
                    pl.BlockSpec((1, bn), lambda i, j, t: (0, j))],
          out_specs=pl.BlockSpec((bm, bn), lambda i, j, t: (i, j)),
          scratch_shapes=[pltpu.VMEM((bm, bn), jnp.int32)],
          compiler_params=lay.compiler_params("int8", backend, 3), **common,
      )(x_p, w_p, xs_p.reshape(mp, 1), ws_p.reshape(1, np_))
    else:
      kernel = lambda *refs: _int8_loop_kernel(*refs, block_k=bk, num_k=kp // bk)
      out = pl.pallas_call(
          kernel,
          grid=(mp // bm, np_ // bn),
          in_specs=[pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
                    pl.BlockSpec((kp, bn), lambda i, j: (0, j)),
                    pl.BlockSpec((bm,), lambda i, j: (i,)),
                    pl.BlockSpec((bn,), lambda i, j: (j,))],
          out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
          compiler_params=lay.compiler_params("int8", backend, 2), **common,
      )(x_p, w_p, xs_p, ws_p)
    return out[:m, :n]

  return run


def _check_int8(x_q, w_q, x_scale, w_scale):
  (m, k), (k2, n) = x_q.shape, w_q.shape
  if k != k2:
    raise ValueError(f"Contraction mismatch: x {x_q.shape}, w {w_q.shape}.")
  if x_q.dtype != jnp.int8 or w_q.dtype != jnp.int8:
    raise ValueError(f"Expected int8 inputs, got {x_q.dtype}, {w_q.dtype}.")
  if x_scale.shape != (m,) or w_scale.shape != (n,):
    raise ValueError(
        f"Expected x_scale [{m}] and w_scale [{n}], got {x_scale.shape} and "
        f"{w_scale.shape}.")


def int8_matmul(
    x_q: jax.Array,
    w_q: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype=jnp.bfloat16,
    block_m: Optional[int] = None,
    block_n: Optional[int] = None,
    block_k: Optional[int] = None,
    interpret: Optional[bool] = None,
) -> jax.Array:
  """W8A8 matmul in Pallas; same result as :func:`int8_matmul_reference`.

  Args:
    x_q: int8 ``[M, K]`` activations.
    w_q: int8 ``[K, N]`` weights.
    x_scale: float32 ``[M]`` per-row activation scales.
    w_scale: float32 ``[N]`` per-column weight scales.
    out_dtype: dtype of the scaled output.
    block_m, block_n, block_k: tile sizes; None takes the platform's
      default. Made legal for the platform and shrunk for small inputs.
    interpret: True runs Pallas interpret mode on every platform; None or
      False compile on GPU/TPU (CPU always interprets).

  Returns:
    ``[M, N]`` array of ``out_dtype``.
  """
  _check_int8(x_q, w_q, x_scale, w_scale)
  blocks = (block_m, block_n, block_k)
  build = lambda backend: _int8_variant(backend, blocks, out_dtype,
                                        backend == INTERPRET)
  return _tiling.dispatch(build, x_q, w_q, x_scale, w_scale, interpret=interpret)


def int8_matmul_interpreted_as(backend: str, x_q, w_q, x_scale, w_scale, *,
                               out_dtype=jnp.bfloat16, block_m=None,
                               block_n=None, block_k=None) -> jax.Array:
  """Runs the ``backend`` variant's layout (blocks, grid, specs) in interpret mode.

  For checking the Triton and TPU layouts' indexing numerically on a CPU
  machine; the arithmetic is the interpreter's, not the accelerator's.
  """
  _check_int8(x_q, w_q, x_scale, w_scale)
  return _int8_variant(backend, (block_m, block_n, block_k), out_dtype,
                       True)(x_q, w_q, x_scale, w_scale)


