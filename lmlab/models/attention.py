"""Scaled dot-product attention behind one function with pluggable backends.

Callers always use :func:`dot_product_attention` and describe *what* may be
attended with structured inputs (segment ids, causality, ALiBi slopes, a
dense bias, a per-key bias) rather than with a materialised mask, so that a
memory-efficient kernel can build the mask tile by tile. The ``backend``
argument (``attention_backend`` in the network configs, bound by gin) picks
an implementation from ``BACKENDS``:

``xla``
  Plain ``jnp`` (the reference every other backend is tested against):
  float32 logits and softmax over the full ``[q_len, kv_len]`` matrix.
  Supports everything, including attention-probability dropout and an
  arbitrary dense boolean ``mask``.
``pallas``
  :func:`pallas_kernels.flash_attention.flash_attention`: tiled online
  softmax with a recomputing backward pass, memory linear in length. On GPU
  it lowers through Triton; on CPU it runs in Pallas interpret mode (correct
  but slow: meant for tests; a warning is logged once). It has no dropout on
  the probabilities and no dense ``mask`` (an error says so).
``cudnn``
  ``jax.nn.dot_product_attention(implementation="cudnn")``: NVIDIA's fused
  kernel. It needs a GPU and float16/bfloat16 inputs; elsewhere it falls
  back to ``jax.nn.dot_product_attention``'s XLA path with a warning logged
  once (documented fallback, so one gin file runs everywhere). Segment ids,
  ALiBi and the per-key bias are turned into a dense mask and bias for it.
``splash``
  JAX's TPU splash-attention kernel
  (``jax.experimental.pallas.ops.tpu.splash_attention``): flash attention
  that skips fully masked tiles of its static (full or causal) mask. It
  takes segment ids and causality only; ALiBi, a dense ``bias``, a
  ``key_bias``, a dense ``mask`` and dropout raise a ``ValueError`` pointing
  to ``pallas``/``xla``. TPU only (a GPU is refused); on CPU it runs in
  Pallas interpret mode for tests. Lengths are padded to whole 128-token
  tiles internally.

Shapes: queries ``[batch, q_len, heads, head_dim]``, keys and values
``[batch, kv_len, heads, head_dim]``. Segment id 0 marks padding: a padding
query attends to nothing (its output is zero) and no query attends to a
padding key. A query with no visible key outputs zeros in every backend.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lmlab.models import layers
from pallas_kernels import flash_attention as flash

AttentionFn = Callable[..., jax.Array]
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
  if key not in _warned:
    _warned.add(key)
    logging.warning(message)


def make_attention_mask(segment_ids_q: jax.Array, segment_ids_kv: jax.Array) -> jax.Array:
  """Boolean mask ``[batch, 1, q_len, kv_len]`` allowing attention within a segment.

  Segment id 0 marks padding: a padding query attends to nothing and no query
  attends to a padding key. Different non-zero ids (packed documents) never
  see each other.
  """
  q = segment_ids_q[:, None, :, None]
  kv = segment_ids_kv[:, None, None, :]
  return (q == kv) & (q != 0) & (kv != 0)


def _dense_logits_and_mask(query, key, structure) -> tuple[jax.Array, jax.Array]:
  """The structured inputs as a dense float32 additive term and boolean mask."""
  structure = dict(structure)
  mask = structure.pop("mask")
  add, structured_mask = flash.attention_logits_and_mask(
      query.shape[1], key.shape[1], batch=query.shape[0], heads=query.shape[2], **structure)
  if mask is not None:
    structured_mask = structured_mask & jnp.asarray(mask, bool)
  return add, structured_mask


def _xla_attention(query, key, value, *, structure, dropout_rng, dropout_rate, deterministic,
                   dtype, scale) -> jax.Array:
  """Reference attention in plain ``jnp``: logits and softmax in float32.

  Masked entries get a zero probability after the softmax (not only a large
  negative logit), so a fully masked row yields zeros instead of NaN or an
  average over padding.
  """
  add, mask = _dense_logits_and_mask(query, key, structure)
  query = jnp.asarray(query, dtype)
  if scale != 1.0:
    query = query * jnp.asarray(scale, dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, jnp.asarray(key, dtype),
                      preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits + add, jnp.finfo(jnp.float32).min)
  probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("dropout_rng is required when dropout is active.")
    keep = layers.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", jnp.asarray(probs, dtype), jnp.asarray(value, dtype))


def _no_dropout(backend: str, dropout_rate: float, deterministic: bool) -> None:
  if not deterministic and dropout_rate > 0.0:
    raise ValueError(
        f"The {backend!r} attention backend has no dropout on attention probabilities, but "
        f"attention_dropout_rate={dropout_rate}. Set attention_dropout_rate=0.0 in the network "
        "config (common for modern encoders) or use attention_backend='xla'.")


def _pallas_attention(query, key, value, *, structure, dropout_rng, dropout_rate, deterministic,
                      dtype, scale) -> jax.Array:
  """Flash attention kernel; memory linear in sequence length."""
  del dropout_rng
  _no_dropout("pallas", dropout_rate, deterministic)
  structure = dict(structure)
  if structure.pop("mask") is not None:
    raise ValueError("The 'pallas' attention backend takes no dense mask; describe visibility "
                     "with q/kv segment ids and causal=True, or use attention_backend='xla'.")
  if jax.default_backend() == "cpu":
    _warn_once("pallas_cpu", "attention_backend='pallas' on CPU runs the flash-attention "
               "kernels in Pallas interpret mode: correct but slow (use it for tests).")
  cast = lambda x: jnp.asarray(x, dtype)
  return flash.flash_attention(cast(query), cast(key), cast(value), scale=scale, **structure)


def _cudnn_attention(query, key, value, *, structure, dropout_rng, dropout_rate, deterministic,
                     dtype, scale) -> jax.Array:
  """``jax.nn.dot_product_attention``: cuDNN on GPU in half precision, else its XLA path."""
  del dropout_rng
  _no_dropout("cudnn", dropout_rate, deterministic)
  # Causality goes to the library as ``is_causal`` (cuDNN's fused causal
  # path needs no mask tensor); only segments and a dense mask become a mask.
  structure = dict(structure)
  causal = structure.pop("causal")
  has_mask = structure["q_segment_ids"] is not None or structure["mask"] is not None
  add, mask = _dense_logits_and_mask(query, key, {**structure, "causal": False})
  implementation = "cudnn"
  if jax.default_backend() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    _warn_once("cudnn_fallback", "attention_backend='cudnn' needs a GPU and float16/bfloat16 "
               f"compute (have {jax.default_backend()}, {jnp.dtype(dtype).name}); using "
               "jax.nn.dot_product_attention's XLA implementation instead.")
    implementation = None
  cast = lambda x: jnp.asarray(x, dtype)
  bias = None if add.shape == (1, 1, 1, 1) else jnp.broadcast_to(
      add, (query.shape[0], query.shape[2], query.shape[1], key.shape[1])).astype(dtype)
  out = jax.nn.dot_product_attention(cast(query), cast(key), cast(value), bias=bias,
                                     mask=mask if has_mask else None, scale=scale,
                                     is_causal=causal, implementation=implementation)
  if not has_mask:
    return out.astype(dtype)
  # Rows with no visible key: zeros, as the other backends give.
  if causal:
    mask = mask & (jnp.arange(key.shape[1])[None, :] <= jnp.arange(query.shape[1])[:, None])
  visible = jnp.any(mask, axis=-1)  # [batch or 1, 1, q_len]
  return jnp.where(jnp.transpose(visible, (0, 2, 1))[..., None], out, 0.0).astype(dtype)


# Splash works on whole tiles of 128 tokens (the TPU lane width): lengths are
# padded to a multiple of this and each block is the largest of
# ``_SPLASH_BLOCKS`` that divides the padded length.
_SPLASH_TILE = 128
_SPLASH_BLOCKS = (512, 256, 128)
# Stand-in segment ids for padding. Splash lets equal ids see each other, so
# id 0 on both sides would let padding queries read padding keys; giving
# query-side and key-side padding two different ids no real segment uses
# makes padding see nothing and be seen by nothing, as in the other backends.
_SPLASH_Q_PAD = -(2**31)
_SPLASH_KV_PAD = -(2**31) + 1
# What splash cannot express -> why it matters, for the refusal message.
_SPLASH_UNSUPPORTED = {
    "alibi_slopes": "ALiBi (position_scheme='alibi')",
    "bias": "a dense additive bias (e.g. T5's relative position bias)",
    "key_bias": "a per-key bias (e.g. MrT5's delete gate)",
    "mask": "a dense boolean mask",
}


def _splash_visible_rows(q_seg: jax.Array, kv_seg: jax.Array, causal: bool) -> jax.Array:
  """Whether each query ``[batch, q_len]`` has at least one visible key.

  Splash gives a query with no visible key an average of the values rather
  than zeros, so the wrapper zeroes those rows itself. A query is visible
  when its id is non-zero and occurs among the keys (with causality: at or
  before its own index). Found by sorting the key ids and binary-searching
  each query id, so no ``q_len x kv_len`` array is built; a stable sort puts
  the first occurrence of each id first, which is what causality needs.
  """
  def one_row(q_ids, kv_ids):
    order = jnp.argsort(kv_ids, stable=True)
    ordered = kv_ids[order]
    at = jnp.clip(jnp.searchsorted(ordered, q_ids, side="left"), 0, kv_ids.shape[0] - 1)
    found = (ordered[at] == q_ids) & (q_ids != 0)
    if causal:
      found &= order[at] <= jnp.arange(q_ids.shape[0])
    return found

  return jax.vmap(one_row)(q_seg, kv_seg)


def _splash_block(length: int) -> int:
  return next(b for b in _SPLASH_BLOCKS if length % b == 0)


def _splash_attention(query, key, value, *, structure, dropout_rng, dropout_rate, deterministic,
                      dtype, scale) -> jax.Array:
  """JAX's TPU splash-attention kernel, with this module's visibility semantics.

  Splash (``jax.experimental.pallas.ops.tpu.splash_attention``) is a TPU
  flash-attention kernel that skips fully masked tiles of a static mask
  (here full or causal) and applies segment ids in the kernel. It never
  scales the queries, has unbatched ``[heads, len, head_dim]`` inputs and
  needs lengths in whole 128-token tiles, so this wrapper scales ``q``, maps
  the kernel over the batch, pads lengths with padding segment ids and
  zeroes the rows of queries that see no key. It lowers through Mosaic on
  TPU and runs in Pallas interpret mode on CPU (for tests); GPUs have no
  such kernel and are refused.
  """
  del dropout_rng
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  _no_dropout("splash", dropout_rate, deterministic)
  for name, what in _SPLASH_UNSUPPORTED.items():
    if structure[name] is not None:
      raise ValueError(f"The 'splash' attention backend cannot apply {what} ({name} was given); "
                       "use attention_backend='pallas' or 'xla'.")
  if jax.default_backend() == "gpu":
    raise ValueError("attention_backend='splash' is JAX's TPU-only splash-attention kernel and "
                     "cannot run on a GPU; use 'pallas' or 'cudnn' there.")
  causal = bool(structure["causal"])
  batch, q_len, heads, _ = query.shape
  kv_len = key.shape[1]
  q_pad = -(-q_len // _SPLASH_TILE) * _SPLASH_TILE
  kv_pad = -(-kv_len // _SPLASH_TILE) * _SPLASH_TILE
  q_seg, kv_seg = structure["q_segment_ids"], structure["kv_segment_ids"]
  has_segments = q_seg is not None
  if has_segments:
    q_seg = jnp.where(q_seg == 0, _SPLASH_Q_PAD, q_seg.astype(jnp.int32))
    kv_seg = jnp.where(kv_seg == 0, _SPLASH_KV_PAD, kv_seg.astype(jnp.int32))
  elif (q_pad, kv_pad) != (q_len, kv_len):
    q_seg = jnp.ones((batch, q_len), jnp.int32)
    kv_seg = jnp.ones((batch, kv_len), jnp.int32)
  if q_seg is not None:
    q_seg = jnp.pad(q_seg, ((0, 0), (0, q_pad - q_len)), constant_values=_SPLASH_Q_PAD)
    kv_seg = jnp.pad(kv_seg, ((0, 0), (0, kv_pad - kv_len)), constant_values=_SPLASH_KV_PAD)

  def heads_major(x, length):  # [batch, len, heads, d] -> [batch, heads, padded len, d]
    x = jnp.transpose(jnp.asarray(x, dtype), (0, 2, 1, 3))
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))

  q = heads_major(jnp.asarray(query, dtype) * jnp.asarray(scale, dtype), q_pad)
  k, v = heads_major(key, kv_pad), heads_major(value, kv_pad)
  shape = (q_pad, kv_pad)
  head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  bq, bkv = _splash_block(q_pad), _splash_block(kv_pad)
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                             block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                             block_kv_dq=bkv)

  def run(interpret):
    kernel = splash.make_splash_mha(splash.MultiHeadMask([head_mask] * heads),
                                    block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    if q_seg is None:
      return lambda q, k, v: jax.vmap(kernel)(q, k, v)
    return lambda q, k, v, qs, ks: jax.vmap(
        lambda *a: kernel(*a[:3], segment_ids=splash.SegmentIds(*a[3:])))(q, k, v, qs, ks)

  args = (q, k, v) if q_seg is None else (q, k, v, q_seg, kv_seg)
  # Mosaic on TPU, interpret mode on CPU; chosen for the platform lowered for.
  out = jax.lax.platform_dependent(*args, cpu=run(True), tpu=run(False))
  out = jnp.transpose(out[:, :, :q_len], (0, 2, 1, 3))
  if has_segments:
    visible = _splash_visible_rows(structure["q_segment_ids"], structure["kv_segment_ids"], causal)
    out = jnp.where(visible[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out.astype(dtype)


BACKENDS: dict[str, AttentionFn] = {
    "xla": _xla_attention,
    "pallas": _pallas_attention,
    "cudnn": _cudnn_attention,
    "splash": _splash_attention,
}


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          q_segment_ids: Optional[jax.Array] = None,
                          kv_segment_ids: Optional[jax.Array] = None,
                          causal: bool = False,
                          q_positions: Optional[jax.Array] = None,
                          kv_positions: Optional[jax.Array] = None,
                          alibi_slopes: Optional[jax.Array] = None,
                          bias: Optional[jax.Array] = None,
                          key_bias: Optional[jax.Array] = None,
                          mask: Optional[jax.Array] = None,
                          dropout_rng: Optional[jax.Array] = None,
                          dropout_rate: float = 0.0,
                          deterministic: bool = True,
                          backend: str = "xla",
                          dtype: Optional[jnp.dtype] = None,
                          scale: Optional[float] = None) -> jax.Array:
  """Multi-head softmax attention ``softmax(scale * q k^T + biases) v`` with masking.

  Args:
    query: ``[batch, q_len, heads, head_dim]``.
    key: ``[batch, kv_len, heads, head_dim]``.
    value: ``[batch, kv_len, heads, head_dim]``.
    q_segment_ids, kv_segment_ids: int ``[batch, len]``: attention stays
      within equal non-zero ids; 0 is padding. Pass both or neither.
    causal: Query ``i`` sees only keys ``j <= i``.
    q_positions, kv_positions: int ``[batch, len]`` positions for ALiBi
      distances (default ``arange``).
    alibi_slopes: ``[heads]``; adds ``-slope * |pos_q - pos_k|``.
    bias: Dense additive logits ``[1 or batch, 1 or heads, q_len, kv_len]``
      (T5's relative position bias).
    key_bias: ``[batch, kv_len]`` additive logits per key (MrT5's gate).
    mask: Optional dense boolean mask broadcastable to ``[batch, heads,
      q_len, kv_len]``, ``True`` where attending is allowed; ``xla`` and
      ``cudnn`` only.
    dropout_rng: Key for dropout on the attention probabilities.
    dropout_rate: Probability of dropping an attention weight (``xla`` only).
    deterministic: Disables dropout when ``True``.
    backend: ``xla``, ``pallas``, ``cudnn`` or ``splash`` (see the module
      docstring), or any name added to ``BACKENDS``.
    dtype: Compute and output dtype; defaults to ``query.dtype``. Logits and
      softmax are always float32.
    scale: Factor on the logits; ``None`` means ``1/sqrt(head_dim)``. T5
      folds the scaling into its initialisation and passes 1.0.

  Returns:
    ``[batch, q_len, heads, head_dim]`` in ``dtype``.

  Raises:
    ValueError: For an unknown backend, inconsistent shapes, or a feature the
      chosen backend lacks (dropout or a dense mask with ``pallas``; those
      and ALiBi, ``bias`` or ``key_bias`` with ``splash``, or ``splash`` on a
      GPU).
  """
  if backend not in BACKENDS:
    raise ValueError(f"Unknown attention backend {backend!r}; known backends: {sorted(BACKENDS)}.")
  if query.ndim != 4 or key.shape != value.shape or key.ndim != 4:
    raise ValueError(f"Expected 4-D query and equal-shaped 4-D key/value, got {query.shape}, "
                     f"{key.shape}, {value.shape}.")
  if query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
    raise ValueError(f"query {query.shape} and key {key.shape} disagree on batch, heads or head_dim.")
  flash.check_inputs(query, key, value, q_segment_ids, kv_segment_ids, alibi_slopes, bias,
                     key_bias)
  structure = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, causal=causal,
                   q_positions=q_positions, kv_positions=kv_positions,
                   alibi_slopes=alibi_slopes, bias=bias, key_bias=key_bias, mask=mask)
  return BACKENDS[backend](
      query, key, value, structure=structure, dropout_rng=dropout_rng,
      dropout_rate=dropout_rate, deterministic=deterministic,
      dtype=jnp.dtype(dtype) if dtype is not None else query.dtype,
      scale=query.shape[-1] ** -0.5 if scale is None else float(scale))
