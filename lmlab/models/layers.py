"""Building blocks shared by the networks, each parameter tagged with logical axis names.

Every parameter is created through ``nn.with_logical_partitioning`` so that the
partitioning rules (owned outside the model code) can map its axes onto a
device mesh. The logical vocabulary used here is ``batch, length, embed, mlp,
heads, kv, vocab, token_types, positions``; ``None`` marks an axis that is
always replicated (only the tiny class axis of a classifier uses it).

The helpers take plain arguments (widths, dtypes, init stddevs, norm type,
activation name, dropout rate), never a network config: each network turns
its own config into them, so the BERT-family encoder and T5 share one norm,
one MLP and one dense hook. Dense layers inside blocks come from a
``DenseFactory`` (``lmlab.models.dense``); :func:`dense_factory` picks its
layer class by quantization name, which is where ``lmlab.models.quantized``
plugs in.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Partly re-exported: the networks reach every shared building block through this module.
from lmlab.models.dense import (FLOAT, Axes, AxisNames, DenseAdapter, DenseFactory, DenseGeneral,
                                Features)
from lmlab.models.quantized import QUANTIZED_LAYERS


def dense_factory(quantization: str = "none", serving: bool = False,
                  adapters: Sequence[DenseAdapter] = ()) -> DenseFactory:
  """The dense hook of a network's blocks for a ``dense_quantization`` name.

  Args:
    quantization: ``none`` (``DenseGeneral``) or a key of
      ``quantized.QUANTIZED_LAYERS`` (``bitlinear``, ``int8``).
    serving: Quantized layers hold packed weights and run the low-bit kernels.
    adapters: Wrappers applied, in order, around the chosen layer (see
      ``DenseFactory.adapters``).

  Raises:
    ValueError: For an unknown name, or ``serving`` without quantization.
  """
  if quantization == "none":
    if serving:
      raise ValueError("quantization_serving=True needs dense_quantization='bitlinear' or 'int8' "
                       "(there is nothing to serve packed with 'none').")
    return DenseFactory(adapters=tuple(adapters))
  if quantization not in QUANTIZED_LAYERS:
    raise ValueError(f"dense_quantization={quantization!r} is not one of "
                     f"{('none',) + tuple(QUANTIZED_LAYERS)}.")
  return DenseFactory(QUANTIZED_LAYERS[quantization], options=(("serving", serving),),
                      adapters=tuple(adapters))


def make_norm(norm_type: str = "layernorm", *, eps: float, dtype: jnp.dtype = jnp.float32,
              param_dtype: jnp.dtype = jnp.float32, use_bias: bool = True,
              name: Optional[str] = None) -> nn.Module:
  """Flax's LayerNorm or RMSNorm with ``("embed",)`` parameters.

  Statistics are reduced in float32 whatever the compute dtype; LayerNorm uses
  the two-pass variance (as BERT implementations do) rather than E[x^2]-E[x]^2.

  Args:
    norm_type: ``layernorm`` (mean subtraction, bias when ``use_bias``) or
      ``rmsnorm`` (scale only; T5's norm).
    eps: Added to the variance (mean square).
    dtype: Output dtype.
    param_dtype: Storage dtype of ``scale`` (and ``bias``).
    use_bias: LayerNorm only.
    name: Module name.
  """
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  common = dict(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
                force_float32_reductions=True, name=name)
  if norm_type == "rmsnorm":
    return nn.RMSNorm(**common)
  if norm_type != "layernorm":
    raise ValueError(f"Unknown norm_type {norm_type!r}; known: layernorm, rmsnorm.")
  return nn.LayerNorm(use_bias=use_bias, use_fast_variance=False,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      **common)


def gelu_exact(x: jax.Array) -> jax.Array:
  """The exact GELU ``x * Phi(x)``, written ``0.5 * x * (1 + erf(x / sqrt(2)))``.

  This is the formula of PyTorch's ``gelu`` (and so of Hugging Face's BERT).
  ``jax.nn.gelu(approximate=False)`` uses ``erfc`` instead, which XLA:CPU
  expands into a piecewise evaluation with an ``exp``; ``erf`` is one
  rational polynomial, about twice as cheap forward and backward, and the
  two agree to float rounding (the ``erf`` form loses relative precision
  only where the output is below ~1e-7 in magnitude).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """Elementwise activation for an MLP activation name (``gated_`` prefix ignored).

  ``gelu`` is the exact (erf) form, as in the original BERT and MosaicBERT;
  ``gelu_tanh`` is the tanh approximation that T5 v1.1 (Hugging Face's
  ``gelu_new``) uses.
  """
  base = name[len("gated_"):] if name.startswith("gated_") else name
  table = {
      "gelu": gelu_exact,
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "silu": jax.nn.silu,
  }
  if base not in table:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(table)} (optionally gated_).")
  return table[base]


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """``jax.random.bernoulli(key, p, shape)``, bit for bit, with the hash fused.

  JAX lowers its Threefry-2x32 hash on CPU as a rolled loop of five
  iterations, each a separate pass over the whole mask (and never fused with
  the select that applies it): for BERT's dropout, ~40M draws a step, that
  loop cost more than the layer norms and the GELUs together. Here the same
  hash (JAX's own unrolled formulation, on the same counters) is written as
  plain array arithmetic that XLA fuses into one pass, and the bits become
  floats exactly as ``jax.random.uniform`` turns them, so the mask is the one
  ``jax.random.bernoulli`` draws. Keys of another implementation, or the
  non-partitionable Threefry stream, go to ``jax.random.bernoulli``.
  """
  shape = tuple(shape)
  try:  # JAX internals; anything unexpected falls back to the public function
    from jax._src.random import prng as prng_internal  # pylint: disable=import-outside-toplevel
    from jax._src.random import threefry2x32 as threefry  # pylint: disable=import-outside-toplevel
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      impl, data = str(jax.random.key_impl(key)), jax.random.key_data(key)
    else:
      impl, data = str(jax.config.jax_default_prng_impl), key
    fused = (impl == "threefry2x32" and data.shape == (2,) and data.dtype == jnp.uint32
             and jax.config.jax_threefry_partitionable and len(shape) > 0)
  except (ImportError, AttributeError):
    fused = False
  if fused:
    try:  # the internals' signatures may change between JAX versions
      counts_hi, counts_lo = prng_internal.iota_2x32_shape(shape)
      bits_hi, bits_lo = threefry._threefry2x32_lowering(  # pylint: disable=protected-access
          data[0], data[1], counts_hi, counts_lo, use_rolled_loops=False)
    except (TypeError, AttributeError):
      fused = False
  if not fused:
    return jax.random.bernoulli(key, p, shape)
  bits = bits_hi ^ bits_lo
  one = np.array(1.0, np.float32).view(np.uint32)
  mantissa = jax.lax.shift_right_logical(bits, np.uint32(32 - 23)) | one
  floats = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
  return jnp.maximum(np.float32(0.0), floats) < jnp.asarray(p, jnp.float32)


