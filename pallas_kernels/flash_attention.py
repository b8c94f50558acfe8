"""Flash attention in Pallas: tiled online-softmax forward and backward kernels.

:func:`flash_attention` computes ``softmax(scale * q k^T + bias) v`` per head
without materialising the ``[q_len, kv_len]`` probabilities: each program
owns a block of queries, walks the keys block by block keeping a running
maximum ``m``, normaliser ``l`` and float32 output accumulator, and writes the
output plus the per-row log-sum-exp ``lse = m + log l``. The backward pass
(under ``jax.custom_vjp``) recomputes the probabilities from ``lse`` in two
kernels, one owning query blocks (dq) and one owning key blocks (dk, dv and
the gradients of the bias inputs), so no kernel needs atomics.

What can shape the logits (all optional, all combinable):

* ``causal``: query ``i`` sees keys ``j <= i`` (indices, top-left aligned).
* ``q_segment_ids`` / ``kv_segment_ids`` (int ``[batch, len]``): attention
  stays inside equal non-zero ids; id 0 is padding, which sees nothing and is
  seen by nothing. This covers packed rows and key padding.
* ``alibi_slopes`` (``[heads]``) with ``q_positions`` / ``kv_positions``:
  ``-slope_h * |pos_i - pos_j|`` computed in the kernel from the slopes, so
  no ``L x L`` tensor exists. Positions default to ``arange``.
* ``bias`` (``[1 or batch, 1 or heads, q_len, kv_len]``): a dense additive
  bias such as T5's bucketed relative position bias, read block by block;
  its gradient is returned (summed over broadcast axes).
* ``key_bias`` (``[batch, kv_len]``): one additive value per key, shared by
  all heads and queries, as MrT5's soft-deletion gate; its gradient is
  accumulated in the dk/dv kernel.

A query row with no visible key produces zeros (not NaN, not an average over
padding), in the output and in every gradient.

Shapes and dtypes: ``q [batch, q_len, heads, head_dim]``, ``k, v [batch,
kv_len, heads, head_dim]``; float32 or bfloat16 (float16 works too). Logits,
softmax statistics and all accumulators are float32; the probabilities are
cast to the input dtype for the ``p @ v`` product, as in FlashAttention-2.
Lengths need not be multiples of the blocks: inputs are padded to whole
blocks and padded keys are masked by index. Head dims 64 and 128 run as
they are; any other head dim (up to 256) is zero-padded to the next power of
two, which leaves the logits and the kept output columns unchanged.

Platforms: on GPU the kernels lower through Pallas's Triton backend (block
sizes must be powers of two, at least 16); on CPU there is no Pallas
compiler and ``interpret=None`` (the default) runs them in interpret mode,
which is how the tests check them against :func:`attention_reference`.
Default blocks per platform are in ``DEFAULT_BLOCKS``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _tiling


# (block_q, block_k) per platform. GPU: 128 x 64 keeps a bfloat16 q tile, the
# float32 accumulator and one k/v tile in registers/shared memory at head dim
# 128 on an A100/H100-class SM. CPU (interpret mode) only affects test speed.
DEFAULT_BLOCKS = {"gpu": (128, 64), "tpu": (128, 128), "cpu": (128, 128)}
_MAX_HEAD_DIM = 256
# Finite stand-in for -inf in masked logits: exp(_NEG - m) underflows to 0
# without inf - inf = NaN when a whole row is masked.
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class _Static:
  """Compile-time facts shared by the three kernels (hashable for custom_vjp)."""
  scale: float
  causal: bool
  block_q: int
  block_k: int
  q_len: int           # unpadded lengths
  kv_len: int
  has_segments: bool
  has_alibi: bool
  bias_batch: int      # 0 = no dense bias, else its (broadcast) batch size
  bias_heads: int
  has_key_bias: bool
  interpret: bool


def _pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  if x.shape[axis] == size:
    return x
  pads = [(0, 0)] * x.ndim
  pads[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pads, constant_values=value)


# ---------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------


def attention_logits_and_mask(q_len: int, kv_len: int, *, batch: int, heads: int,
                              q_segment_ids=None, kv_segment_ids=None, causal=False,
                              q_positions=None, kv_positions=None, alibi_slopes=None,
                              bias=None, key_bias=None):
  """Dense additive logits ``[batch, heads, q, kv]`` (float32) and boolean mask.

  The single definition of what each optional input means; the reference
  attention and lmlab's ``xla`` backend both build on it.
  """
  add = jnp.zeros((1, 1, 1, 1), jnp.float32)
  mask = jnp.ones((1, 1, q_len, kv_len), bool)
  if causal:
    mask = mask & (jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None])
  if q_segment_ids is not None:
    qs = q_segment_ids[:, None, :, None]
    ks = kv_segment_ids[:, None, None, :]
    mask = mask & (qs == ks) & (qs != 0) & (ks != 0)
  if alibi_slopes is not None:
    qp = (jnp.arange(q_len)[None] if q_positions is None else q_positions).astype(jnp.float32)
    kp = (jnp.arange(kv_len)[None] if kv_positions is None else kv_positions).astype(jnp.float32)
    distance = jnp.abs(qp[:, :, None] - kp[:, None, :])
    add = add - jnp.asarray(alibi_slopes, jnp.float32)[None, :, None, None] * distance[:, None]
  if bias is not None:
    add = add + jnp.asarray(bias, jnp.float32)
  if key_bias is not None:
    add = add + jnp.asarray(key_bias, jnp.float32)[:, None, None, :]
  mask = jnp.broadcast_to(mask, (batch if q_segment_ids is not None else 1, 1, q_len, kv_len))
  return add, mask


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids=None,
                        kv_segment_ids=None, causal: bool = False, q_positions=None,
                        kv_positions=None, alibi_slopes=None, bias=None, key_bias=None,
                        scale: Optional[float] = None) -> jax.Array:
  """Plain ``jnp`` attention with the same arguments and semantics as :func:`flash_attention`."""
  check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, bias, key_bias)
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  add, mask = attention_logits_and_mask(
      q.shape[1], k.shape[1], batch=q.shape[0], heads=q.shape[2],
      q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, causal=causal,
      q_positions=q_positions, kv_positions=kv_positions, alibi_slopes=alibi_slopes,
      bias=bias, key_bias=key_bias)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits + add, _NEG)
  probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, bias, key_bias):
  """Raises ValueError naming the first argument whose shape does not fit ``q, k, v``."""
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError(f"Expected q [batch, q_len, heads, head_dim] and equal-shaped k, v "
                     f"[batch, kv_len, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}.")
  b, lq, h, d = q.shape
  if k.shape[0] != b or k.shape[2:] != (h, d):
    raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch, heads or head_dim.")
  lk = k.shape[1]
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  if q_segment_ids is not None and (q_segment_ids.shape != (b, lq) or
                                    kv_segment_ids.shape != (b, lk)):
    raise ValueError(f"Segment ids must be [batch, q_len]={(b, lq)} and [batch, kv_len]="
                     f"{(b, lk)}; got {q_segment_ids.shape} and {kv_segment_ids.shape}.")
  if alibi_slopes is not None and jnp.shape(alibi_slopes) != (h,):
    raise ValueError(f"alibi_slopes must have shape [heads]=({h},), got {jnp.shape(alibi_slopes)}.")
  if bias is not None:
    ok = (bias.ndim == 4 and bias.shape[0] in (1, b) and bias.shape[1] in (1, h)
          and bias.shape[2:] == (lq, lk))
    if not ok:
      raise ValueError(f"bias must be [1 or {b}, 1 or {h}, {lq}, {lk}], got {bias.shape}.")
  if key_bias is not None and key_bias.shape != (b, lk):
    raise ValueError(f"key_bias must be [batch, kv_len]={(b, lk)}, got {key_bias.shape}.")


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


def _block_logits(st: _Static, q, k, q_start, k_start, qseg, kseg, qpos, kpos, slope,
                  bias_tile, key_bias_tile):
  """Scaled logits of one ``[block_q, block_k]`` tile, plus its visibility mask."""
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32) * st.scale
  q_idx = q_start + jax.lax.broadcasted_iota(jnp.int32, (st.block_q, st.block_k), 0)
  k_idx = k_start + jax.lax.broadcasted_iota(jnp.int32, (st.block_q, st.block_k), 1)
  mask = k_idx < st.kv_len
  if st.causal:
    mask = mask & (k_idx <= q_idx)
  if st.has_segments:
    mask = mask & (qseg[:, None] == kseg[None, :]) & (qseg[:, None] != 0)
    mask = mask & (kseg[None, :] != 0)
  if st.has_alibi:
    distance = jnp.abs(qpos[:, None].astype(jnp.float32) - kpos[None, :].astype(jnp.float32))
    s = s - slope * distance
  if bias_tile is not None:
    s = s + bias_tile.astype(jnp.float32)
  if key_bias_tile is not None:
    s = s + key_bias_tile.astype(jnp.float32)[None, :]
  return jnp.where(mask, s, _NEG), mask


class _Refs:
  """Named access to the optional side inputs of a kernel (absent ones are None)."""

  def __init__(self, st: _Static, refs):
    refs = list(refs)
    take = lambda present: refs.pop(0) if present else None
    self.qseg, self.kseg = take(st.has_segments), take(st.has_segments)
    self.qpos, self.kpos = take(st.has_alibi), take(st.has_alibi)
    self.slope = take(st.has_alibi)
    self.bias = take(st.bias_batch > 0)
    self.key_bias = take(st.has_key_bias)
    self.rest = refs

  def slope_value(self):
    # The slope arrives as a [16]-vector of one value (tiles need >= 16 lanes).
    return jnp.max(self.slope[...]) if self.slope is not None else None


def _side_tiles(st: _Static, r: _Refs, q_slice, k_slice):
  """Side inputs for one tile; ``q_slice``/``k_slice`` index the refs' length axes."""
  qseg = r.qseg[q_slice] if st.has_segments else None
  kseg = r.kseg[k_slice] if st.has_segments else None
  qpos = r.qpos[q_slice] if st.has_alibi else None
  kpos = r.kpos[k_slice] if st.has_alibi else None
  bias_tile = r.bias[q_slice, k_slice] if r.bias is not None else None
  key_bias_tile = r.key_bias[k_slice] if r.key_bias is not None else None
  return qseg, kseg, qpos, kpos, bias_tile, key_bias_tile


