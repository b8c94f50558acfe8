"""One flash-attention variant per Pallas backend: blocks, layouts, specs, pallas_calls.

:func:`attend` is what ``_tiling.dispatch`` picks between. For its backend it
chooses the blocks (``DEFAULT_BLOCKS`` and the backend's constraints), pads
and lays out the inputs as the backend's :class:`~._kernels.Layout` says,
and runs the forward kernel under a ``custom_vjp`` whose backward runs the
dq and dk/dv kernels with the same layout.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from pallas_kernels import _tiling
from pallas_kernels.flash_attention import _kernels
from pallas_kernels.flash_attention._kernels import Static

# (block_q, block_k) per platform, picked by the variant's backend (Triton:
# "gpu", Mosaic: "tpu", interpret: "cpu"), not by the process's default
# backend, so lowering for cuda from a CPU host gets the GPU blocks.
# GPU: 128 x 64 keeps a bfloat16 q tile, the float32 accumulator and one k/v
# tile in registers/shared memory at head dim 128 on an A100/H100-class SM.
# TPU: 128 x 128 fills the MXU and the (8, 128) vreg tiling; blocks there are
# at least 128 (multiples of 128 keep every key-side block lane-aligned).
# CPU (interpret mode) only affects test speed.
DEFAULT_BLOCKS = {"gpu": (128, 64), "tpu": (128, 128), "cpu": (128, 128)}
BLOCK_PLATFORM = {_tiling.INTERPRET: "cpu", _tiling.TRITON: "gpu", _tiling.MOSAIC_TPU: "tpu"}
MAX_HEAD_DIM = 256
_SLOPE_LANES = _tiling.MIN_BLOCK


@dataclasses.dataclass(frozen=True)
class Options:
  """The static arguments of :func:`attend` that do not depend on the backend."""
  scale: float
  causal: bool
  block_q: Optional[int]   # None: the backend's default
  block_k: Optional[int]


def blocks_for(backend: str, block_q: Optional[int], block_k: Optional[int], q_len: int,
               kv_len: int) -> tuple[int, int]:
  """The (block_q, block_k) the ``backend`` variant runs with.

  Requested (or default) blocks shrink to the smallest power of two covering
  a short sequence; Mosaic blocks are then raised to at least 128.
  """
  default_q, default_k = DEFAULT_BLOCKS[BLOCK_PLATFORM[backend]]
  bq = min(block_q or default_q, _tiling.covering_pow2(q_len))
  bk = min(block_k or default_k, _tiling.covering_pow2(kv_len))
  if backend == _tiling.MOSAIC_TPU:
    bq, bk = max(bq, _tiling.TPU_LANES), max(bk, _tiling.TPU_LANES)
  return bq, bk


def padded_head_dim(backend: str, head_dim: int) -> int:
  """Head dim the kernels run with; zero columns change neither logits nor kept outputs.

  Triton tiles want powers of two (>= 16); Mosaic wants 64 (a whole-dim block)
  or a multiple of the 128 lanes.
  """
  if backend == _tiling.MOSAIC_TPU:
    return head_dim if head_dim == 64 else _tiling.round_up(head_dim, _tiling.TPU_LANES)
  return head_dim if head_dim in (64, 128) else _tiling.covering_pow2(head_dim)


def _compiler_params(st: Static, kernel: str):
  """Backend compiler parameters; ``kernel`` is "forward", "dq" or "dkv"."""
  if st.interpret:
    return None
  if st.backend == _tiling.MOSAIC_TPU:
    # Every program owns its output block and loops over the other axis
    # itself, so all three grid axes are independent (megacore may split any).
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * 3)
  # Triton: 8 warps once a tile at head dim 128 is big enough to feed them,
  # else 4; three pipeline stages for the lean 64-wide forward loop, two where
  # the per-iteration state (128-wide heads, the backward passes) is larger.
  wide = st.head_dim >= 128
  warps = 8 if wide and min(st.block_q, st.block_k) >= 64 else 4
  stages = 3 if kernel == "forward" and not wide else 2
  return plt.CompilerParams(num_warps=warps, num_stages=stages)


def _call(st: Static, kernel, name: str, **kwargs):
  return pl.pallas_call(kernel, interpret=st.interpret,
                        compiler_params=_compiler_params(st, name),
                        name=f"flash_attention_{name}", **kwargs)


# ---------------------------------------------------------------------------
# BlockSpecs. Grids are (batch, heads, t) where t walks query blocks (forward,
# dq) or key blocks (dk/dv); a "walking" spec takes block t, a whole one the
# full length (the kernel slices it).
# ---------------------------------------------------------------------------


def _walk(walk: bool, t):
  return t if walk else 0


def _seq_spec(st: Static, rows: int, walk: bool):
  """q/k/v/do/out-like arrays: ``[b, h, L, d]`` (heads-major) or ``[b, L, h, d]``."""
  if st.layout.heads_major:
    return pl.BlockSpec((None, None, rows, st.head_dim),
                        lambda b, h, t: (b, h, _walk(walk, t), 0))
  return pl.BlockSpec((None, rows, None, st.head_dim),
                      lambda b, h, t: (b, _walk(walk, t), h, 0))


def _stat_spec(st: Static, rows: int, walk: bool):
  """lse/delta, ``[b, h, L, lanes]``."""
  return pl.BlockSpec((None, None, rows, st.layout.lanes),
                      lambda b, h, t: (b, h, _walk(walk, t), 0))


def _side_specs(st: Static, *, q_walks: bool, lq: int, lk: int):
  """Specs for (qseg, kseg, qpos, kpos, slopes, bias, key_bias), present ones only."""
  lay = st.layout
  rows = st.block_q if q_walks else lq
  cols = lk if q_walks else st.block_k
  col = pl.BlockSpec((None, rows, lay.lanes), lambda b, h, t: (b, _walk(q_walks, t), 0))
  row = pl.BlockSpec((None, lay.sublanes, cols), lambda b, h, t: (b, 0, _walk(not q_walks, t)))
  specs = []
  if st.has_segments:
    specs += [col, row]
  if st.has_alibi:
    slopes = (pl.BlockSpec(memory_space=pltpu.SMEM) if lay.smem_slopes else
              pl.BlockSpec((None, _SLOPE_LANES), lambda b, h, t: (h, 0)))
    specs += [col, row, slopes]
  if st.bias_batch:
    bb, hb = st.bias_batch > 1, st.bias_heads > 1
    specs.append(pl.BlockSpec(
        (None, None, rows, cols),
        lambda b, h, t: (b if bb else 0, h if hb else 0, _walk(q_walks, t),
                         _walk(not q_walks, t))))
  if st.has_key_bias:
    specs.append(row)
  return specs


def _side_args(st: Static, side, bias, key_bias):
  args = [x for x in side if x is not None]
  if st.bias_batch:
    args.append(bias)
  if st.has_key_bias:
    b, lk = key_bias.shape
    args.append(jnp.broadcast_to(key_bias[:, None, :], (b, st.layout.sublanes, lk)))
  return args


def _dims(st: Static, x):
  """(batch, heads, length) of a q/k/v-like array in the layout's order."""
  if st.layout.heads_major:
    return x.shape[0], x.shape[1], x.shape[2]
  return x.shape[0], x.shape[2], x.shape[1]


