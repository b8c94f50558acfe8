"""T5-family encoder–decoder (T5 v1.0/v1.1, ByT5, MrT5) in Flax Linen.

Pre-norm blocks with RMSNorm, bias-free projections, a bucketed relative
position bias (bidirectional in the encoder, causal in the decoder, one table
per stack shared by its blocks) and a shared input embedding. The decoder
runs either over whole target sequences (training, scoring) or one token at a
time against a key/value cache (``init_cache`` + ``decode_step``).

MrT5's delete gate (``T5Config.delete_gate_layer``) is a learned per-token
value in ``(k, 0)`` computed from the input of one encoder block. It is added
to attention scores over keys in that block, in every later block and in
cross-attention ("soft deletion"). At inference ``lmlab.models.byte_level``
removes tokens whose gate is below a threshold ("hard deletion") between
``encode_lower`` and ``encode_upper``; the upper blocks and cross-attention
then take the key bias it returns (0 on kept tokens, as in the reference) in
place of the gate.

Parameter tree (``params``)::

  token_embedder/embedding                                   [vocab, embed]
  encoder/relpos_bias/rel_embedding                          [buckets, heads]
  encoder/layers_<i>/{pre_attention_norm,pre_mlp_norm}/scale
  encoder/layers_<i>/attention/{query,key,value}/kernel      [embed, heads, kv]
  encoder/layers_<i>/attention/out/kernel                    [heads, kv, embed]
  encoder/layers_<i>/mlp/{wi_0,wi_1 | wi}/kernel, mlp/wo/kernel
  encoder/delete_gate/{norm/scale, proj/kernel, proj_bias}    (MrT5 only)
  encoder/final_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_<i>/{pre_self_attention_norm,pre_cross_attention_norm,pre_mlp_norm}/scale
  decoder/layers_<i>/{self_attention,cross_attention}/{query,key,value,out}/kernel
  decoder/layers_<i>/mlp/...
  decoder/final_norm/scale
  decoder/logits_dense/kernel                                [embed, vocab] (untied only)
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models import layers
from lmlab.models.attention import dot_product_attention
from lmlab.models.config import REMAT_POLICIES, T5Config

Cache = dict[str, Any]
# Structured attention inputs passed through to ``dot_product_attention``.
Visibility = dict[str, Optional[jax.Array]]


def relative_position_buckets(relative_position: jax.Array, *, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> jax.Array:
  """Bucket index of each ``key_position - query_position`` offset.

  Half the buckets (all of them when causal) hold exact small distances; the
  rest cover distances up to ``max_distance`` on a log scale, and farther
  offsets share the last bucket. Bidirectional buckets keep the sign: the
  upper half of the table is for keys after the query. Computed in float32 in
  the same order of operations as the reference implementations, so bucket
  boundaries agree exactly.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  offset = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    offset = (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, max_exact).astype(jnp.float32) / max_exact)
  scaled = log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  far = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return offset + jnp.where(distance < max_exact, distance, far)


def _dense(cfg: T5Config, features: layers.Features, kernel_axes: layers.AxisNames,
           stddev: float, *, axis: layers.Axes = -1, name: Optional[str] = None) -> nn.Module:
  """A bias-free projection from the config's dense hook (``dense_quantization``).

  The vocabulary projection (a kernel with a ``vocab`` axis) always stays float.
  """
  factory = (layers.FLOAT if "vocab" in kernel_axes
             else layers.dense_factory(cfg.dense_quantization, cfg.quantization_serving))
  return factory(features, kernel_axes, axis=axis, use_bias=False, dtype=cfg.compute_dtype,
                 param_dtype=cfg.parameter_dtype, init_stddev=stddev, name=name)


def _rms_norm(cfg: T5Config, name: Optional[str] = None) -> nn.Module:
  """T5's scale-only RMSNorm: the shared norm with ``norm_type="rmsnorm"``."""
  return layers.make_norm("rmsnorm", eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.parameter_dtype, name=name)


def _mlp(cfg: T5Config, name: Optional[str] = None) -> layers.Mlp:
  """The shared MLP without biases and with dropout on its hidden units.

  ``wo(dropout(act(wi_0 x) * wi_1 x))`` (gated) or ``wo(dropout(act(wi x)))``,
  inits ``d_model**-0.5`` (inputs) and ``d_ff**-0.5`` (output) as in T5.
  """
  return layers.Mlp(
      hidden_features=cfg.d_ff, activation=cfg.mlp_activation, use_bias=False,
      hidden_dropout_rate=cfg.dropout_rate, dtype=cfg.compute_dtype,
      param_dtype=cfg.parameter_dtype, init_stddev=cfg.d_model**-0.5,
      out_init_stddev=cfg.d_ff**-0.5,
      dense=layers.dense_factory(cfg.dense_quantization, cfg.quantization_serving), name=name)