def _num_k_blocks_for(st: _Static, q_block_index, num_k: int):
  if not st.causal:
    return num_k
  last_q = (q_block_index + 1) * st.block_q  # exclusive
  return jnp.minimum(num_k, (last_q + st.block_k - 1) // st.block_k)


def _forward_kernel(q_ref, k_ref, v_ref, *refs, st: _Static, num_k: int):
  r = _Refs(st, refs)
  o_ref, lse_ref = r.rest
  i = pl.program_id(2)
  q_start = i * st.block_q
  q = q_ref[...]
  slope = r.slope_value()
  all_q = slice(None)

  def body(j, carry):
    acc, m, l = carry
    k_start = pl.multiple_of(j * st.block_k, st.block_k)
    ks = pl.ds(k_start, st.block_k)
    qseg, kseg, qpos, kpos, bias_tile, kb = _side_tiles(st, r, all_q, ks)
    s, mask = _block_logits(st, q, k_ref[ks, :], q_start, k_start, qseg, kseg, qpos, kpos,
                            slope, bias_tile, kb)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m - m_new)
    l_new = alpha * l + jnp.sum(p, axis=1)
    pv = jnp.dot(p.astype(v_ref.dtype), v_ref[ks, :], preferred_element_type=jnp.float32)
    return acc * alpha[:, None] + pv, m_new, l_new

  acc = jnp.zeros(o_ref.shape, jnp.float32)
  m = jnp.full((st.block_q,), _NEG, jnp.float32)
  l = jnp.zeros((st.block_q,), jnp.float32)
  acc, m, l = jax.lax.fori_loop(0, _num_k_blocks_for(st, i, num_k), body, (acc, m, l))
  empty = l == 0.0
  safe_l = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / safe_l[:, None]).astype(o_ref.dtype)
  # Rows with no visible key get lse = 0; their probabilities are masked to
  # zero in the backward pass anyway.
  lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(safe_l))