# ---------------------------------------------------------------------------
# Forward and backward passes
# ---------------------------------------------------------------------------


def _forward(st: Static, q, k, v, side, bias, key_bias):
  b, h, lq = _dims(st, q)
  lk = _dims(st, k)[2]
  out, lse = _call(
      st, functools.partial(_kernels.forward_kernel, st=st, num_k=lk // st.block_k), "forward",
      grid=(b, h, lq // st.block_q),
      in_specs=[_seq_spec(st, st.block_q, True), _seq_spec(st, lk, False),
                _seq_spec(st, lk, False)] + _side_specs(st, q_walks=True, lq=lq, lk=lk),
      out_specs=[_seq_spec(st, st.block_q, True), _stat_spec(st, st.block_q, True)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq, st.layout.lanes), jnp.float32)],
  )(q, k, v, *_side_args(st, side, bias, key_bias))
  return out, lse


def _backward(st: Static, q, k, v, side, bias, key_bias, out, lse, do):
  b, h, lq = _dims(st, q)
  lk = _dims(st, k)[2]
  axis = "bhqd" if st.layout.heads_major else "bqhd"
  delta = jnp.einsum(f"{axis},{axis}->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
  delta = jnp.broadcast_to(delta[..., None], lse.shape)
  args = _side_args(st, side, bias, key_bias)

  q_blk, k_blk = _seq_spec(st, st.block_q, True), _seq_spec(st, st.block_k, True)
  q_all, k_all = _seq_spec(st, lq, False), _seq_spec(st, lk, False)
  dq = _call(
      st, functools.partial(_kernels.dq_kernel, st=st, num_k=lk // st.block_k), "dq",
      grid=(b, h, lq // st.block_q),
      in_specs=[q_blk, k_all, k_all, q_blk, _stat_spec(st, st.block_q, True),
                _stat_spec(st, st.block_q, True)] + _side_specs(st, q_walks=True, lq=lq, lk=lk),
      out_specs=q_blk,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
  )(q, k, v, do, lse, delta, *args)

  out_specs = [k_blk, k_blk]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if st.bias_batch:
    out_specs.append(pl.BlockSpec((None, None, lq, st.block_k), lambda b_, h_, t: (b_, h_, 0, t)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, lq, lk), jnp.float32))
  if st.has_key_bias:
    sub = st.layout.sublanes
    out_specs.append(pl.BlockSpec((None, None, sub, st.block_k), lambda b_, h_, t: (b_, h_, 0, t)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, sub, lk), jnp.float32))
  grads = _call(
      st, functools.partial(_kernels.dkv_kernel, st=st, num_q=lq // st.block_q), "dkv",
      grid=(b, h, lk // st.block_k),
      in_specs=[q_all, k_blk, k_blk, q_all, _stat_spec(st, lq, False),
                _stat_spec(st, lq, False)] + _side_specs(st, q_walks=False, lq=lq, lk=lk),
      out_specs=out_specs,
      out_shape=out_shape,
  )(q, k, v, do, lse, delta, *args)
  grads = list(grads)
  dk, dv = grads.pop(0), grads.pop(0)
  dbias = grads.pop(0) if st.bias_batch else None
  dkey_bias = grads.pop(0)[:, :, 0, :].sum(axis=1) if st.has_key_bias else None
  return dq, dk, dv, dbias, dkey_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st: Static, q, k, v, side, bias, key_bias):
  out, _ = _forward(st, q, k, v, side, bias, key_bias)
  return out


def _flash_fwd(st, q, k, v, side, bias, key_bias):
  out, lse = _forward(st, q, k, v, side, bias, key_bias)
  return out, (q, k, v, side, bias, key_bias, out, lse)


def _flash_bwd(st, residuals, do):
  q, k, v, side, bias, key_bias, out, lse = residuals
  dq, dk, dv, dbias, dkey_bias = _backward(st, q, k, v, side, bias, key_bias, out, lse, do)
  if dbias is not None:
    # Sum the per-(batch, head) tiles over the axes the bias was broadcast on.
    axes = tuple(a for a, n in ((0, st.bias_batch), (1, st.bias_heads)) if n == 1)
    dbias = dbias.sum(axis=axes, keepdims=True).astype(bias.dtype)
  # Integer side inputs (segment ids) get float0, the float ones (positions,
  # ALiBi slopes: fixed constants, not parameters) zeros.
  side_ct = tuple(None if x is None else _zero_cotangent(x) for x in side)
  return dq, dk, dv, side_ct, dbias, dkey_bias


def _zero_cotangent(x):
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.zeros(x.shape, jax.dtypes.float0)
  return jnp.zeros_like(x)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------
# The variant
# ---------------------------------------------------------------------------


def _pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  if x.shape[axis] == size:
    return x
  pads = [(0, 0)] * x.ndim
  pads[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pads, constant_values=value)


def attend(backend: str, interpret: bool, opts: Options, q, k, v, q_segment_ids,
           kv_segment_ids, q_positions, kv_positions, alibi_slopes, bias, key_bias):
  """Flash attention with ``backend``'s blocks, layout and compiler parameters.

  Inputs are the validated public arguments (positions already defaulted when
  ALiBi is on); ``interpret`` runs that backend's layout in interpret mode.
  Returns ``[batch, q_len, heads, head_dim]``.
  """
  b, lq, h, d = q.shape
  lk = k.shape[1]
  block_q, block_k = blocks_for(backend, opts.block_q, opts.block_k, lq, lk)
  lq_p, lk_p = _tiling.round_up(lq, block_q), _tiling.round_up(lk, block_k)
  d_p = padded_head_dim(backend, d)
  st = Static(scale=opts.scale, causal=opts.causal, block_q=block_q, block_k=block_k,
              q_len=lq, kv_len=lk, head_dim=d_p, has_segments=q_segment_ids is not None,
              has_alibi=alibi_slopes is not None,
              bias_batch=0 if bias is None else bias.shape[0],
              bias_heads=0 if bias is None else bias.shape[1],
              has_key_bias=key_bias is not None, backend=backend,
              interpret=interpret or backend == _tiling.INTERPRET)
  lay = st.layout

  def seq(x, length):
    x = _pad_axis(_pad_axis(x, 1, length), 3, d_p)
    return x.transpose(0, 2, 1, 3) if lay.heads_major else x

  # Per-query values become [b, L, lanes] columns, per-key ones [b, sublanes, L] rows.
  col = lambda x: jnp.broadcast_to(_pad_axis(x, 1, lq_p)[:, :, None], (b, lq_p, lay.lanes))
  row = lambda x: jnp.broadcast_to(_pad_axis(x, 1, lk_p)[:, None, :], (b, lay.sublanes, lk_p))
  side = [None] * 5
  if st.has_segments:
    side[0] = col(q_segment_ids.astype(jnp.int32))
    side[1] = row(kv_segment_ids.astype(jnp.int32))
  if st.has_alibi:
    side[2] = col(q_positions.astype(jnp.float32))
    side[3] = row(kv_positions.astype(jnp.float32))
    slopes = jnp.asarray(alibi_slopes, jnp.float32)
    side[4] = slopes if lay.smem_slopes else jnp.broadcast_to(slopes[:, None], (h, _SLOPE_LANES))
  bias_p = None if bias is None else _pad_axis(_pad_axis(bias, 2, lq_p), 3, lk_p)
  key_bias_p = None if key_bias is None else _pad_axis(key_bias.astype(jnp.float32), 1, lk_p)
  out = _flash(st, seq(q, lq_p), seq(k, lk_p), seq(v, lk_p), tuple(side), bias_p, key_bias_p)
  if lay.heads_major:
    out = out.transpose(0, 2, 1, 3)
  return out[:, :lq, :, :d]
