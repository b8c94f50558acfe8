"""BERT-family bidirectional Transformer encoder and its task heads (Flax Linen).

One ``EncoderConfig`` covers original BERT (post-LN, learned positions),
MosaicBERT (ALiBi, gated GELU) and crammed BERT (pre-LN, gated GELU, no
biases). Rows may be packed with several documents: ``segment_ids`` keep
attention inside a document and per-token ``positions`` restart at 0 for
each one, so every position scheme sees a document exactly as if it were
alone in its row.

Parameter tree (``params`` collection) of ``EncoderForMaskedLM``::

  encoder/embeddings/{token_embedder,position_embedder,token_type_embedder}/embedding
  encoder/embeddings/norm/{scale,bias}
  encoder/layers_<i>/attention/{query,key,value,out}/{kernel,bias}
  encoder/layers_<i>/{attention_norm,mlp_norm}/{scale,bias}
  encoder/layers_<i>/mlp/{wi | wi_0,wi_1, wo}/{kernel,bias}
  encoder/final_norm/...              (pre-LN only)
  mlm_head/{transform,norm}/...; mlm_head/bias (tied, when use_bias) or mlm_head/decoder/...

With ``scan_layers`` the blocks are one module whose parameters are stacked
along a new leading axis of size ``num_layers`` (logical axis ``layers``)::

  encoder/layers/attention/{query,key,value,out}/{kernel,bias}   [num_layers, ...]
  encoder/layers/{attention_norm,mlp_norm,mlp}/...               [num_layers, ...]

Biases exist only when ``use_bias``; ``position_embedder`` only for learned
positions, ``token_type_embedder`` only when ``num_token_types > 0``.
``EncoderForSequenceClassification`` has ``encoder``, ``pooler`` and
``classifier``. Dropout draws from the ``dropout`` rng collection.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models import layers
from lmlab.models.attention import dot_product_attention
from lmlab.models.bigs import BiGSLayer
from lmlab.models.config import REMAT_POLICIES, EncoderConfig

POOLINGS = ("cls", "mean")


def _default_segment_ids(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """Segment 1 for real tokens and 0 for padding (one document per row)."""
  return (input_ids != pad_id).astype(jnp.int32)


def _dense(cfg: EncoderConfig, features: layers.Features, kernel_axes: layers.AxisNames, *,
           axis: layers.Axes = -1, quantize: bool = True, name: Optional[str] = None) -> nn.Module:
  """A dense layer with bias, dtypes and init from the config.

  Inside the blocks (``quantize``) it comes from the config's dense hook
  (``dense_quantization``); heads, pooler and classifier stay float.
  """
  factory = (layers.dense_factory(cfg.dense_quantization, cfg.quantization_serving)
             if quantize else layers.FLOAT)
  return factory(features, kernel_axes, axis=axis, use_bias=cfg.use_bias,
                 dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
                 init_stddev=cfg.initializer_range, name=name)


def _norm(cfg: EncoderConfig, name: Optional[str] = None) -> nn.Module:
  """The config's norm (type, epsilon, bias, dtypes)."""
  return layers.make_norm(cfg.norm_type, eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.parameter_dtype, use_bias=cfg.use_bias, name=name)


def _embed(cfg: EncoderConfig, num_embeddings: int, axes: layers.AxisNames) -> layers.Embed:
  """A ``d_model``-wide embedding table with the config's dtypes and init."""
  return layers.Embed(num_embeddings=num_embeddings, features=cfg.d_model, axes=axes,
                      dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
                      init_stddev=cfg.initializer_range)


def _dropout(rate: float, x: jax.Array, deterministic: bool) -> jax.Array:
  """Dropout that creates no module (and needs no rng) when the rate is zero."""
  if rate <= 0.0:
    return x
  return layers.Dropout(rate)(x, deterministic=deterministic)