def _probs_and_dscores(st, q, k, v, do, lse, delta, q_start, k_start, side, slope):
  s, mask = _block_logits(st, q, k, q_start, k_start, *side[:4], slope, *side[4:])
  p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
  dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  ds = p * (dp - delta[:, None])
  return p, ds


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static, num_k: int):
  r = _Refs(st, refs)
  (dq_ref,) = r.rest
  i = pl.program_id(2)
  q_start = i * st.block_q
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  slope = r.slope_value()

  def body(j, dq):
    k_start = pl.multiple_of(j * st.block_k, st.block_k)
    ks = pl.ds(k_start, st.block_k)
    k = k_ref[ks, :]
    side = _side_tiles(st, r, slice(None), ks)
    _, ds = _probs_and_dscores(st, q, k, v_ref[ks, :], do, lse, delta, q_start, k_start, side,
                               slope)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = jax.lax.fori_loop(0, _num_k_blocks_for(st, i, num_k), body,
                         jnp.zeros(dq_ref.shape, jnp.float32))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: _Static,
                num_q: int):
  r = _Refs(st, refs)
  outs = list(r.rest)
  dk_ref, dv_ref = outs.pop(0), outs.pop(0)
  dbias_ref = outs.pop(0) if st.bias_batch > 0 else None
  dkey_bias_ref = outs.pop(0) if st.has_key_bias else None
  j = pl.program_id(2)
  k_start = j * st.block_k
  k, v = k_ref[...], v_ref[...]
  slope = r.slope_value()
  # Causal: query blocks entirely before this key block see none of it.
  first = (k_start // st.block_q) if st.causal else 0
  if dbias_ref is not None and st.causal:
    dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

  def body(i, carry):
    dk, dv, dkb = carry
    q_start = pl.multiple_of(i * st.block_q, st.block_q)
    qs = pl.ds(q_start, st.block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    side = _side_tiles(st, r, qs, slice(None))
    p, ds = _probs_and_dscores(st, q, k, v, do, lse_ref[qs], delta_ref[qs], q_start, k_start,
                               side, slope)
    if dbias_ref is not None:
      dbias_ref[qs, :] = ds.astype(dbias_ref.dtype)
    contract_rows = (((0,), (0,)), ((), ()))
    dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, contract_rows,
                                  preferred_element_type=jnp.float32)
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, contract_rows,
                                  preferred_element_type=jnp.float32)
    if dkey_bias_ref is not None:
      dkb = dkb + jnp.sum(ds, axis=0)
    return dk, dv, dkb

  zeros = jnp.zeros(dk_ref.shape, jnp.float32)
  dk, dv, dkb = jax.lax.fori_loop(first, num_q, body,
                                  (zeros, zeros, jnp.zeros((st.block_k,), jnp.float32)))
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if dkey_bias_ref is not None:
    dkey_bias_ref[...] = dkb


