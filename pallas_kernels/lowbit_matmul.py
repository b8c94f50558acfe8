"""Low-bit matmul kernels in Pallas: W8A8 int8 and packed ternary (BitNet b1.58).

Two kernels, each with a pure-jnp reference that defines the expected result
and with the quantizers that produce its inputs.

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

Tiling
  Both kernels run on a 2-D grid ``(M / block_m, N / block_n)``; each program
  owns one ``[block_m, block_n]`` output tile, receives the full K extent of
  its activation rows and weight columns, and walks K in ``block_k`` steps
  with a ``fori_loop``, keeping the accumulator in registers. The K loop sits
  inside the kernel (rather than on a grid axis) because the Triton GPU
  backend gives every grid program its own output and cannot accumulate
  across programs. The ternary kernel reads a ``[block_k / 4, block_n]`` byte
  tile per step and, for each of the four bit planes ``s``, multiplies the
  decoded ``[block_k / 4, block_n]`` plane by the activation columns
  ``k0 + s, k0 + s + 4, ...`` (a stride-4 slice of the activation tile), so
  no interleaving shuffle of the decoded weights is needed. With per-group
  scales ``block_k`` must divide ``group_size`` (the wrapper uses
  ``group_size`` itself when ``block_k`` does not divide it) so that each K
  step lies in one group.

  Shapes that are not multiples of the blocks are zero-padded by the wrappers
  and the result sliced back; zero activations, zero weight codes and unit
  scales in the padding contribute nothing. Blocks larger than a (padded)
  dimension are shrunk to the next power of two that covers it (at least 16,
  the smallest tile a GPU tensor-core dot accepts).

Backends
  On GPU the kernels lower through Pallas's Triton backend; there the tile
  sizes seen by the dots should be powers of two (``block_m``, ``block_n``,
  ``block_k`` for int8 and ``block_k / 4`` for ternary) and at least 16. On
  CPU there is no Pallas compiler: ``interpret=None`` (the default) runs the
  kernels in Pallas interpret mode whenever the default backend is CPU. That
  mode exists so the tests can check the kernels' indexing and arithmetic
  against the references; it is slow and not meant for real workloads.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels import _tiling


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _fit_block(block: int, dim: int) -> int:
  """Shrinks ``block`` to the power of two covering ``dim`` (>= 16), if smaller.

  Keeps small inputs from being padded up to a large default tile, while a
  caller's explicit block that is already smaller than the dimension is kept.
  """
  if block <= 0:
    raise ValueError(f"Block sizes must be positive, got {block}.")
  return min(block, _tiling.covering_pow2(dim))


def _pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Zero-pads ``x`` at the end of each axis up to ``shape``."""
  pads = [(0, t - s) for s, t in zip(x.shape, shape)]
  if all(p == (0, 0) for p in pads):
    return x
  return jnp.pad(x, pads)


# ---------------------------------------------------------------------------
# Quantizers
# ---------------------------------------------------------------------------


def quantize_rows_absmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-row int8 quantization: ``x ~= x_q * scale[:, None]``.

  ``scale = max|x[m, :]| / 127`` so each row's largest magnitude maps to
  +-127 (-128 is never used, keeping the grid symmetric). An all-zero row
  gets scale 0 and codes 0 instead of dividing by zero.

  Args:
    x: ``[M, K]`` floating-point activations.

  Returns:
    ``(x_q, scale)``: int8 ``[M, K]`` codes and float32 ``[M]`` scales.
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"Expected a 2-D array, got shape {x.shape}.")
  scale = jnp.max(jnp.abs(x), axis=1) / 127.0
  safe = jnp.where(scale > 0, scale, 1.0)
  x_q = jnp.clip(jnp.round(x / safe[:, None]), -127, 127).astype(jnp.int8)
  return x_q, scale.astype(jnp.float32)