class SelfAttention(nn.Module):
  """Multi-head self-attention with per-head q/k/v projections and an output projection.

  Attributes:
    config: Encoder hyper-parameters.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, segment_ids: jax.Array, positions: jax.Array,
               deterministic: bool) -> jax.Array:
    cfg = self.config
    shape = (cfg.num_heads, cfg.resolved_head_dim)
    qkv_axes = ("embed", "heads", "kv")
    head_constraint = ("batch", "length", "heads", "kv")
    query = _dense(cfg, shape, qkv_axes, name="query")(x)
    key = _dense(cfg, shape, qkv_axes, name="key")(x)
    value = _dense(cfg, shape, qkv_axes, name="value")(x)
    if cfg.position_scheme == "rope":
      query = layers.apply_rotary(query, positions, cfg.rope_theta)
      key = layers.apply_rotary(key, positions, cfg.rope_theta)
    query = nn.with_logical_constraint(query, head_constraint)
    key = nn.with_logical_constraint(key, head_constraint)
    value = nn.with_logical_constraint(value, head_constraint)
    rate = cfg.attention_dropout_rate
    dropout_rng = None if deterministic or rate <= 0.0 else self.make_rng("dropout")
    alibi = cfg.position_scheme == "alibi"
    out = dot_product_attention(
        query, key, value, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
        q_positions=positions if alibi else None, kv_positions=positions if alibi else None,
        alibi_slopes=layers.alibi_slopes(cfg.num_heads) if alibi else None,
        dropout_rng=dropout_rng, dropout_rate=rate, deterministic=deterministic,
        backend=cfg.attention_backend, dtype=cfg.compute_dtype)
    out = nn.with_logical_constraint(out, head_constraint)
    return _dense(cfg, cfg.d_model, ("heads", "kv", "embed"), axis=(-2, -1), name="out")(out)


class EncoderLayer(nn.Module):
  """One Transformer block: self-attention then MLP, each with residual and norm.

  Post-LN (BERT): ``x = norm(x + dropout(sublayer(x)))``.
  Pre-LN: ``x = x + dropout(sublayer(norm(x)))``.

  Attributes:
    config: Encoder hyper-parameters.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array, bias: Optional[jax.Array],
               positions: jax.Array, deterministic: bool) -> jax.Array:
    # Positional arguments so that ``nn.remat`` can mark ``deterministic`` static.
    # ``bias`` is unused (ALiBi is computed inside attention); it keeps the
    # signature shared with the BiGS block.
    del bias
    cfg = self.config
    attention = SelfAttention(cfg, name="attention")
    mlp = layers.Mlp(
        hidden_features=cfg.d_ff, activation=cfg.mlp_activation, use_bias=cfg.use_bias,
        dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype,
        init_stddev=cfg.initializer_range,
        dense=layers.dense_factory(cfg.dense_quantization, cfg.quantization_serving), name="mlp")
    attention_norm = _norm(cfg, name="attention_norm")
    mlp_norm = _norm(cfg, name="mlp_norm")

    def attend(h: jax.Array) -> jax.Array:
      h = attention(h, segment_ids=segment_ids, positions=positions, deterministic=deterministic)
      return _dropout(cfg.dropout_rate, h, deterministic)

    def feed_forward(h: jax.Array) -> jax.Array:
      return _dropout(cfg.dropout_rate, mlp(h, deterministic=deterministic), deterministic)

    if cfg.norm_position == "pre":
      x = x + attend(attention_norm(x))
      x = x + feed_forward(mlp_norm(x))
    else:
      x = attention_norm(x + attend(x))
      x = mlp_norm(x + feed_forward(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _scanned(layer_cls: type[nn.Module]) -> type[nn.Module]:
  """``layer_cls`` with the ``(carry, output)`` signature that ``nn.scan`` expects."""

  class Scanned(layer_cls):

    def __call__(self, x: jax.Array, mask: jax.Array, bias: Optional[jax.Array],
                 positions: jax.Array, deterministic: bool) -> tuple[jax.Array, None]:
      return super().__call__(x, mask, bias, positions, deterministic), None

  Scanned.__name__ = Scanned.__qualname__ = f"Scanned{layer_cls.__name__}"
  return Scanned


# Index of ``deterministic`` in ``EncoderLayer.__call__`` counting ``self`` as 0,
# which is how ``nn.remat`` counts ``static_argnums``.
_DETERMINISTIC_ARGNUM = 5


@functools.lru_cache(maxsize=None)
def _layer_class(mixer: str, scan_length: int, remat_policy: str) -> type[nn.Module]:
  """The block class for ``mixer`` lifted through ``nn.remat`` and/or ``nn.scan``.

  Args:
    mixer: ``attention`` (``EncoderLayer``) or ``bigs`` (``BiGSLayer``).
    scan_length: Number of scanned layers; 0 means no scan.
    remat_policy: Key of ``REMAT_POLICIES``.
  """
  layer_cls = BiGSLayer if mixer == "bigs" else EncoderLayer
  if scan_length:
    layer_cls = _scanned(layer_cls)
  if remat_policy != "none":
    # Inside scan, XLA cannot CSE the recompute into the forward pass anyway.
    layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[remat_policy],
                         prevent_cse=not scan_length, static_argnums=(_DETERMINISTIC_ARGNUM,))
  if scan_length:
    layer_cls = nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 4,  # segment ids / token mask, bias, positions, deterministic
        length=scan_length,
        metadata_params={nn.PARTITION_NAME: "layers"})
  return layer_cls


