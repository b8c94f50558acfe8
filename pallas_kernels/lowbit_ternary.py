"""Packed-ternary (BitNet b1.58) matmul kernels in Pallas, one variant per backend.

The format, the arithmetic contract and the per-platform layouts are
described in the :mod:`pallas_kernels.lowbit_matmul` docstring, which
re-exports :func:`ternary_matmul`; this module holds the ternary half so
that no kernel file grows past a readable size.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import _tiling
from pallas_kernels import lowbit_layout as lay
from pallas_kernels.lowbit_formats import decode_codes, group_scales, pad_to

INTERPRET, TRITON, MOSAIC_TPU = _tiling.INTERPRET, _tiling.TRITON, _tiling.MOSAIC_TPU

def _planes(packed):
  """The four decoded bit planes of a packed byte tile, as int32 values."""
  packed = packed.astype(jnp.int32)
  return [decode_codes((packed >> (2 * s)) & 3, jnp.int32) for s in range(4)]


def _weights(plane, w_dtype):
  """Decoded int32 values as the dot's weight dtype; floats via float32, the
  int->float conversion every backend has."""
  if w_dtype == jnp.int8:
    return plane.astype(jnp.int8)
  return plane.astype(jnp.float32).astype(w_dtype)


def _group_masks(planes, groups_per_step):
  """Per group of a shared K step: the planes with other groups' rows zeroed.

  Byte row ``j`` of a tile holds K rows ``4j .. 4j+3``, so with groups of
  ``4 * rows`` K rows, row ``j`` belongs to group ``j // rows`` in every plane.
  """
  if groups_per_step == 1:
    return [planes]
  bq = planes[0].shape[0]
  group = jax.lax.broadcasted_iota(jnp.int32, planes[0].shape, 0) // (bq // groups_per_step)
  return [[jnp.where(group == u, p, 0) for p in planes] for u in range(groups_per_step)]


def _ternary_loop_kernel(x_ref, p_ref, s_ref, xs_ref, o_ref, *, block_k,
                         steps_per_group, num_outer, groups_per_step,
                         acc_dtype, w_dtype):
  """Interpret/Triton: one output tile, K walked in steps, groups scaled in order.

  The activation columns of each K step are plane-major (module docstring),
  so bit plane ``s`` multiplies the contiguous slice ``[s * bq, (s+1) * bq)``.
  """
  bq, r = block_k // 4, groups_per_step

  def k_step(t, accs):
    masked = _group_masks(_planes(p_ref[pl.ds(pl.multiple_of(t * bq, bq), bq), :]), r)
    accs = list(accs)
    for s in range(4):
      x = x_ref[:, pl.ds(pl.multiple_of(t * block_k + s * bq, bq), bq)]
      for u in range(r):
        accs[u] = accs[u] + lay.dot(x, _weights(masked[u][s], w_dtype), acc_dtype)
    return tuple(accs)

  def outer(g, out):
    first = g * steps_per_group
    zeros = tuple(jnp.zeros(o_ref.shape, acc_dtype) for _ in range(r))
    accs = jax.lax.fori_loop(first, first + steps_per_group, k_step, zeros)
    for u in range(r):
      out = out + accs[u].astype(jnp.float32) * s_ref[pl.ds(g * r + u, 1), :]
    return out

  out = jax.lax.fori_loop(0, num_outer, outer, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = (out * xs_ref[...][:, None]).astype(o_ref.dtype)


def _ternary_tpu_kernel(x_ref, p_ref, s_ref, xs_ref, o_ref, out_ref, grp_ref, *,
                        steps_per_group, groups_per_step, acc_dtype, w_dtype):
  """Mosaic: one K step of one output tile; planes stacked into one MXU dot.

  ``out_ref`` (float32) collects scaled groups in order; ``grp_ref`` the
  unscaled sum of a group spanning several K steps.
  """
  t = pl.program_id(2)

  @pl.when(t == 0)
  def _():
    out_ref[...] = jnp.zeros(out_ref.shape, jnp.float32)

  x = x_ref[...]
  tiles = [jnp.concatenate([_weights(p, w_dtype) for p in planes], axis=0)
           for planes in _group_masks(_planes(p_ref[...]), groups_per_step)]
  if groups_per_step > 1 or steps_per_group == 1:
    for u, w in enumerate(tiles):
      part = lay.dot(x, w, acc_dtype).astype(jnp.float32)
      out_ref[...] += part * s_ref[u:u + 1, :]
  else:
    local = t % steps_per_group

    @pl.when(local == 0)
    def _():
      grp_ref[...] = jnp.zeros(grp_ref.shape, acc_dtype)

    grp_ref[...] += lay.dot(x, tiles[0], acc_dtype)

    @pl.when(local == steps_per_group - 1)
    def _():
      out_ref[...] += grp_ref[...].astype(jnp.float32) * s_ref[0:1, :]

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = (out_ref[...] * xs_ref[...]).astype(o_ref.dtype)


def _k_plan(backend, k, group_size, block_k):
  """K tiling: ``(group, padded_group, block_k, steps_per_group, groups_per_step)``.

  ``group`` is the K extent of one scale (the padded K for a per-tensor
  scale) and ``padded_group`` the extent it occupies after the wrapper's
  per-group zero padding (module docstring, "Per-group scales").
  """
  if backend == INTERPRET:
    if group_size is None:
      bk = _tiling.round_up(lay.fit(backend, block_k, k), 4)
      group = _tiling.round_up(k, bk)
    else:
      group = group_size
      bk = block_k if group % block_k == 0 else group
    return group, group, bk, group // bk, 1
  granule = lay.K_GRANULE[backend]
  if group_size is not None and group_size >= k:
    group_size = None  # one group: lay it out like a per-tensor scale
  if backend == TRITON:
    bk = max(granule, lay.fit(backend, block_k, k))
    divides = lambda g: min(bk, g & -g)  # largest power of two dividing g
  else:
    bk = lay.fit(backend, block_k, k, granule)
    divides = lambda g: next(b for b in range(bk, 0, -granule) if g % b == 0)
  if group_size is None:
    group = _tiling.round_up(k, bk)
    return group, group, bk, group // bk, 1
  if group_size < granule:
    padded = lay.pow2_at_least(group_size)
    return group_size, padded, granule, 1, granule // padded
  padded = _tiling.round_up(group_size, granule)
  bk = divides(padded)
  return group_size, padded, bk, padded // bk, 1


def _plane_major(x, block_k):
  """Permutes columns within each K tile so bit plane ``s`` reads a contiguous slice.

  Column ``4j + s`` of a tile moves to ``s * block_k / 4 + j``.
  """
  m, kp = x.shape
  return x.reshape(m, kp // block_k, block_k // 4, 4).swapaxes(2, 3).reshape(m, kp)


def _ternary_variant(backend, blocks, k, group_size, out_dtype, interpret):
  """``fn(x, w_packed, scales[groups, N], x_scale[M])`` laid out for ``backend``."""

  def run(x, w_packed, scales, xs):
    m, n = x.shape[0], w_packed.shape[1]
    integer = x.dtype == jnp.int8
    bm, bn, bk = lay.blocks("ternary", backend, blocks)
    bm = lay.fit(backend, bm, m, lay.tpu_rows((x.dtype, out_dtype)))
    bn = lay.fit(backend, bn, n, _tiling.TPU_LANES)
    group, padded, bk, steps, per_step = _k_plan(backend, k, group_size, bk)
    num_groups = -(-k // group)
    outer = -(-num_groups // per_step)
    kp = outer * per_step * padded
    mp, np_ = _tiling.round_up(m, bm), _tiling.round_up(n, bn)
    x_p = pad_to(x, (mp, num_groups * group))
    p_p = pad_to(w_packed, (num_groups * group // 4, np_))
    if padded != group:  # zero rows after each group (slow path, docstring)
      x_p = pad_to(x_p.reshape(mp, num_groups, group),
                   (mp, num_groups, padded)).reshape(mp, -1)
      p_p = pad_to(p_p.reshape(num_groups, group // 4, np_),
                   (num_groups, padded // 4, np_)).reshape(-1, np_)
    x_p = _plane_major(pad_to(x_p, (mp, kp)), bk)
    p_p = pad_to(p_p, (kp // 4, np_))
    s_p = pad_to(scales, (outer * per_step, np_))
    xs_p = pad_to(xs, (mp,))
    acc_dtype = jnp.int32 if integer else jnp.float32
    w_dtype = jnp.int8 if integer else x.dtype
    common = dict(out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
                  interpret=interpret, name="ternary_matmul")
    if backend == MOSAIC_TPU:
      kernel = lambda *refs: _ternary_tpu_kernel(
          *refs, steps_per_group=steps, groups_per_step=per_step,
          acc_dtype=acc_dtype, w_dtype=w_dtype)
      out = pl.pallas_call(
          kernel,
          grid=(mp // bm, np_ // bn, kp // bk),
          in_specs=[pl.BlockSpec((bm, bk), lambda i, j, t: (i, t)),
                    pl.BlockSpec((bk // 4, bn), lambda i, j, t: (t, j)),
                    pl.BlockSpec((None, per_step, bn),
                                 lambda i, j, t: (t // steps, 0, j)),
                    pl.BlockSpec((bm, 1), lambda i, j, t: (i, 0))],
          out_specs=pl.BlockSpec((bm, bn), lambda i, j, t: (i, j)),
          scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32),
                          pltpu.VMEM((bm, bn), acc_dtype)],
          compiler_params=lay.compiler_params("ternary", backend, 3), **common,
      )(x_p, p_p, s_p.reshape(outer, per_step, np_), xs_p.reshape(mp, 1))
    else:
      kernel = lambda *refs: _ternary_loop_kernel(
          *refs, block_k=bk, steps_per_group=steps, num_outer=outer,
          groups_per_step=per_step, acc_dtype=acc_dtype, w_dtype=w_dtype)
      out = pl.pallas_call(
          kernel,
          grid=(mp // bm, np_ // bn),
          in_specs=[pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
                    pl.BlockSpec((kp // 4, bn), lambda i, j: (0, j)),
                    pl.BlockSpec((outer * per_step, bn), lambda i, j: (0, j)),
                    pl.BlockSpec((bm,), lambda i, j: (i,))],
          out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
          compiler_params=lay.compiler_params("ternary", backend, 2), **common,
      )(x_p, p_p, s_p, xs_p)
    return out[:m, :n]

  return run


def _check_ternary(x, w_packed, scale, k, group_size, x_scale, block_k):
  """Validates the inputs; returns ``(scales[groups, N], x_scale[M])`` as float32."""
  if x.ndim != 2 or x.shape[1] != k:
    raise ValueError(f"Expected x of shape [M, {k}], got {x.shape}.")
  if w_packed.dtype != jnp.uint8 or w_packed.shape[0] != -(-k // 4):
    raise ValueError(
        f"Expected uint8 packed weights [{-(-k // 4)}, N], got "
        f"{w_packed.dtype} {w_packed.shape}.")
  integer = jnp.issubdtype(x.dtype, jnp.integer)
  if integer and x.dtype != jnp.int8:
    raise ValueError(f"Integer activations must be int8, got {x.dtype}.")
  if not integer and x.dtype not in (jnp.bfloat16, jnp.float32):
    raise ValueError(f"Float activations must be bf16/f32, got {x.dtype}.")
  if block_k is not None and (block_k <= 0 or block_k % 4):
    raise ValueError(f"block_k must be a positive multiple of 4, got {block_k}.")
  m = x.shape[0]
  scales, _ = group_scales(scale, k, w_packed.shape[1], group_size)
  if x_scale is None:
    return scales, jnp.ones((m,), jnp.float32)
  xs = jnp.asarray(x_scale, jnp.float32)
  if xs.shape != (m,):
    raise ValueError(f"x_scale must have shape [{m}], got {xs.shape}.")
  return scales, xs


def ternary_matmul(
    x: jax.Array,
    w_packed: jax.Array,
    scale: jax.Array,
    *,
    k: int,
    group_size: Optional[int] = None,
    x_scale: Optional[jax.Array] = None,
    out_dtype=jnp.float32,
    block_m: Optional[int] = None,
    block_n: Optional[int] = None,
    block_k: Optional[int] = None,
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
    block_m, block_n, block_k: tile sizes, None for the platform's default;
      ``block_k`` is a multiple of 4. In interpret mode, with groups,
      ``block_k`` is replaced by ``group_size`` if it does not divide it;
      the accelerator layouts choose K steps as the module docstring says.
    interpret: True runs Pallas interpret mode on every platform; None or
      False compile on GPU/TPU (CPU always interprets).

  Returns:
    ``[M, N]`` array of ``out_dtype``.
  """
  scales, xs = _check_ternary(x, w_packed, scale, k, group_size, x_scale, block_k)
  blocks = (block_m, block_n, block_k)
  build = lambda backend: _ternary_variant(backend, blocks, k, group_size,
                                           out_dtype, backend == INTERPRET)
  return _tiling.dispatch(build, x, w_packed, scales, xs, interpret=interpret)


def ternary_matmul_interpreted_as(backend: str, x, w_packed, scale, *, k,
                                  group_size=None, x_scale=None,
                                  out_dtype=jnp.float32, block_m=None,
                                  block_n=None, block_k=None) -> jax.Array:
  """Runs the ``backend`` variant's layout in interpret mode (see
  :func:`int8_matmul_interpreted_as`)."""
  scales, xs = _check_ternary(x, w_packed, scale, k, group_size, x_scale, block_k)
  return _ternary_variant(backend, (block_m, block_n, block_k), k, group_size,
                          out_dtype, True)(x, w_packed, scales, xs)
