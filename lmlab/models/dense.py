"""Dense layers and the one hook through which the networks build them.

``DenseGeneral`` is the float linear map every network uses. The networks do
not construct it directly inside their blocks: they ask a
:class:`DenseFactory` for each attention, MLP or BiGS projection. A factory
is a small frozen value made of

* ``layer``: the dense class (``DenseGeneral``, or a quantization-aware
  drop-in from ``lmlab.models.quantized``) and ``options``, keyword
  arguments bound to it (e.g. ``serving=True``);
* ``adapters``: functions applied in order to the resulting constructor,
  each returning a constructor of the same signature. An adapter (e.g. a
  future LoRA) therefore wraps whatever class the quantization choice
  produced, and several adapters stack.

``lmlab.models.layers.dense_factory`` picks ``layer`` by quantization name;
this module knows nothing of quantization, so ``quantized`` (which subclasses
nothing here but shares the bias and axis helpers) and ``layers`` both import
it without a cycle.

A constructor takes ``DenseGeneral``'s attributes as keywords: ``features,
kernel_axes, axis, use_bias, dtype, param_dtype, init_stddev, name``.
Adapters that must keep the wrapped layer's parameter paths (checkpoints,
converters) can build it with ``nn.share_scope``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

AxisNames = tuple[Optional[str], ...]
Features = Union[int, tuple[int, ...]]
Axes = Union[int, tuple[int, ...]]
# Builds a dense layer from ``DenseGeneral``'s attributes given as keywords.
LayerConstructor = Callable[..., nn.Module]
# Maps a constructor to one that builds a wrapped (adapted) layer.
DenseAdapter = Callable[[LayerConstructor], LayerConstructor]


def normalize_axes(axes: Union[int, Sequence[int]], ndim: int) -> tuple[int, ...]:
  """``axes`` as a tuple of non-negative axis indices of an ``ndim``-D array."""
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


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
    kernel_init: Replaces the truncated-normal init when given (a plain
      initializer; the logical names are added here). Not part of the
      constructor signature the factory passes on.
  """

  features: Features
  kernel_axes: AxisNames
  axis: Axes = -1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_stddev: float = 0.02
  kernel_init: Optional[Callable[..., jax.Array]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axes = normalize_axes(self.axis, x.ndim)
    in_shape = tuple(x.shape[a] for a in axes)
    if len(self.kernel_axes) != len(in_shape) + len(features):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match a kernel of shape "
                       f"{in_shape + features}.")
    init = self.kernel_init or nn.initializers.truncated_normal(stddev=self.init_stddev)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
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


@dataclasses.dataclass(frozen=True)
class DenseFactory:
  """The dense hook: builds a block's dense layers from plain arguments.

  Hashable and compared by value (a network module may hold it as an
  attribute). Calling it builds one layer::

    factory(features, kernel_axes, axis=-1, use_bias=True, dtype=jnp.float32,
            param_dtype=jnp.float32, init_stddev=0.02, name=None)

  Attributes:
    layer: Dense class taking ``DenseGeneral``'s attributes.
    options: ``(keyword, value)`` pairs bound to ``layer`` (e.g. the
      quantized layers' ``serving``).
    adapters: Applied in order to the constructor of ``layer``; each wraps
      what the previous one (or the quantization choice) produced. Should be
      hashable (a frozen dataclass with ``__call__``, a module-level function).
  """

  layer: LayerConstructor = DenseGeneral
  options: tuple[tuple[str, Any], ...] = ()
  adapters: tuple[DenseAdapter, ...] = ()

  def with_adapter(self, adapter: DenseAdapter) -> "DenseFactory":
    """A copy with ``adapter`` applied after the present ones."""
    return dataclasses.replace(self, adapters=self.adapters + (adapter,))

  @property
  def constructor(self) -> LayerConstructor:
    """``layer`` with ``options`` bound, wrapped by every adapter in order."""
    make = functools.partial(self.layer, **dict(self.options)) if self.options else self.layer
    for adapter in self.adapters:
      make = adapter(make)
    return make

  def __call__(self, features: Features, kernel_axes: AxisNames, *, axis: Axes = -1,
               use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, init_stddev: float = 0.02,
               name: Optional[str] = None) -> nn.Module:
    return self.constructor(features=features, kernel_axes=kernel_axes, axis=axis,
                            use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                            init_stddev=init_stddev, name=name)


# Plain float layers, no adapters: heads, poolers, classifiers, vocabulary projections.
FLOAT = DenseFactory()
