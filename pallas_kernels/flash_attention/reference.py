"""The plain-``jnp`` definition of what flash attention computes.

:func:`attention_logits_and_mask` is the single statement of what every
optional logit shaper means (causal, segment ids, ALiBi, dense bias, per-key
bias); :func:`attention_reference` builds dense attention on it, and the
kernels' tests compare against that. :func:`check_inputs` is the shape
validation both share. Nothing here depends on Pallas.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# Finite stand-in for -inf in masked logits: exp(NEG_INF - m) underflows to 0
# without inf - inf = NaN when a whole row is masked.
NEG_INF = -1e30


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
  logits = jnp.where(mask, logits + add, NEG_INF)
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
