"""Formats of the low-bit matmuls: quantizers, ternary packing and references.

Everything here is plain ``jax.numpy`` and defines *what* the Pallas kernels
in :mod:`pallas_kernels.lowbit_matmul` compute: the quantizers that produce
their inputs, the 2-bit packing of ternary weights (a storage format that
checkpoints and serving depend on, so it must not change), and the reference
matmuls whose results the kernels reproduce (bit for bit wherever integer
sums make that possible). The kernels module re-exports all public names;
the format itself is described in its docstring.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
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
  padded = pad_to(jnp.abs(w), (num_groups * group_size, n))
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


def decode_codes(codes: jax.Array, dtype) -> jax.Array:
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
  codes = pad_to(codes, (4 * kq, n)).reshape(kq, 4, n)
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
  w = decode_codes(codes, jnp.int8)
  return w.reshape(-1, packed.shape[1])[:k]


# ---------------------------------------------------------------------------
# References
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


def group_scales(
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
  scales, gsize = group_scales(scale, k, n, group_size)
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