def quantize_columns_absmax(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-column int8 quantization: ``w ~= w_q * scale[None, :]``.

  The column-wise twin of :func:`quantize_rows_absmax`, for ``[K, N]``
  weights whose output channels are columns.

  Returns:
    ``(w_q, scale)``: int8 ``[K, N]`` codes and float32 ``[N]`` scales.
  """
  w = jnp.asarray(w)
  if w.ndim != 2:
    raise ValueError(f"Expected a 2-D array, got shape {w.shape}.")
  w_q_t, scale = quantize_rows_absmax(w.T)
  return w_q_t.T, scale


def quantize_ternary_absmean(
    w: jax.Array, eps: float = 1e-5, group_size: Optional[int] = None
) -> tuple[jax.Array, jax.Array]:
  """BitNet b1.58 absmean quantization to {-1, 0, +1}.

  ``w_t = RoundClip(w / (mean|w| + eps), -1, 1)`` with ``scale = mean|w|``,
  so ``w ~= w_t * scale``. With ``group_size=None`` the mean runs over the
  whole tensor and ``scale`` is a float32 scalar. With a ``group_size`` the
  mean runs, per output column, over each block of ``group_size``
  consecutive rows of K (the last block may be shorter and is averaged over
  its real rows only), and ``scale`` has shape ``[ceil(K / group_size), N]``,
  the layout :func:`ternary_matmul` takes. All-zero weights give codes 0 and
  scale 0 (``eps`` keeps the division finite).

  Args:
    w: ``[K, N]`` floating-point weights.
    eps: added to the mean before dividing.
    group_size: rows of K per scale, or None for one per-tensor scale.

  Returns:
    ``(w_ternary, scale)``: int8 ``[K, N]`` in {-1, 0, 1} and float32 scale.
  """
  w = jnp.asarray(w, jnp.float32)
  if w.ndim != 2:
    raise ValueError(f"Expected a 2-D array, got shape {w.shape}.")
  k, n = w.shape
  if group_size is None:
    scale = jnp.mean(jnp.abs(w))
    w_t = jnp.clip(jnp.round(w / (scale + eps)), -1, 1).astype(jnp.int8)
    return w_t, scale.astype(jnp.float32)
  if group_size <= 0:
    raise ValueError(f"group_size must be positive, got {group_size}.")
  num_groups = -(-k // group_size)
  padded = _pad_to(jnp.abs(w), (num_groups * group_size, n))
  sums = padded.reshape(num_groups, group_size, n).sum(axis=1)
  counts = np.minimum(group_size, k - group_size * np.arange(num_groups))
  scale = sums / jnp.asarray(counts, jnp.float32)[:, None]
  per_row = jnp.repeat(scale, group_size, axis=0)[:k]
  w_t = jnp.clip(jnp.round(w / (per_row + eps)), -1, 1).astype(jnp.int8)
  return w_t, scale.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Ternary packing
# ---------------------------------------------------------------------------

# Code of each ternary value in its 2-bit field (see the module docstring).
_CODE_PLUS_ONE = 1
_CODE_MINUS_ONE = 2


def _decode_codes(codes: jax.Array, dtype) -> jax.Array:
  """Maps 2-bit codes (0, 1, 2) to (0, +1, -1) without branches."""
  codes = codes.astype(jnp.int32)
  return ((codes & 1) - (codes >> 1)).astype(dtype)


def pack_ternary(w_ternary: jax.Array) -> jax.Array:
  """Packs a ``[K, N]`` ternary matrix into ``uint8[ceil(K / 4), N]``.

  Four weights per byte along K: row ``4r + s`` goes to bits ``2s..2s+1`` of
  byte row ``r``, coded 0 -> 0, +1 -> 1, -1 -> 2 (module docstring). K need
  not be a multiple of 4; the missing rows of the last byte are code 0.

  Raises:
    ValueError: if ``w_ternary`` is not 2-D, or (for concrete, non-traced
      inputs) holds a value outside {-1, 0, 1}.
  """
  w = jnp.asarray(w_ternary)
  if w.ndim != 2:
    raise ValueError(f"Expected a 2-D [K, N] array, got shape {w.shape}.")
  try:
    values = np.asarray(w)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    values = None  # traced (under jit): values cannot be checked here
  if values is not None:
    bad = ~np.isin(values, (-1, 0, 1))
    if bad.any():
      found = np.unique(values[bad])[:8]
      raise ValueError(
          "pack_ternary expects values in {-1, 0, 1}; found "
          f"{found.tolist()} at {int(bad.sum())} position(s)."
      )
  k, n = w.shape
  kq = -(-k // 4)
  codes = jnp.where(
      w == 1, _CODE_PLUS_ONE, jnp.where(w == -1, _CODE_MINUS_ONE, 0)
  ).astype(jnp.uint8)
  codes = _pad_to(codes, (4 * kq, n)).reshape(kq, 4, n)
  packed = codes[:, 0]
  for s in range(1, 4):
    packed = packed | (codes[:, s] << (2 * s))
  return packed


def unpack_ternary(packed: jax.Array, k: int) -> jax.Array:
  """Inverse of :func:`pack_ternary`: ``uint8[ceil(k/4), N] -> int8[k, N]``."""
  packed = jnp.asarray(packed)
  if packed.ndim != 2 or packed.dtype != jnp.uint8:
    raise ValueError(
        f"Expected a 2-D uint8 array, got {packed.dtype} {packed.shape}."
    )
  if packed.shape[0] != -(-k // 4):
    raise ValueError(
        f"{packed.shape[0]} packed rows do not hold k={k} rows "
        f"(expected ceil(k/4) = {-(-k // 4)})."
    )
  shifts = jnp.arange(4, dtype=jnp.uint8) * 2
  codes = (packed[:, None, :] >> shifts[None, :, None]) & 3
  w = _decode_codes(codes, jnp.int8)
  return w.reshape(-1, packed.shape[1])[:k]


# ---------------------------------------------------------------------------
# W8A8 int8 matmul
# ---------------------------------------------------------------------------


def int8_matmul_reference(
    x_q: jax.Array,
    w_q: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype=jnp.bfloat16,
) -> jax.Array:
  """Pure-jnp W8A8 matmul: exact int32 dot, then row and column scales."""
  acc = jax.lax.dot(x_q, w_q, preferred_element_type=jnp.int32)
  out = (
      acc.astype(jnp.float32)
      * x_scale.astype(jnp.float32)[:, None]
      * w_scale.astype(jnp.float32)[None, :]
  )
  return out.astype(out_dtype)


def _int8_kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, block_k, num_k):
  """One ``[block_m, block_n]`` output tile: int32 sum over K tiles, then scale."""

  def body(t, acc):
    start = pl.multiple_of(t * block_k, block_k)
    x = x_ref[:, pl.ds(start, block_k)]
    w = w_ref[pl.ds(start, block_k), :]
    return acc + jnp.dot(x, w, preferred_element_type=jnp.int32)

  acc = jnp.zeros(o_ref.shape, jnp.int32)
  acc = jax.lax.fori_loop(0, num_k, body, acc)
  out = (
      acc.astype(jnp.float32)
      * xs_ref[...][:, None]
      * ws_ref[...][None, :]
  )
  o_ref[...] = out.astype(o_ref.dtype)


def int8_matmul(
    x_q: jax.Array,
    w_q: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    *,
    out_dtype=jnp.bfloat16,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 64,
    interpret: Optional[bool] = None,
) -> jax.Array:
  """W8A8 matmul in Pallas; same result as :func:`int8_matmul_reference`.

  Args:
    x_q: int8 ``[M, K]`` activations.
    w_q: int8 ``[K, N]`` weights.
    x_scale: float32 ``[M]`` per-row activation scales.
    w_scale: float32 ``[N]`` per-column weight scales.
    out_dtype: dtype of the scaled output.
    block_m, block_n, block_k: tile sizes (shrunk for small inputs).
    interpret: Pallas interpret mode; None means "on CPU only".

  Returns:
    ``[M, N]`` array of ``out_dtype``.
  """
  m, k = x_q.shape
  k2, n = w_q.shape
  if k != k2:
    raise ValueError(f"Contraction mismatch: x {x_q.shape}, w {w_q.shape}.")
  if x_q.dtype != jnp.int8 or w_q.dtype != jnp.int8:
    raise ValueError(f"Expected int8 inputs, got {x_q.dtype}, {w_q.dtype}.")
  if x_scale.shape != (m,) or w_scale.shape != (n,):
    raise ValueError(
        f"Expected x_scale [{m}] and w_scale [{n}], got {x_scale.shape} and "
        f"{w_scale.shape}."
    )
  bm, bn, bk = _fit_block(block_m, m), _fit_block(block_n, n), _fit_block(
      block_k, k)
  mp, np_, kp = _tiling.round_up(m, bm), _tiling.round_up(n, bn), _tiling.round_up(k, bk)
  x_p = _pad_to(x_q, (mp, kp))
  w_p = _pad_to(w_q, (kp, np_))
  xs_p = _pad_to(x_scale.astype(jnp.float32), (mp,))
  ws_p = _pad_to(w_scale.astype(jnp.float32), (np_,))

  kernel = lambda *refs: _int8_kernel(*refs, block_k=bk, num_k=kp // bk)
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(mp // bm, np_ // bn),
      in_specs=[
          pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
          pl.BlockSpec((kp, bn), lambda i, j: (0, j)),
          pl.BlockSpec((bm,), lambda i, j: (i,)),
          pl.BlockSpec((bn,), lambda i, j: (j,)),
      ],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      interpret=_tiling.resolve_interpret(interpret),
      name="int8_matmul",
  )(x_p, w_p, xs_p, ws_p)
  return out[:m, :n]


# ---------------------------------------------------------------------------
# Ternary matmul
# ---------------------------------------------------------------------------


def _group_scales(
    scale: jax.Array, k: int, n: int, group_size: Optional[int]
) -> tuple[jax.Array, int]:
  """Normalizes ``scale`` to ``float32[num_groups, N]`` plus the group size.

  A per-tensor scale becomes one group spanning all of K.
  """
  scale = jnp.asarray(scale, jnp.float32)
  if group_size is None:
    if scale.size != 1:
      raise ValueError(
          "Without group_size the scale must be per-tensor (one value), got "
          f"shape {scale.shape}."
      )
    return jnp.broadcast_to(scale.reshape(1, 1), (1, n)), k
  if group_size <= 0 or group_size % 4:
    raise ValueError(
        f"group_size must be a positive multiple of 4 (whole packed bytes), "
        f"got {group_size}."
    )
  num_groups = -(-k // group_size)
  if scale.shape != (num_groups, n):
    raise ValueError(
        f"Per-group scale must have shape [ceil(K/group_size), N] = "
        f"[{num_groups}, {n}], got {scale.shape}."
    )
  return scale, group_size


def ternary_matmul_reference(
    x: jax.Array,
    w_packed: jax.Array,
    scale: jax.Array,
    *,
    k: int,
    group_size: Optional[int] = None,
    x_scale: Optional[jax.Array] = None,
    out_dtype=jnp.float32,
) -> jax.Array:
  """Pure-jnp ternary matmul: unpack the weights, then per-group dots.

  int8 activations are summed exactly in int32 within each group, float
  activations in float32; scaled groups are added in float32 in group order,
  then multiplied by ``x_scale`` (the kernel's order).
  """
  m = x.shape[0]
  w = unpack_ternary(w_packed, k)
  n = w.shape[1]
  scales, gsize = _group_scales(scale, k, n, group_size)
  integer = jnp.issubdtype(x.dtype, jnp.integer)
  acc_dtype = jnp.int32 if integer else jnp.float32
  w = w.astype(jnp.int8 if integer else x.dtype)
  out = jnp.zeros((m, n), jnp.float32)
  for g in range(scales.shape[0]):
    lo, hi = g * gsize, min(k, (g + 1) * gsize)
    part = jax.lax.dot(
        x[:, lo:hi], w[lo:hi], preferred_element_type=acc_dtype,
        precision=jax.lax.Precision.HIGHEST,
    )
    out = out + part.astype(jnp.float32) * scales[g][None, :]
  if x_scale is not None:
    out = out * jnp.asarray(x_scale, jnp.float32)[:, None]
  return out.astype(out_dtype)


def _ternary_kernel(
    x_ref, p_ref, s_ref, xs_ref, o_ref, *, block_k, steps_per_group,
    num_groups, acc_dtype, w_dtype,
):
  """One output tile: per group, sum decoded bit planes x K steps, then scale.

  ``p_ref`` holds packed bytes ``[K / 4, block_n]``; each K step of
  ``block_k`` rows reads ``block_k / 4`` byte rows and multiplies bit plane
  ``s`` by activation columns ``k0 + s, k0 + s + 4, ...``.
  """
  bq = block_k // 4
  tile_shape = o_ref.shape

  def k_step(t, acc):
    k0 = pl.multiple_of(t * block_k, block_k)
    q0 = pl.multiple_of(t * bq, bq)
    packed = p_ref[pl.ds(q0, bq), :].astype(jnp.int32)
    for s in range(4):
      w = _decode_codes((packed >> (2 * s)) & 3, w_dtype)
      x = x_ref[:, pl.ds(k0 + s, bq, stride=4)]
      acc = acc + jnp.dot(x, w, preferred_element_type=acc_dtype)
    return acc

  def group_step(g, out):
    first = g * steps_per_group
    acc = jax.lax.fori_loop(
        first, first + steps_per_group, k_step,
        jnp.zeros(tile_shape, acc_dtype),
    )
    group_scale = s_ref[pl.ds(g, 1), :]
    return out + acc.astype(jnp.float32) * group_scale

  out = jax.lax.fori_loop(
      0, num_groups, group_step, jnp.zeros(tile_shape, jnp.float32)
  )
  out = out * xs_ref[...][:, None]
  o_ref[...] = out.astype(o_ref.dtype)


def ternary_matmul(
    x: jax.Array,
    w_packed: jax.Array,
    scale: jax.Array,
    *,
    k: int,
    group_size: Optional[int] = None,
    x_scale: Optional[jax.Array] = None,
    out_dtype=jnp.float32,
    block_m: int = 64,
    block_n: int = 128,
    block_k: int = 256,
    interpret: Optional[bool] = None,
) -> jax.Array:
  """Ternary-weight matmul with the weights decoded from 2-bit codes in-kernel.

  Same result as :func:`ternary_matmul_reference` (exactly, for int8
  activations and scales whose partial products are representable).

  Args:
    x: ``[M, K]`` activations, int8 or bfloat16/float32.
    w_packed: ``uint8[ceil(K/4), N]`` from :func:`pack_ternary`.
    scale: float32 per-tensor scalar, or ``[ceil(K/group_size), N]`` with
      ``group_size``.
    k: the unpacked K (the packed rows only give it up to a multiple of 4).
    group_size: rows of K per scale (a multiple of 4), or None.
    x_scale: optional float32 ``[M]`` per-row activation scale.
    out_dtype: output dtype.
    block_m, block_n, block_k: tile sizes; ``block_k`` is a multiple of 4
      and, with groups, is replaced by ``group_size`` if it does not divide it.
    interpret: Pallas interpret mode; None means "on CPU only".

  Returns:
    ``[M, N]`` array of ``out_dtype``.
  """
  if x.ndim != 2 or x.shape[1] != k:
    raise ValueError(f"Expected x of shape [M, {k}], got {x.shape}.")
  if w_packed.dtype != jnp.uint8 or w_packed.shape[0] != -(-k // 4):
    raise ValueError(
        f"Expected uint8 packed weights [{-(-k // 4)}, N], got "
        f"{w_packed.dtype} {w_packed.shape}."
    )
  integer = jnp.issubdtype(x.dtype, jnp.integer)
  if integer and x.dtype != jnp.int8:
    raise ValueError(f"Integer activations must be int8, got {x.dtype}.")
  if not integer and x.dtype not in (jnp.bfloat16, jnp.float32):
    raise ValueError(f"Float activations must be bf16/f32, got {x.dtype}.")
  if block_k <= 0 or block_k % 4:
    raise ValueError(f"block_k must be a positive multiple of 4, got {block_k}.")
  m = x.shape[0]
  n = w_packed.shape[1]
  scales, gsize = _group_scales(scale, k, n, group_size)
  num_groups = scales.shape[0]

  bm, bn = _fit_block(block_m, m), _fit_block(block_n, n)
  if group_size is None:
    bk = _fit_block(block_k, k)
    bk = _tiling.round_up(bk, 4)
    kp = _tiling.round_up(k, bk)
    gsize = kp  # the single group spans the padded K
  else:
    bk = block_k if gsize % block_k == 0 else gsize
    kp = num_groups * gsize
  mp, np_ = _tiling.round_up(m, bm), _tiling.round_up(n, bn)

  x_p = _pad_to(x, (mp, kp))
  p_p = _pad_to(w_packed, (kp // 4, np_))
  s_p = _pad_to(scales, (num_groups, np_))
  if x_scale is None:
    xs = jnp.ones((m,), jnp.float32)
  else:
    xs = jnp.asarray(x_scale, jnp.float32)
    if xs.shape != (m,):
      raise ValueError(f"x_scale must have shape [{m}], got {xs.shape}.")
  xs_p = _pad_to(xs, (mp,))

  kernel = lambda *refs: _ternary_kernel(
      *refs,
      block_k=bk,
      steps_per_group=gsize // bk,
      num_groups=num_groups,
      acc_dtype=jnp.int32 if integer else jnp.float32,
      w_dtype=jnp.int8 if integer else x.dtype,
  )
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(mp // bm, np_ // bn),
      in_specs=[
          pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
          pl.BlockSpec((kp // 4, bn), lambda i, j: (0, j)),
          pl.BlockSpec((num_groups, bn), lambda i, j: (0, j)),
          pl.BlockSpec((bm,), lambda i, j: (i,)),
      ],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      interpret=_tiling.resolve_interpret(interpret),
      name="ternary_matmul",
  )(x_p, p_p, s_p, xs_p)
  return out[:m, :n]
