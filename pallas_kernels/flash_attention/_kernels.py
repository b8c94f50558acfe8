"""The three flash-attention kernel bodies, shared by every Pallas backend.

The tile math (logits, masking, online softmax, the two backward passes) is
written once. What differs between Triton and Mosaic TPU is how the arrays
are laid out in memory, and that is described by a :class:`Layout`: the
kernels read per-query values (segment ids, positions, ``lse``, ``delta``)
as ``[rows, layout.lanes]`` columns and per-key values (segment ids,
positions, key bias) as ``[layout.sublanes, cols]`` rows, and only ever
combine them with a ``[block_q, block_k]`` tile through :func:`_widen`
(which is a plain broadcast for one-lane columns and a lane tiling for the
TPU's 128-lane ones). Softmax statistics stay 2-D, ``[block_q, lanes]``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _tiling
from pallas_kernels.flash_attention.reference import NEG_INF


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one backend's kernels see their operands.

  Attributes:
    heads_major: q/k/v are ``[batch, heads, len, head_dim]`` in the kernel
      (the wrapper transposes) instead of the caller's ``[batch, len, heads,
      head_dim]``. Mosaic needs it: the last two block dims must be
      (sublane, lane) aligned, which a ``None`` heads axis in between breaks.
    lanes: Width of per-query columns: ``[batch, len, lanes]`` side inputs
      and ``[batch, heads, len, lanes]`` statistics, every lane equal.
    sublanes: Height of per-key rows: ``[batch, sublanes, len]``, every row equal.
    smem_slopes: ALiBi slopes are a ``[heads]`` scalar table in TPU SMEM;
      otherwise a ``[heads, 16]`` array whose block is read and reduced.
    explicit_transpose: ``a^T b`` is computed as ``dot(a.T, b)`` (a float32
      transpose first, as Mosaic prefers) rather than one ``dot_general``
      contracting the leading axes.
  """
  heads_major: bool
  lanes: int
  sublanes: int
  smem_slopes: bool
  explicit_transpose: bool


GPU_LAYOUT = Layout(heads_major=False, lanes=1, sublanes=1, smem_slopes=False,
                    explicit_transpose=False)
TPU_LAYOUT = Layout(heads_major=True, lanes=_tiling.TPU_LANES, sublanes=_tiling.TPU_SUBLANES,
                    smem_slopes=True, explicit_transpose=True)
LAYOUTS = {_tiling.INTERPRET: GPU_LAYOUT, _tiling.TRITON: GPU_LAYOUT,
           _tiling.MOSAIC_TPU: TPU_LAYOUT}


@dataclasses.dataclass(frozen=True)
class Static:
  """Compile-time facts shared by the three kernels (hashable for custom_vjp)."""
  scale: float
  causal: bool
  block_q: int
  block_k: int
  q_len: int           # unpadded lengths
  kv_len: int
  head_dim: int        # padded
  has_segments: bool
  has_alibi: bool
  bias_batch: int      # 0 = no dense bias, else its (broadcast) batch size
  bias_heads: int
  has_key_bias: bool
  backend: str         # whose layout and compiler parameters (an _tiling backend)
  interpret: bool      # run that layout in Pallas interpret mode

  @property
  def layout(self) -> Layout:
    return LAYOUTS[self.backend]