# ---------------------------------------------------------------------------
# pallas_call plumbing
# ---------------------------------------------------------------------------


def _side_specs_and_args(st: _Static, side, *, q_block: Optional[int], k_block: Optional[int],
                         lq: int, lk: int, q_axis: bool):
  """BlockSpecs for the side inputs. ``q_axis``: the grid's third axis walks queries.

  For the walking axis the spec takes one block (``q_block`` or ``k_block``);
  the other length axis is whole, and the kernel slices it.
  """
  qseg, kseg, qpos, kpos, slopes, bias, key_bias = side
  bq = q_block if q_axis else lq
  bk = lk if q_axis else k_block
  qi = (lambda b, h, t: (b, t)) if q_axis else (lambda b, h, t: (b, 0))
  ki = (lambda b, h, t: (b, 0)) if q_axis else (lambda b, h, t: (b, t))
  specs, args = [], []
  if st.has_segments:
    specs += [pl.BlockSpec((None, bq), qi), pl.BlockSpec((None, bk), ki)]
    args += [qseg, kseg]
  if st.has_alibi:
    specs += [pl.BlockSpec((None, bq), qi), pl.BlockSpec((None, bk), ki),
              pl.BlockSpec((None, _tiling.MIN_BLOCK), lambda b, h, t: (h, 0))]
    args += [qpos, kpos, slopes]
  if st.bias_batch:
    bb, hb = st.bias_batch > 1, st.bias_heads > 1

    def bias_index(b, h, t):
      return (b if bb else 0, h if hb else 0, t if q_axis else 0, 0 if q_axis else t)

    specs.append(pl.BlockSpec((None, None, bq, bk), bias_index))
    args.append(bias)
  if st.has_key_bias:
    specs.append(pl.BlockSpec((None, bk), ki))
    args.append(key_bias)
  return specs, args