class RelativePositionBias(nn.Module):
  """Learned scalar per (bucket, head), looked up for every query/key pair.

  Attributes:
    config: Model hyper-parameters.
    bidirectional: Encoder (True) or causal decoder (False) bucketing.
  """

  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Bias ``[batch or 1, heads, q_len, k_len]`` from positions ``[batch or 1, len]``."""
    cfg = self.config
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model**-0.5),
                                     ("relpos_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.parameter_dtype)
    relative = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = relative_position_buckets(
        relative, bidirectional=self.bidirectional, num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance)
    # Looked up in the transposed table, the heads axis comes out leading
    # ([heads, b, q, k]): moving it behind the batch axis shifts whole [q, k]
    # planes (no copy at all for one row of positions). Looking up rows of
    # the [buckets, heads] table instead gives [b, q, k, heads], whose
    # transpose (and that of its gradient) interleaves a 6-to-16-wide axis
    # element by element; on CPU that was the most expensive op of T5's
    # backward pass.
    bias = jnp.take(jnp.asarray(table, jnp.float32).T, buckets, axis=1)  # [heads, b, q, k]
    return jnp.moveaxis(bias, 0, 1)


class Attention(nn.Module):
  """T5 multi-head attention: no biases, no score scaling, keys/values projectable apart.

  Attributes:
    config: Model hyper-parameters.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    heads = (cfg.num_heads, cfg.head_dim)
    axes = ("embed", "heads", "kv")
    self.query = _dense(cfg, heads, axes, (cfg.d_model * cfg.head_dim)**-0.5)
    self.key = _dense(cfg, heads, axes, cfg.d_model**-0.5)
    self.value = _dense(cfg, heads, axes, cfg.d_model**-0.5)
    self.out = _dense(cfg, cfg.d_model, ("heads", "kv", "embed"),
                      (cfg.num_heads * cfg.head_dim)**-0.5, axis=(-2, -1))

  def project_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values ``[batch, len, heads, head_dim]`` of ``x``."""
    constraint = ("batch", "length", "heads", "kv")
    return (nn.with_logical_constraint(self.key(x), constraint),
            nn.with_logical_constraint(self.value(x), constraint))

  def __call__(self, x: jax.Array, key: jax.Array, value: jax.Array, *,
               visibility: Visibility, causal: bool, deterministic: bool) -> jax.Array:
    """Attention of ``x``'s queries over ``key``/``value``.

    ``visibility`` holds ``dot_product_attention``'s structured inputs
    (segment ids, dense relative-position ``bias``, MrT5's ``key_bias``);
    ``causal`` stays a Python bool so it is static under remat.
    """
    cfg = self.config
    query = nn.with_logical_constraint(self.query(x), ("batch", "length", "heads", "kv"))
    active = not deterministic and cfg.dropout_rate > 0.0
    out = dot_product_attention(
        query, key, value, causal=causal, **visibility,
        dropout_rng=self.make_rng("dropout") if active else None,
        dropout_rate=cfg.dropout_rate, deterministic=deterministic,
        backend=cfg.attention_backend, dtype=cfg.compute_dtype, scale=1.0)
    return self.out(out)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and MLP blocks with residuals."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, visibility: Visibility, deterministic: bool) -> jax.Array:
    cfg = self.config
    h = _rms_norm(cfg, "pre_attention_norm")(x)
    attention = Attention(cfg, name="attention")
    key, value = attention.project_key_value(h)
    h = attention(h, key, value, visibility=visibility, causal=False, deterministic=deterministic)
    x = x + layers.dropout(self, cfg.dropout_rate, h, deterministic)
    h = _mlp(cfg, "mlp")(_rms_norm(cfg, "pre_mlp_norm")(x), deterministic)
    x = x + layers.dropout(self, cfg.dropout_rate, h, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and MLP.

  With ``cache`` (decoding) ``x`` is one position per row: its key and value
  are written into the cache at ``position`` and attention runs over the
  cached prefix; cross-attention keys and values come from the cache too.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.pre_self_attention_norm = _rms_norm(cfg)
    self.self_attention = Attention(cfg)
    self.pre_cross_attention_norm = _rms_norm(cfg)
    self.cross_attention = Attention(cfg)
    self.pre_mlp_norm = _rms_norm(cfg)
    self.mlp = _mlp(cfg)

  def __call__(self, x: jax.Array, self_visibility: Visibility, encoded: Optional[jax.Array],
               cross_visibility: Visibility, deterministic: bool,
               cache: Optional[Cache] = None,
               position: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[Cache]]:
    # Positional arguments so that ``nn.remat`` can mark ``deterministic`` static.
    rate = self.config.dropout_rate
    h = self.pre_self_attention_norm(x)
    key, value = self.self_attention.project_key_value(h)
    if cache is not None:
      key = jax.lax.dynamic_update_slice_in_dim(cache["self_key"], key.astype(cache["self_key"].dtype),
                                                position, axis=1)
      value = jax.lax.dynamic_update_slice_in_dim(
          cache["self_value"], value.astype(cache["self_value"].dtype), position, axis=1)
      cache = dict(cache, self_key=key, self_value=value)
    # Training is causal by index; a decode step sees the cache through its
    # key segment ids (filled positions only).
    h = self.self_attention(h, key, value, visibility=self_visibility, causal=cache is None,
                            deterministic=deterministic)
    x = x + layers.dropout(self, rate, h, deterministic)
    h = self.pre_cross_attention_norm(x)
    if cache is not None:
      cross_key, cross_value = cache["cross_key"], cache["cross_value"]
    else:
      cross_key, cross_value = self.cross_attention.project_key_value(encoded)
    h = self.cross_attention(h, cross_key, cross_value, visibility=cross_visibility,
                             causal=False, deterministic=deterministic)
    x = x + layers.dropout(self, rate, h, deterministic)
    h = self.mlp(self.pre_mlp_norm(x), deterministic)
    x = x + layers.dropout(self, rate, h, deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache

  def cross_key_value(self, encoded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-attention keys and values of the encoder output (for the decode cache)."""
    return self.cross_attention.project_key_value(encoded)


def _remat(cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
  if policy == "none":
    return cls
  return nn.remat(cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


class DeleteGate(nn.Module):
  """MrT5's gate ``k * sigmoid(-(w . norm(h) + b))``; padding gets ``k``.

  ``w, b`` are the reference's ``Linear(d_model, 1)``: Xavier-uniform weights
  (bound ``sqrt(6 / (d_model + 1))``) and bias ``delete_gate_bias_init`` (1).
  """

  config: T5Config

  @nn.compact
  def __call__(self, hidden: jax.Array, valid: jax.Array) -> jax.Array:
    cfg = self.config
    h = _rms_norm(cfg, "norm")(hidden)
    logit = layers.DenseGeneral(
        features=1, kernel_axes=("embed", None), use_bias=False, dtype=jnp.float32,
        param_dtype=cfg.parameter_dtype, kernel_init=nn.initializers.xavier_uniform(),
        name="proj")(h)[..., 0]
    bias = self.param(
        "proj_bias",
        nn.with_logical_partitioning(nn.initializers.constant(cfg.delete_gate_bias_init), (None,)),
        (1,), cfg.parameter_dtype)
    gate = cfg.delete_gate_scale * jax.nn.sigmoid(-(logit + bias[0]))
    return jnp.where(valid, gate, cfg.delete_gate_scale).astype(jnp.float32)


class Encoder(nn.Module):
  """Embedding dropout, blocks (optionally gated), final norm and dropout."""

  config: T5Config
  embedder: nn.Module

  def setup(self):
    cfg = self.config
    layer_cls = _remat(EncoderLayer, cfg.remat_policy, (3,))
    self.layers = [layer_cls(cfg) for _ in range(cfg.num_encoder_layers)]
    self.relpos_bias = RelativePositionBias(cfg, bidirectional=True)
    self.final_norm = _rms_norm(cfg)
    if cfg.delete_gate_layer is not None:
      self.delete_gate = DeleteGate(cfg)

  def _run(self, x, segment_ids, positions, gate, first: int, last: int, deterministic: bool):
    visibility = dict(q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                      bias=self.relpos_bias(positions, positions))
    gated = visibility if gate is None else dict(visibility, key_bias=gate)
    for index in range(first, last):
      use_gate = self.config.delete_gate_layer is not None and index >= self.config.delete_gate_layer
      x = self.layers[index](x, gated if use_gate else visibility, deterministic)
    return x

  def lower(self, input_ids: jax.Array, segment_ids: jax.Array, positions: jax.Array,
            deterministic: bool = True, gate_override: Optional[jax.Array] = None):
    """Blocks before the delete gate; returns (hidden, gate or None)."""
    cfg = self.config
    x = layers.dropout(self, cfg.dropout_rate, self.embedder(input_ids), deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    split = cfg.num_encoder_layers if cfg.delete_gate_layer is None else cfg.delete_gate_layer
    x = self._run(x, segment_ids, positions, None, 0, split, deterministic)
    gate = None
    if cfg.delete_gate_layer is not None:
      gate = self.delete_gate(x, segment_ids > 0)
      if gate_override is not None:
        gate = jnp.asarray(gate_override, jnp.float32)
    return x, gate

  def upper(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array,
            gate: Optional[jax.Array], deterministic: bool = True) -> jax.Array:
    """Blocks from the delete gate on, then the final norm."""
    cfg = self.config
    if cfg.delete_gate_layer is not None:
      x = self._run(x, segment_ids, positions, gate, cfg.delete_gate_layer,
                    cfg.num_encoder_layers, deterministic)
    x = layers.dropout(self, cfg.dropout_rate, self.final_norm(x), deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def __call__(self, input_ids, segment_ids, positions, deterministic=True, gate_override=None):
    x, gate = self.lower(input_ids, segment_ids, positions, deterministic, gate_override)
    return self.upper(x, segment_ids, positions, gate, deterministic), gate


class Decoder(nn.Module):
  """Causal decoder over targets, attending to the encoder output."""

  config: T5Config
  embedder: nn.Module

  def setup(self):
    cfg = self.config
    layer_cls = _remat(DecoderLayer, cfg.remat_policy, (5,))
    self.layers = [layer_cls(cfg) for _ in range(cfg.num_decoder_layers)]
    self.relpos_bias = RelativePositionBias(cfg, bidirectional=False)
    self.final_norm = _rms_norm(cfg)
    if not cfg.tie_word_embeddings:
      self.logits_dense = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), cfg.d_model**-0.5)

  def _logits(self, x: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    x = layers.dropout(self, cfg.dropout_rate, self.final_norm(x), deterministic)
    if cfg.tie_word_embeddings:
      logits = self.embedder.attend(x * cfg.d_model**-0.5)
    else:
      logits = self.logits_dense(x)
    return jnp.asarray(nn.with_logical_constraint(logits, ("batch", "length", "vocab")), jnp.float32)

  def __call__(self, input_ids: jax.Array, segment_ids: jax.Array, encoded: jax.Array,
               encoder_segment_ids: jax.Array, gate: Optional[jax.Array],
               deterministic: bool = True, return_hidden: bool = False) -> jax.Array:
    """Logits ``[batch, len, vocab]``, or the normalised final hidden states with ``return_hidden``."""
    length = input_ids.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None]
    self_visibility = dict(q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                           bias=self.relpos_bias(index, index))
    cross_visibility = dict(q_segment_ids=segment_ids, kv_segment_ids=encoder_segment_ids,
                            key_bias=gate)
    x = layers.dropout(self, self.config.dropout_rate, self.embedder(input_ids), deterministic)
    for layer in self.layers:
      x, _ = layer(x, self_visibility, encoded, cross_visibility, deterministic)
    if not return_hidden:
      return self._logits(x, deterministic)
    return layers.dropout(self, self.config.dropout_rate, self.final_norm(x), deterministic)

  def init_cache(self, encoded: jax.Array, encoder_valid: jax.Array, gate: Optional[jax.Array],
                 max_decode_length: int) -> Cache:
    """Empty self-attention caches and the encoder's cross-attention keys/values."""
    cfg = self.config
    rows = encoded.shape[0]
    empty = jnp.zeros((rows, max_decode_length, cfg.num_heads, cfg.head_dim), cfg.compute_dtype)
    cache: Cache = {"encoder_valid": encoder_valid.astype(bool)}
    if gate is not None:
      cache["encoder_gate"] = gate
    for i, layer in enumerate(self.layers):
      key, value = layer.cross_key_value(encoded)
      cache[f"layers_{i}"] = {"self_key": empty, "self_value": empty,
                              "cross_key": key, "cross_value": value}
    return cache

  def decode_step(self, token_ids: jax.Array, cache: Cache,
                  position: jax.Array) -> tuple[jax.Array, Cache]:
    """Logits ``[rows, vocab]`` for one new token per row at ``position``, and the cache."""
    max_length = cache["layers_0"]["self_key"].shape[1]
    keys = jnp.arange(max_length, dtype=jnp.int32)[None]
    query = jnp.reshape(jnp.asarray(position, jnp.int32), (1, 1))
    rows = token_ids.shape[0]
    one_query = jnp.ones((rows, 1), jnp.int32)
    # Keys up to the current position are filled: segment 1; the rest 0.
    filled = jnp.broadcast_to((keys <= query).astype(jnp.int32), (rows, max_length))
    self_visibility = dict(q_segment_ids=one_query, kv_segment_ids=filled,
                           bias=self.relpos_bias(query, keys))
    cross_visibility = dict(q_segment_ids=one_query,
                            kv_segment_ids=cache["encoder_valid"].astype(jnp.int32),
                            key_bias=cache.get("encoder_gate"))
    x = self.embedder(token_ids)
    new_cache = dict(cache)
    for i, layer in enumerate(self.layers):
      x, new_cache[f"layers_{i}"] = layer(x, self_visibility, None, cross_visibility, True,
                                          cache[f"layers_{i}"], position)
    return self._logits(x, True)[:, 0], new_cache


class EncoderDecoder(nn.Module):
  """The whole T5: shared embedding, encoder, decoder.

  Attributes:
    config: Model hyper-parameters; ``vocab_size`` must be set.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    if cfg.vocab_size is None:
      raise ValueError("T5Config.vocab_size is None: call config.with_vocab_size(n) with the task's "
                       "vocabulary size before building the model.")
    self.token_embedder = layers.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.d_model, axes=("vocab", "embed"),
        dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, init_stddev=1.0)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def _defaults(self, input_ids, segment_ids, positions):
    if segment_ids is None:
      segment_ids = (input_ids != self.config.pad_id).astype(jnp.int32)
    if positions is None:
      positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None]
    return segment_ids, positions

  def encode(self, input_ids: jax.Array, segment_ids: Optional[jax.Array] = None,
             positions: Optional[jax.Array] = None, *, deterministic: bool = True,
             gate_override: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[jax.Array]]:
    """Encoder output ``[batch, len, d_model]`` and the MrT5 gate ``[batch, len]`` (or None).

    ``positions`` only feed the relative position bias; within a packed
    segment the offsets equal those of the row index, so the default
    ``arange`` is right for packed rows too.
    """
    segment_ids, positions = self._defaults(input_ids, segment_ids, positions)
    return self.encoder(input_ids, segment_ids, positions, deterministic, gate_override)

  def encode_lower(self, input_ids, segment_ids=None, positions=None, *, deterministic=True,
                   gate_override=None):
    segment_ids, positions = self._defaults(input_ids, segment_ids, positions)
    return self.encoder.lower(input_ids, segment_ids, positions, deterministic, gate_override)

  def encode_upper(self, hidden, segment_ids, positions, gate, *, deterministic=True):
    return self.encoder.upper(hidden, segment_ids, positions, gate, deterministic)

  def decode(self, encoded: jax.Array, encoder_segment_ids: jax.Array,
             decoder_input_ids: jax.Array, decoder_segment_ids: Optional[jax.Array] = None, *,
             gate: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
    """Float32 logits ``[batch, target_len, vocab]`` (teacher forcing).

    ``decoder_segment_ids`` default to all ones: every target position is real
    (decoder inputs start with the pad id as the start token, so they cannot
    be told apart from padding by value).
    """
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones_like(decoder_input_ids)
    return self.decoder(decoder_input_ids, decoder_segment_ids, encoded, encoder_segment_ids, gate,
                        deterministic)

  def __call__(self, encoder_input_ids: jax.Array, decoder_input_ids: jax.Array, *,
               encoder_segment_ids: Optional[jax.Array] = None,
               decoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               deterministic: bool = True,
               gate_override: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[jax.Array]]:
    """Logits ``[batch, target_len, vocab]`` and the MrT5 gate (None without one)."""
    encoder_segment_ids, encoder_positions = self._defaults(
        encoder_input_ids, encoder_segment_ids, encoder_positions)
    encoded, gate = self.encoder(encoder_input_ids, encoder_segment_ids, encoder_positions,
                                 deterministic, gate_override)
    logits = self.decode(encoded, encoder_segment_ids, decoder_input_ids, decoder_segment_ids,
                         gate=gate, deterministic=deterministic)
    return logits, gate

  def init_cache(self, encoded: jax.Array, encoder_segment_ids: jax.Array,
                 gate: Optional[jax.Array], max_decode_length: int) -> Cache:
    """A decode cache whose every leaf has the batch as its leading axis."""
    return self.decoder.init_cache(encoded, encoder_segment_ids > 0, gate, max_decode_length)

  def decode_step(self, token_ids: jax.Array, cache: Cache, position: jax.Array):
    return self.decoder.decode_step(token_ids, cache, position)