class Embeddings(nn.Module):
  """Token (+ learned position) (+ token type) embeddings, optional norm, dropout.

  Attributes:
    config: Encoder hyper-parameters.
  """

  config: EncoderConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = _embed(cfg, cfg.vocab_size, ("vocab", "embed"))
    if cfg.position_scheme == "learned":
      self.position_embedder = _embed(cfg, cfg.max_positions, ("positions", "embed"))
    if cfg.num_token_types > 0:
      self.token_type_embedder = _embed(cfg, cfg.num_token_types, ("token_types", "embed"))
    if cfg.embedding_norm:
      self.norm = _norm(cfg)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def __call__(self, input_ids: jax.Array, positions: jax.Array,
               token_type_ids: Optional[jax.Array], deterministic: bool) -> jax.Array:
    cfg = self.config
    x = self.token_embedder(input_ids)
    if cfg.position_scheme == "learned":
      x = x + self.position_embedder(positions)
    if cfg.num_token_types > 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + self.token_type_embedder(token_type_ids)
    elif token_type_ids is not None:
      raise ValueError("token_type_ids were given but EncoderConfig.num_token_types is 0.")
    if cfg.embedding_norm:
      x = self.norm(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if cfg.dropout_rate > 0.0:
      x = self.dropout(x, deterministic=deterministic)
    return x

  def attend(self, x: jax.Array) -> jax.Array:
    """Float32 scores of hidden states against the token embedding table."""
    return self.token_embedder.attend(x)


class Encoder(nn.Module):
  """Bidirectional Transformer encoder mapping token ids to hidden states.

  Attributes:
    config: Encoder hyper-parameters; ``vocab_size`` must be set.
  """

  config: EncoderConfig

  def setup(self):
    cfg = self.config
    if cfg.vocab_size is None:
      raise ValueError("EncoderConfig.vocab_size is None: call config.with_vocab_size(n) with the "
                       "task's vocabulary size before building the model.")
    self.embeddings = Embeddings(cfg)
    if cfg.scan_layers:
      self.layers = _layer_class(cfg.mixer, cfg.num_layers, cfg.remat_policy)(cfg)
    else:  # A list names its modules layers_<i>.
      layer_cls = _layer_class(cfg.mixer, 0, cfg.remat_policy)
      self.layers = [layer_cls(cfg) for _ in range(cfg.num_layers)]
    if self._has_final_norm:
      self.final_norm = _norm(cfg)

  @property
  def _has_final_norm(self) -> bool:
    """Pre-LN Transformers end with a norm; the BiGS reference does not."""
    return self.config.norm_position == "pre" and self.config.mixer == "attention"

  def __call__(self, input_ids: jax.Array, *, segment_ids: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    """Hidden states ``[batch, length, d_model]`` in the compute dtype.

    Args:
      input_ids: ``[batch, length]`` token ids.
      segment_ids: ``[batch, length]``; tokens attend only within equal
        non-zero ids, 0 is padding. Default: ``input_ids != pad_id``.
      positions: ``[batch, length]`` position of each token in its document.
        Default: ``arange(length)``.
      token_type_ids: ``[batch, length]`` sentence A/B ids; default zeros.
      deterministic: Disables dropout when ``True``.

    Raises:
      ValueError: If ``length`` exceeds ``max_positions``.
    """
    cfg = self.config
    batch, length = input_ids.shape
    if length > cfg.max_positions:
      raise ValueError(
          f"Input length {length} exceeds EncoderConfig.max_positions={cfg.max_positions}; "
          "truncate inputs or raise EncoderConfig.max_positions.")
    if segment_ids is None:
      segment_ids = _default_segment_ids(input_ids, cfg.pad_id)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    # Attention blocks take segment ids (the attention backend builds the
    # mask and any ALiBi bias); BiGS blocks take a per-token mask.
    mask, bias = (segment_ids > 0 if cfg.mixer == "bigs" else segment_ids), None
    x = self.embeddings(input_ids, positions, token_type_ids, deterministic)
    if cfg.scan_layers:
      x, _ = self.layers(x, mask, bias, positions, deterministic)
    else:
      for layer in self.layers:
        x = layer(x, mask, bias, positions, deterministic)
    if self._has_final_norm:
      x = self.final_norm(x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied output projection: float32 scores against the input token embeddings."""
    return self.embeddings.attend(x)


class MaskedLMHead(nn.Module):
  """BERT MLM head: dense -> gelu -> norm -> vocabulary projection (+ bias).

  Attributes:
    config: Encoder hyper-parameters.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden: jax.Array,
               attend: Optional[Callable[[jax.Array], jax.Array]] = None) -> jax.Array:
    cfg = self.config
    h = _dense(cfg, cfg.d_model, ("embed", "mlp"), quantize=False, name="transform")(hidden)
    h = layers.activation_fn("gelu")(h)
    h = _norm(cfg, name="norm")(h)
    if attend is not None:
      logits = attend(h)
      if cfg.use_bias:
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.parameter_dtype)
        logits = logits + jnp.asarray(bias, jnp.float32)
    else:
      logits = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), quantize=False,
                            name="decoder")(h)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return jnp.asarray(logits, jnp.float32)