class Dropout(nn.Dropout):
  """``flax.linen.Dropout`` drawing its mask with :func:`bernoulli` (the same mask, fused).

  Named ``Dropout`` like its parent so that auto-named instances (``Dropout_0``)
  and hence their rng streams are those of ``nn.Dropout``.
  """

  @nn.compact
  def __call__(self, inputs, deterministic: Optional[bool] = None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = [1 if i in self.broadcast_dims else n for i, n in enumerate(inputs.shape)]
    mask = jnp.broadcast_to(bernoulli(rng, keep_prob, shape), inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def dropout(module: nn.Module, rate: float, x: jax.Array, deterministic: bool) -> jax.Array:
  """Inverted dropout drawing its mask from ``module``'s ``dropout`` rng stream.

  Creates no submodule and needs no rng when ``rate`` is 0 or
  ``deterministic``; the mask depends on ``module``'s path, so a call from
  the same module at the same place draws the same mask.
  """
  if rate <= 0.0 or deterministic:
    return x
  keep = bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Mlp(nn.Module):
  """Position-wise feed-forward block: ``wo(act(wi(x)))`` or gated ``wo(act(wi_0(x)) * wi_1(x))``.

  The output width is the input's. BERT uses no dropout on the hidden
  activations (the caller drops the sub-layer output); T5 drops them too
  (``hidden_dropout_rate``).

  Attributes:
    hidden_features: Width of the hidden activations (``d_ff``).
    activation: Name for :func:`activation_fn`; a ``gated_`` prefix gives two
      input projections ``wi_0``/``wi_1``.
    use_bias: Biases on the projections.
    hidden_dropout_rate: Dropout on the hidden activations (``dropout`` rng).
    dtype: Compute dtype.
    param_dtype: Storage dtype of the parameters.
    init_stddev: Kernel init stddev of the input projections.
    out_init_stddev: Kernel init stddev of ``wo``; ``None``: ``init_stddev``.
    dense: Hook that builds the projections (quantization, adapters).
  """

  hidden_features: int
  activation: str = "gelu"
  use_bias: bool = True
  hidden_dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_stddev: float = 0.02
  out_init_stddev: Optional[float] = None
  dense: DenseFactory = FLOAT

  def _project(self, features: int, axes: AxisNames, stddev: float, name: str) -> nn.Module:
    return self.dense(features, axes, use_bias=self.use_bias, dtype=self.dtype,
                      param_dtype=self.param_dtype, init_stddev=stddev, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    act = activation_fn(self.activation)
    up = lambda name: self._project(self.hidden_features, ("embed", "mlp"), self.init_stddev, name)
    if self.activation.startswith("gated_"):
      hidden = act(up("wi_0")(x)) * up("wi_1")(x)
    else:
      hidden = act(up("wi")(x))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = dropout(self, self.hidden_dropout_rate, hidden, deterministic)
    out_stddev = self.init_stddev if self.out_init_stddev is None else self.out_init_stddev
    return self._project(x.shape[-1], ("mlp", "embed"), out_stddev, "wo")(hidden)


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
