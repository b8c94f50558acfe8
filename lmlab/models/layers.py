"""Building blocks of the encoder, each parameter tagged with logical axis names.

Every parameter is created through ``nn.with_logical_partitioning`` so that the
partitioning rules (owned outside the model code) can map its axes onto a
device mesh. The logical vocabulary used here is ``batch, length, embed, mlp,
heads, kv, vocab, token_types, positions``; ``None`` marks an axis that is
always replicated (only the tiny class axis of a classifier uses it).

The helpers take an ``EncoderConfig`` where they need several of its fields,
which keeps call sites short and the choices (norm type, activation, dtypes)
in one place.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.models.config import EncoderConfig

AxisNames = tuple[Optional[str], ...]
Features = Union[int, tuple[int, ...]]
Axes = Union[int, tuple[int, ...]]


def _normalize_axes(axes: Union[int, Sequence[int]], ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


class DenseGeneral(nn.Module):
  """Linear map over one or more trailing input axes onto one or more output axes.

  Written out (rather than wrapping ``nn.DenseGeneral``) so the kernel is
  created directly in its final multi-axis shape and receives exactly the
  logical names given here.

  Attributes:
    features: Output shape appended after the batch axes, e.g. ``(heads, head_dim)``.
    kernel_axes: Logical names of the kernel: contracted input axes first,
      then the output axes.
    axis: Input axes that are contracted.
    use_bias: Add a bias of shape ``features`` (named by the output part of
      ``kernel_axes``).
    dtype: Compute dtype; inputs and kernel are cast to it.
    param_dtype: Storage dtype of the parameters.
    init_stddev: Stddev of the truncated-normal kernel init.
  """

  features: Features
  kernel_axes: AxisNames
  axis: Axes = -1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_stddev: float = 0.02

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axes = _normalize_axes(self.axis, x.ndim)
    in_shape = tuple(x.shape[a] for a in axes)
    if len(self.kernel_axes) != len(in_shape) + len(features):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match a kernel of shape "
                       f"{in_shape + features}.")
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(
            nn.initializers.truncated_normal(stddev=self.init_stddev), self.kernel_axes),
        in_shape + features, self.param_dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    if axes == tuple(range(x.ndim - len(axes), x.ndim)):
      # Contracting trailing axes: one 2-D matmul over all leading (token) axes.
      # Same arithmetic as the dot_general below, but XLA:CPU runs its
      # backward pass ~1.6x faster without the multi-axis weight-gradient
      # transposes (measured on a gated MLP).
      lead = x.shape[:x.ndim - len(axes)]
      size_in, size_out = math.prod(in_shape), math.prod(features)
      y = jnp.dot(x.reshape(-1, size_in), kernel.reshape(size_in, size_out))
      y = y.reshape(lead + features)
    else:
      contract = (axes, tuple(range(len(axes))))
      y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
    return add_output_bias(self, y, features, self.kernel_axes[len(in_shape):])


def add_output_bias(module: nn.Module, y: jax.Array, features: tuple[int, ...],
                    bias_axes: tuple[str, ...]) -> jax.Array:
  """Adds a zero-initialised ``bias`` over the output axes when ``module.use_bias``.

  Shared by ``DenseGeneral`` and the quantized dense layers so their bias
  parameter is named, shaped and partitioned identically.
  """
  if not module.use_bias:
    return y
  bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                      features, module.param_dtype)
  return y + jnp.asarray(bias, module.dtype)


def dense(config: EncoderConfig, features: Features, kernel_axes: AxisNames, *, axis: Axes = -1,
          use_bias: Optional[bool] = None, quantize: bool = True,
          name: Optional[str] = None) -> nn.Module:
  """A dense layer with dtypes, init and (by default) bias taken from the config.

  ``DenseGeneral``, or with ``config.dense_quantization`` its quantization-aware
  drop-in (``lmlab.models.quantized``: same parameters). ``quantize=False`` keeps
  a layer float whatever the config (heads, poolers, classifiers).
  """
  cls = DenseGeneral
  if quantize and (config.dense_quantization != "none" or config.quantization_serving):
    from lmlab.models import quantized as quantization  # pylint: disable=import-outside-toplevel  (imports this module)
    cls = quantization.dense_class(config.dense_quantization, config.quantization_serving)
  return cls(
      features=features, kernel_axes=kernel_axes, axis=axis,
      use_bias=config.use_bias if use_bias is None else use_bias,
      dtype=config.compute_dtype, param_dtype=config.parameter_dtype,
      init_stddev=config.initializer_range, name=name)


def make_norm(config: EncoderConfig, name: Optional[str] = None) -> nn.Module:
  """Flax's LayerNorm or RMSNorm as the config asks, with ``("embed",)`` parameters.

  Statistics are reduced in float32 whatever the compute dtype; LayerNorm uses
  the two-pass variance (as BERT implementations do) rather than E[x^2]-E[x]^2.
  """
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  common = dict(epsilon=config.norm_eps, dtype=config.compute_dtype,
                param_dtype=config.parameter_dtype, scale_init=scale_init,
                force_float32_reductions=True, name=name)
  if config.norm_type == "rmsnorm":
    return nn.RMSNorm(**common)
  return nn.LayerNorm(use_bias=config.use_bias, use_fast_variance=False,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      **common)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """Elementwise activation for an MLP activation name (``gated_`` prefix ignored).

  ``gelu`` is the exact (erf) form, as in the original BERT and MosaicBERT;
  ``gelu_tanh`` is the tanh approximation that T5 v1.1 (Hugging Face's
  ``gelu_new``) uses.
  """
  base = name[len("gated_"):] if name.startswith("gated_") else name
  table = {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "silu": jax.nn.silu,
  }
  if base not in table:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(table)} (optionally gated_).")
  return table[base]


class Mlp(nn.Module):
  """Position-wise feed-forward block: ``wo(act(wi(x)))`` or gated ``wo(act(wi_0(x)) * wi_1(x))``.

  As in BERT, there is no dropout on the hidden activations; the caller
  applies dropout to the sub-layer output.

  Attributes:
    config: Encoder hyper-parameters (``d_ff``, ``mlp_activation``, dtypes).
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    cfg = self.config
    act = activation_fn(cfg.mlp_activation)
    if cfg.mlp_activation.startswith("gated_"):
      gate = dense(cfg, cfg.d_ff, ("embed", "mlp"), name="wi_0")(x)
      linear = dense(cfg, cfg.d_ff, ("embed", "mlp"), name="wi_1")(x)
      hidden = act(gate) * linear
    else:
      hidden = act(dense(cfg, cfg.d_ff, ("embed", "mlp"), name="wi")(x))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    del deterministic  # kept for a uniform sub-layer signature
    return dense(cfg, cfg.d_model, ("mlp", "embed"), name="wo")(hidden)