class EncoderForMaskedLM(nn.Module):
  """Encoder plus MLM head; returns float32 logits ``[batch, length, vocab_size]``.

  With ``tie_output_embedding`` the decoder is the transposed input embedding
  plus a ``("vocab",)`` bias, which reproduces the parameter layout (and
  count) of Hugging Face's ``BertForMaskedLM``.

  ``prediction_positions`` (``[batch, k]`` indices) restricts the head to the
  positions that carry a loss, as original BERT did: with 15% masking and an
  8k+ vocabulary the head is most of the step's work, so this cuts it ~6x.
  Logits are then ``[batch, k, vocab_size]``.

  Attributes:
    config: Encoder hyper-parameters.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, segment_ids: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True,
               prediction_positions: Optional[jax.Array] = None) -> jax.Array:
    encoder = Encoder(self.config, name="encoder")
    hidden = encoder(input_ids, segment_ids=segment_ids, positions=positions,
                     token_type_ids=token_type_ids, deterministic=deterministic)
    if prediction_positions is not None:
      hidden = jnp.take_along_axis(hidden, prediction_positions[..., None], axis=1)
    attend = encoder.attend if self.config.tie_output_embedding else None
    return MaskedLMHead(self.config, name="mlm_head")(hidden, attend)


class EncoderForSequenceClassification(nn.Module):
  """Encoder, pooler (dense + tanh), dropout and a linear classifier.

  ``logits = classifier(dropout(tanh(pooler(v))))`` where ``v`` is

  * ``cls``: the first token's hidden state. This is BERT's pooled-[CLS]
    classifier, exactly Hugging Face's ``BertForSequenceClassification``
    (``pooler`` = ``bert.pooler.dense``; ``lmlab.convert.hf_bert`` maps both
    ways), so a fine-tune from an imported BERT starts from its pooler.
  * ``mean``: the mean over non-padding tokens (``segment_ids > 0``), as the
    BiGS reference's ``non_padding_mean`` pooler.

  Attributes:
    config: Encoder hyper-parameters.
    num_classes: Number of output classes (1 for regression).
    pooling: ``cls`` or ``mean`` (``POOLINGS``).
  """

  config: EncoderConfig
  num_classes: int
  pooling: str = "cls"

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, segment_ids: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    """Float32 logits ``[batch, num_classes]``."""
    cfg = self.config
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS}.")
    if segment_ids is None:
      segment_ids = _default_segment_ids(input_ids, cfg.pad_id)
    hidden = Encoder(cfg, name="encoder")(
        input_ids, segment_ids=segment_ids, positions=positions,
        token_type_ids=token_type_ids, deterministic=deterministic)
    if self.pooling == "cls":
      pooled = hidden[:, 0]
    else:
      weights = (segment_ids > 0).astype(jnp.float32)[..., None]
      total = jnp.sum(jnp.asarray(hidden, jnp.float32) * weights, axis=1)
      pooled = total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    pooled = jnp.tanh(_dense(cfg, cfg.d_model, ("embed", "mlp"), quantize=False,
                                   name="pooler")(pooled))
    pooled = _dropout(cfg.dropout_rate, pooled, deterministic)
    logits = _dense(cfg, self.num_classes, ("mlp", None), quantize=False,
                          name="classifier")(pooled)
    return jnp.asarray(logits, jnp.float32)