def _widen(x: jax.Array, width: int) -> jax.Array:
  """A ``[rows, lanes]`` column (all lanes equal) made to combine with ``[rows, width]``.

  One lane broadcasts as it is; 128 lanes are tiled (``width`` a multiple of
  128) or cut (``width`` below 128), the forms Mosaic handles.
  """
  lanes = x.shape[1]
  if lanes == 1 or lanes == width:
    return x
  if width % lanes == 0:
    return jnp.tile(x, (1, width // lanes))
  return x[:, :width]


def _column(x: jax.Array, lanes: int) -> jax.Array:
  """A per-row reduction result ``[rows]`` as a ``[rows, lanes]`` column."""
  return jax.lax.broadcast_in_dim(x, (x.shape[0], lanes), (0,))


def _dot_nt(a, b):
  """``a @ b.T`` with a float32 result."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(layout: Layout, a, b):
  """``a.T @ b`` with a float32 result; ``a`` is float32 and is cast to ``b.dtype``."""
  if layout.explicit_transpose:
    return jnp.dot(a.T.astype(b.dtype), b, preferred_element_type=jnp.float32)
  return jax.lax.dot_general(a.astype(b.dtype), b, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


class _Refs:
  """Named access to the optional side inputs of a kernel (absent ones are None)."""

  def __init__(self, st: Static, refs):
    refs = list(refs)
    take = lambda present: refs.pop(0) if present else None
    self.qseg, self.kseg = take(st.has_segments), take(st.has_segments)
    self.qpos, self.kpos = take(st.has_alibi), take(st.has_alibi)
    self.slope = take(st.has_alibi)
    self.bias = take(st.bias_batch > 0)
    self.key_bias = take(st.has_key_bias)
    self.rest = refs

  def slope_value(self, st: Static):
    if self.slope is None:
      return None
    if st.layout.smem_slopes:
      return self.slope[pl.program_id(1)]
    # A [16]-vector of one value (tiles need >= 16 elements on GPU).
    return jnp.max(self.slope[...])

  def tiles(self, q_rows, k_cols):
    """Side-input tiles for the queries ``q_rows`` and keys ``k_cols`` (ref slices).

    Per-query values come back as ``[block_q, lanes]`` columns, per-key ones
    as ``[1, block_k]`` rows (the first of the layout's equal sublanes).
    """
    col = lambda ref: None if ref is None else ref[q_rows, :]
    row = lambda ref: None if ref is None else ref[0:1, k_cols]
    bias = None if self.bias is None else self.bias[q_rows, k_cols]
    return dict(qseg=col(self.qseg), kseg=row(self.kseg), qpos=col(self.qpos),
                kpos=row(self.kpos), bias=bias, key_bias=row(self.key_bias))


def _block_logits(st: Static, q, k, q_start, k_start, side, slope):
  """Scaled logits of one ``[block_q, block_k]`` tile, plus its visibility mask."""
  shape = (st.block_q, st.block_k)
  s = _dot_nt(q, k) * st.scale
  q_idx = q_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  k_idx = k_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  mask = k_idx < st.kv_len
  if st.causal:
    mask = mask & (k_idx <= q_idx)
  if st.has_segments:
    qseg = _widen(side["qseg"], st.block_k)
    # Equal ids and a non-zero query id imply a non-zero key id.
    mask = mask & (qseg == side["kseg"]) & (qseg != 0)
  if st.has_alibi:
    s = s - slope * jnp.abs(_widen(side["qpos"], st.block_k) - side["kpos"])
  if side["bias"] is not None:
    s = s + side["bias"].astype(jnp.float32)
  if side["key_bias"] is not None:
    s = s + side["key_bias"]
  return jnp.where(mask, s, NEG_INF), mask


def _num_k_blocks_for(st: Static, q_block_index, num_k: int):
  if not st.causal:
    return num_k
  last_q = (q_block_index + 1) * st.block_q  # exclusive
  return jnp.minimum(num_k, (last_q + st.block_k - 1) // st.block_k)


def forward_kernel(q_ref, k_ref, v_ref, *refs, st: Static, num_k: int):
  """One query block: online softmax over the key blocks it can see; writes out and lse."""
  r = _Refs(st, refs)
  o_ref, lse_ref = r.rest
  lanes = lse_ref.shape[-1]
  i = pl.program_id(2)
  q_start = i * st.block_q
  q = q_ref[...]
  slope = r.slope_value(st)

  def body(j, carry):
    acc, m, l = carry
    k_start = pl.multiple_of(j * st.block_k, st.block_k)
    ks = pl.ds(k_start, st.block_k)
    s, mask = _block_logits(st, q, k_ref[ks, :], q_start, k_start, r.tiles(slice(None), ks),
                            slope)
    m_new = jnp.maximum(m, jnp.max(s, axis=1)[:, None])
    p = jnp.where(mask, jnp.exp(s - _widen(m_new, st.block_k)), 0.0)
    alpha = jnp.exp(m - m_new)
    l_new = alpha * l + _column(jnp.sum(p, axis=1), lanes)
    pv = jnp.dot(p.astype(v_ref.dtype), v_ref[ks, :], preferred_element_type=jnp.float32)
    return acc * _widen(alpha, st.head_dim) + pv, m_new, l_new

  acc = jnp.zeros((st.block_q, st.head_dim), jnp.float32)
  m = jnp.full((st.block_q, lanes), NEG_INF, jnp.float32)
  l = jnp.zeros((st.block_q, lanes), jnp.float32)
  acc, m, l = jax.lax.fori_loop(0, _num_k_blocks_for(st, i, num_k), body, (acc, m, l))
  empty = l == 0.0
  safe_l = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / _widen(safe_l, st.head_dim)).astype(o_ref.dtype)
  # Rows with no visible key get lse = 0; their probabilities are masked to
  # zero in the backward pass anyway.
  lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(safe_l))


def _probs_and_dscores(st, q, k, v, do, lse, delta, q_start, k_start, side, slope):
  s, mask = _block_logits(st, q, k, q_start, k_start, side, slope)
  p = jnp.where(mask, jnp.exp(s - _widen(lse, st.block_k)), 0.0)
  ds = p * (_dot_nt(do, v) - _widen(delta, st.block_k))
  return p, ds


def dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: Static, num_k: int):
  """One query block: dq = sum over visible key blocks of dS K."""
  r = _Refs(st, refs)
  (dq_ref,) = r.rest
  i = pl.program_id(2)
  q_start = i * st.block_q
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  slope = r.slope_value(st)

  def body(j, dq):
    k_start = pl.multiple_of(j * st.block_k, st.block_k)
    ks = pl.ds(k_start, st.block_k)
    k = k_ref[ks, :]
    _, ds = _probs_and_dscores(st, q, k, v_ref[ks, :], do, lse, delta, q_start, k_start,
                               r.tiles(slice(None), ks), slope)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = jax.lax.fori_loop(0, _num_k_blocks_for(st, i, num_k), body,
                         jnp.zeros((st.block_q, st.head_dim), jnp.float32))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, st: Static, num_q: int):
  """One key block: dk, dv (and the bias gradients) over the query blocks that see it."""
  r = _Refs(st, refs)
  outs = list(r.rest)
  dk_ref, dv_ref = outs.pop(0), outs.pop(0)
  dbias_ref = outs.pop(0) if st.bias_batch > 0 else None
  dkey_bias_ref = outs.pop(0) if st.has_key_bias else None
  j = pl.program_id(2)
  k_start = j * st.block_k
  k, v = k_ref[...], v_ref[...]
  slope = r.slope_value(st)
  # Causal: query blocks entirely before this key block see none of it.
  first = (k_start // st.block_q) if st.causal else 0
  if dbias_ref is not None and st.causal:
    dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

  def body(i, carry):
    dk, dv, dkb = carry
    q_start = pl.multiple_of(i * st.block_q, st.block_q)
    qs = pl.ds(q_start, st.block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    p, ds = _probs_and_dscores(st, q, k, v, do, lse_ref[qs, :], delta_ref[qs, :], q_start,
                               k_start, r.tiles(qs, slice(None)), slope)
    if dbias_ref is not None:
      dbias_ref[qs, :] = ds.astype(dbias_ref.dtype)
    dv = dv + _dot_tn(st.layout, p, do)
    dk = dk + _dot_tn(st.layout, ds, q)
    if dkey_bias_ref is not None:
      dkb = dkb + jnp.sum(ds, axis=0, keepdims=True)
    return dk, dv, dkb

  zeros = jnp.zeros((st.block_k, st.head_dim), jnp.float32)
  dk, dv, dkb = jax.lax.fori_loop(first, num_q, body,
                                  (zeros, zeros, jnp.zeros((1, st.block_k), jnp.float32)))
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if dkey_bias_ref is not None:
    dkey_bias_ref[...] = jnp.broadcast_to(dkb, dkey_bias_ref.shape)