class Embed(nn.Module):
  """A lookup table with logical names; ``attend`` reuses it as an output projection.

  Attributes:
    num_embeddings: Rows of the table.
    features: Width of each row.
    axes: Logical names of the table, e.g. ``("vocab", "embed")``.
    dtype: Dtype of the looked-up activations.
    param_dtype: Storage dtype of the table.
    init_stddev: Stddev of the truncated-normal init.
  """

  num_embeddings: int
  features: int
  axes: AxisNames
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_stddev: float = 0.02

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(
            nn.initializers.truncated_normal(stddev=self.init_stddev), self.axes),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """Scores of ``x [..., features]`` against every row, accumulated in float32."""
    table = jnp.asarray(self.embedding, self.dtype)
    return jnp.einsum("...d,vd->...v", jnp.asarray(x, self.dtype), table,
                      preferred_element_type=jnp.float32)


def make_embed(config: EncoderConfig, num_embeddings: int, axes: AxisNames,
               name: Optional[str] = None) -> Embed:
  """An ``Embed`` of width ``d_model`` with dtypes and init from the config."""
  return Embed(num_embeddings=num_embeddings, features=config.d_model, axes=axes,
               dtype=config.compute_dtype, param_dtype=config.parameter_dtype,
               init_stddev=config.initializer_range, name=name)


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotates ``x [batch, length, heads, head_dim]`` by angles proportional to ``positions``.

  Uses the "rotate half" pairing (dimension ``i`` with ``i + head_dim/2``).
  Angles come from the given ``positions [batch, length]`` rather than from
  the row index, so in a packed row every document starts again at 0. The
  rotation is computed in float32 and cast back to ``x``'s dtype.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"Rotary embeddings need an even head_dim, got {head_dim}.")
  half = head_dim // 2
  inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  xf = jnp.asarray(x, jnp.float32)
  first, second = xf[..., :half], xf[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return jnp.asarray(rotated, x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Per-head ALiBi slopes (Press et al., 2022), as float32 numpy.

  For ``n`` a power of two the slopes are the geometric sequence
  ``2^(-8/n), 2^(-16/n), ..., 2^-8``. Otherwise the slopes of the largest
  power of two ``p < n`` are used, followed by every other slope of ``2p``
  heads until ``n`` slopes exist, which interleaves the missing heads between
  the existing ones.
  """

  def geometric(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  if num_heads <= 0:
    raise ValueError(f"num_heads must be positive, got {num_heads}.")
  if math.log2(num_heads).is_integer():
    slopes = geometric(num_heads)
  else:
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(slopes, np.float32)
