"""Scaled dot-product attention behind one function with pluggable backends.

Callers always use :func:`dot_product_attention`; the ``backend`` argument
picks an implementation from ``BACKENDS``. ``"xla"`` is the plain ``jnp``
reference that every faster backend (Pallas, cuDNN) is tested against; a new
backend is added by putting a function with the same keyword signature as
``_xla_attention`` into ``BACKENDS``.

Shapes: queries ``[batch, q_len, heads, head_dim]``, keys and values
``[batch, kv_len, heads, head_dim]``; masks and biases broadcast to
``[batch, heads, q_len, kv_len]``. A mask entry ``True`` means "may attend".
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]


def make_attention_mask(segment_ids_q: jax.Array, segment_ids_kv: jax.Array) -> jax.Array:
  """Boolean mask ``[batch, 1, q_len, kv_len]`` allowing attention within a segment.

  Segment id 0 marks padding: a padding query attends to nothing and no query
  attends to a padding key. Different non-zero ids (packed documents) never
  see each other.
  """
  q = segment_ids_q[:, None, :, None]
  kv = segment_ids_kv[:, None, None, :]
  return (q == kv) & (q != 0) & (kv != 0)


def _xla_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                   bias: Optional[jax.Array], mask: Optional[jax.Array],
                   dropout_rng: Optional[jax.Array], dropout_rate: float,
                   deterministic: bool, dtype: jnp.dtype, scale: float) -> jax.Array:
  """Reference attention in plain ``jnp``: logits and softmax in float32.

  Masked entries get a zero probability after the softmax (not only a large
  negative logit), so a fully masked row yields zeros instead of NaN or an
  average over padding.
  """
  query = jnp.asarray(query, dtype)
  if scale != 1.0:
    query = query * jnp.asarray(scale, dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, jnp.asarray(key, dtype),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + jnp.asarray(bias, jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    probs = jnp.where(mask, probs, 0.0)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("dropout_rng is required when dropout is active.")
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", jnp.asarray(probs, dtype), jnp.asarray(value, dtype))


BACKENDS: dict[str, AttentionFn] = {"xla": _xla_attention}


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          bias: Optional[jax.Array] = None,
                          mask: Optional[jax.Array] = None,
                          dropout_rng: Optional[jax.Array] = None,
                          dropout_rate: float = 0.0,
                          deterministic: bool = True,
                          backend: str = "xla",
                          dtype: Optional[jnp.dtype] = None,
                          scale: Optional[float] = None) -> jax.Array:
  """Multi-head softmax attention ``softmax(scale * q k^T + bias) v``.

  Args:
    query: ``[batch, q_len, heads, head_dim]``.
    key: ``[batch, kv_len, heads, head_dim]``.
    value: ``[batch, kv_len, heads, head_dim]``.
    bias: Additive logits, broadcastable to ``[batch, heads, q_len, kv_len]``
      (e.g. ALiBi).
    mask: Boolean, same broadcast shape; ``True`` where attending is allowed.
      Queries with no allowed key produce zeros.
    dropout_rng: Key for dropout on the attention probabilities.
    dropout_rate: Probability of dropping an attention weight.
    deterministic: Disables dropout when ``True``.
    backend: Name of an implementation in ``BACKENDS``.
    dtype: Compute and output dtype; defaults to ``query.dtype``. Logits and
      softmax are always float32.
    scale: Factor on the query; ``None`` means ``1/sqrt(head_dim)``. T5
      folds the scaling into its initialisation and passes 1.0.

  Returns:
    ``[batch, q_len, heads, head_dim]`` in ``dtype``.

  Raises:
    ValueError: For an unknown backend or inconsistent shapes.
  """
  if backend not in BACKENDS:
    raise ValueError(f"Unknown attention backend {backend!r}; known backends: {sorted(BACKENDS)}.")
  if query.ndim != 4 or key.shape != value.shape or key.ndim != 4:
    raise ValueError(f"Expected 4-D query and equal-shaped 4-D key/value, got {query.shape}, "
                     f"{key.shape}, {value.shape}.")
  if query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
    raise ValueError(f"query {query.shape} and key {key.shape} disagree on batch, heads or head_dim.")
  return BACKENDS[backend](
      query, key, value, bias=bias, mask=mask, dropout_rng=dropout_rng,
      dropout_rate=dropout_rate, deterministic=deterministic,
      dtype=jnp.dtype(dtype) if dtype is not None else query.dtype,
      scale=query.shape[-1] ** -0.5 if scale is None else float(scale))