def _forward(st: _Static, q, k, v, side):
  b, lq, h, d = q.shape
  lk = k.shape[1]
  specs, args = _side_specs_and_args(st, side, q_block=st.block_q, k_block=None, lq=lq, lk=lk,
                                     q_axis=True)
  q_spec = pl.BlockSpec((None, st.block_q, None, d), lambda b_, h_, t: (b_, t, h_, 0))
  kv_spec = pl.BlockSpec((None, lk, None, d), lambda b_, h_, t: (b_, 0, h_, 0))
  kernel = functools.partial(_forward_kernel, st=st, num_k=lk // st.block_k)
  out, lse = pl.pallas_call(
      kernel,
      grid=(b, h, lq // st.block_q),
      in_specs=[q_spec, kv_spec, kv_spec] + specs,
      out_specs=[q_spec, pl.BlockSpec((None, None, st.block_q), lambda b_, h_, t: (b_, h_, t))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      interpret=st.interpret,
      name="flash_attention_forward",
  )(q, k, v, *args)
  return out, lse


def _backward(st: _Static, q, k, v, side, out, lse, do):
  b, lq, h, d = q.shape
  lk = k.shape[1]
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
  q_blk = pl.BlockSpec((None, st.block_q, None, d), lambda b_, h_, t: (b_, t, h_, 0))
  q_all = pl.BlockSpec((None, lq, None, d), lambda b_, h_, t: (b_, 0, h_, 0))
  k_blk = pl.BlockSpec((None, st.block_k, None, d), lambda b_, h_, t: (b_, t, h_, 0))
  k_all = pl.BlockSpec((None, lk, None, d), lambda b_, h_, t: (b_, 0, h_, 0))
  stat_blk = pl.BlockSpec((None, None, st.block_q), lambda b_, h_, t: (b_, h_, t))
  stat_all = pl.BlockSpec((None, None, lq), lambda b_, h_, t: (b_, h_, 0))

  specs, args = _side_specs_and_args(st, side, q_block=st.block_q, k_block=None, lq=lq, lk=lk,
                                     q_axis=True)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, st=st, num_k=lk // st.block_k),
      grid=(b, h, lq // st.block_q),
      in_specs=[q_blk, k_all, k_all, q_blk, stat_blk, stat_blk] + specs,
      out_specs=q_blk,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=st.interpret,
      name="flash_attention_dq",
  )(q, k, v, do, lse, delta, *args)

  specs, args = _side_specs_and_args(st, side, q_block=None, k_block=st.block_k, lq=lq, lk=lk,
                                     q_axis=False)
  out_specs = [k_blk, k_blk]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if st.bias_batch:
    out_specs.append(pl.BlockSpec((None, None, lq, st.block_k), lambda b_, h_, t: (b_, h_, 0, t)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, lq, lk), jnp.float32))
  if st.has_key_bias:
    out_specs.append(pl.BlockSpec((None, None, st.block_k), lambda b_, h_, t: (b_, h_, t)))
    out_shape.append(jax.ShapeDtypeStruct((b, h, lk), jnp.float32))
  grads = pl.pallas_call(
      functools.partial(_dkv_kernel, st=st, num_q=lq // st.block_q),
      grid=(b, h, lk // st.block_k),
      in_specs=[q_all, k_blk, k_blk, q_all, stat_all, stat_all] + specs,
      out_specs=out_specs,
      out_shape=out_shape,
      interpret=st.interpret,
      name="flash_attention_dkv",
  )(q, k, v, do, lse, delta, *args)
  grads = list(grads)
  dk, dv = grads.pop(0), grads.pop(0)
  dbias = grads.pop(0) if st.bias_batch else None
  dkey_bias = grads.pop(0).sum(axis=1) if st.has_key_bias else None
  return dq, dk, dv, dbias, dkey_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st: _Static, q, k, v, side, bias, key_bias):
  out, _ = _forward(st, q, k, v, side + (bias, key_bias))
  return out


def _flash_fwd(st, q, k, v, side, bias, key_bias):
  out, lse = _forward(st, q, k, v, side + (bias, key_bias))
  return out, (q, k, v, side, bias, key_bias, out, lse)


def _flash_bwd(st, residuals, do):
  q, k, v, side, bias, key_bias, out, lse = residuals
  dq, dk, dv, dbias, dkey_bias = _backward(st, q, k, v, side + (bias, key_bias), out, lse, do)
  if dbias is not None:
    # Sum the per-(batch, head) tiles over the axes the bias was broadcast on.
    axes = tuple(a for a, n in ((0, st.bias_batch), (1, st.bias_heads)) if n == 1)
    dbias = dbias.sum(axis=axes, keepdims=True).astype(bias.dtype)
  if dkey_bias is not None:
    dkey_bias = dkey_bias.astype(key_bias.dtype)
  # Integer side inputs (segment ids, positions) and the ALiBi slopes get no
  # gradient (slopes are fixed constants, not parameters).
  side_ct = tuple(None if x is None else _zero_cotangent(x) for x in side)
  return dq, dk, dv, side_ct, dbias, dkey_bias


def _zero_cotangent(x):
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.zeros(x.shape, jax.dtypes.float0)
  return jnp.zeros_like(x)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    q_segment_ids: Optional[jax.Array] = None,
                    kv_segment_ids: Optional[jax.Array] = None,
                    causal: bool = False,
                    q_positions: Optional[jax.Array] = None,
                    kv_positions: Optional[jax.Array] = None,
                    alibi_slopes: Optional[jax.Array] = None,
                    bias: Optional[jax.Array] = None,
                    key_bias: Optional[jax.Array] = None,
                    scale: Optional[float] = None,
                    block_q: Optional[int] = None,
                    block_k: Optional[int] = None,
                    interpret: Optional[bool] = None) -> jax.Array:
  """Memory-efficient attention; same result as :func:`attention_reference`.

  Args:
    q: ``[batch, q_len, heads, head_dim]``.
    k, v: ``[batch, kv_len, heads, head_dim]``, same dtype as ``q``.
    q_segment_ids, kv_segment_ids: int ``[batch, len]``; equal non-zero ids
      attend to each other, 0 is padding.
    causal: Query ``i`` sees keys ``j <= i``.
    q_positions, kv_positions: int ``[batch, len]`` positions for ALiBi
      distances (default ``arange``; packed rows restart per document).
    alibi_slopes: ``[heads]`` ALiBi slopes; bias ``-slope * |pos_q - pos_k|``.
    bias: Dense additive logits ``[1 or batch, 1 or heads, q_len, kv_len]``
      (differentiable).
    key_bias: ``[batch, kv_len]`` additive per-key logits (differentiable).
    scale: Logit scale; ``None`` means ``1/sqrt(head_dim)``.
    block_q, block_k: Tile sizes (powers of two >= 16); defaults per
      platform from ``DEFAULT_BLOCKS``, shrunk for short sequences.
    interpret: Pallas interpret mode; ``None`` means "on CPU only".

  Returns:
    ``[batch, q_len, heads, head_dim]`` in ``q.dtype``.

  Raises:
    ValueError: For inconsistent shapes, a head dim above 256, or block sizes
      that are not powers of two.
  """
  check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, bias, key_bias)
  if q.dtype != k.dtype or k.dtype != v.dtype:
    raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
  b, lq, h, d = q.shape
  lk = k.shape[1]
  if d > _MAX_HEAD_DIM:
    raise ValueError(f"head_dim {d} is larger than the supported maximum {_MAX_HEAD_DIM}; "
                     "split heads or use the 'xla' backend.")
  platform = jax.default_backend()
  default_q, default_k = DEFAULT_BLOCKS.get(platform, DEFAULT_BLOCKS["gpu"])
  block_q, block_k = block_q or default_q, block_k or default_k
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk < _tiling.MIN_BLOCK or blk & (blk - 1):
      raise ValueError(f"{name}={blk} must be a power of two >= {_tiling.MIN_BLOCK}.")
  block_q, block_k = min(block_q, _tiling.covering_pow2(lq)), min(block_k, _tiling.covering_pow2(lk))
  lq_p, lk_p = _tiling.round_up(lq, block_q), _tiling.round_up(lk, block_k)
  d_p = d if d in (64, 128) else _tiling.covering_pow2(d)

  scale = d ** -0.5 if scale is None else float(scale)
  st = _Static(scale=scale, causal=bool(causal), block_q=block_q, block_k=block_k, q_len=lq,
               kv_len=lk, has_segments=q_segment_ids is not None,
               has_alibi=alibi_slopes is not None,
               bias_batch=0 if bias is None else bias.shape[0],
               bias_heads=0 if bias is None else bias.shape[1],
               has_key_bias=key_bias is not None, interpret=_tiling.resolve_interpret(interpret))

  pad_len = lambda x, n: _pad_axis(_pad_axis(x, 1, n), 3, d_p)
  qp, kp, vp = pad_len(q, lq_p), pad_len(k, lk_p), pad_len(v, lk_p)
  side = [None] * 5
  if st.has_segments:
    side[0] = _pad_axis(q_segment_ids.astype(jnp.int32), 1, lq_p)
    side[1] = _pad_axis(kv_segment_ids.astype(jnp.int32), 1, lk_p)
  if st.has_alibi:
    qpos = jnp.broadcast_to(jnp.arange(lq, dtype=jnp.int32), (b, lq)) if q_positions is None \
        else q_positions.astype(jnp.int32)
    kpos = jnp.broadcast_to(jnp.arange(lk, dtype=jnp.int32), (b, lk)) if kv_positions is None \
        else kv_positions.astype(jnp.int32)
    side[2], side[3] = _pad_axis(qpos, 1, lq_p), _pad_axis(kpos, 1, lk_p)
    side[4] = jnp.broadcast_to(jnp.asarray(alibi_slopes, jnp.float32)[:, None], (h, _tiling.MIN_BLOCK))
  bias_p = None
  if bias is not None:
    bias_p = _pad_axis(_pad_axis(bias, 2, lq_p), 3, lk_p)
  key_bias_p = None if key_bias is None else _pad_axis(key_bias, 1, lk_p)
  out = _flash(st, qp, kp, vp, tuple(side), bias_p, key_bias_p)
  return out[:, :lq, :, :d]
