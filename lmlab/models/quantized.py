"""Quantization-aware dense layers (BitNet b1.58 ternary, int8 W8A8) and packed serving.

Two drop-in replacements for ``lmlab.models.dense.DenseGeneral``: same
attributes (``features, kernel_axes, axis, use_bias, dtype, param_dtype,
init_stddev``), same parameters (``kernel``/``bias``, same shapes, logical
axis names and init), so a quantized model reads and writes the checkpoints
of the float model and the partitioning rules need no change. Select them
for a whole network with ``EncoderConfig.dense_quantization`` /
``T5Config.dense_quantization`` (``"bitlinear"`` or ``"int8"``), which
``lmlab.models.layers.dense_factory`` turns into the networks' dense hook
(``lmlab.models.dense.DenseFactory``) by looking the name up in
``QUANTIZED_LAYERS``. This module imports only ``dense``, never the layers
or networks that use it.

Training (quantization-aware)
  The parameters stay full precision ("latent" weights). Each forward pass
  quantizes the weights and the activations, multiplies the integer codes,
  and applies the scales to the finished sum:

  * :class:`BitLinear` (BitNet b1.58, Ma et al. 2024): weights absmean
    ternary, ``w_t = RoundClip(W / (mean|W| + eps), -1, 1)`` with one
    per-tensor scale ``mean|W|``; activations absmax int8 per token,
    ``x_q = round(x / s_x)`` with ``s_x = max|x| / 127`` over the contracted
    features of each token. ``y = (x_q @ w_t) * mean|W| * s_x``.
  * :class:`Int8Dense` (Q8BERT-style W8A8, Zafrir et al. 2019): weights
    symmetric int8 with one absmax scale per output column
    (``max|W[:, n]| / 127``); activations as above.
    ``y = (x_q @ w_q) * s_x * s_w``.

  The products are ordered exactly as the Pallas kernels order them, and the
  integer-valued codes are multiplied in the compute dtype with float32
  accumulation, which is exact (ternary: for K < 132k; int8: while partial
  sums stay below 2**24, e.g. always for K <= 1040). So a layer's training
  forward pass and its packed serving path agree bit for bit. Whole models
  agree bit for bit op by op; compiled, XLA may fuse the float ops between
  the layers (norms, softmax) differently in the two graphs, and a 1-ulp
  difference there can move an occasional int8 code.

  Gradients use the straight-through estimator (STE) on both operands: the
  rounding is treated as the identity, so ``dL/dx = dL/dy @ W_deq^T`` and
  ``dL/dW = x_deq^T @ dL/dy`` -- the gradients of a plain float matmul of the
  dequantized operands ``x_deq = x_q * s_x``, ``W_deq = w_q * s_w``. No
  gradient flows through the scales. The STE is written
  ``latent - stop_gradient(latent) + stop_gradient(code)`` (:func:`ste`),
  the usual ``latent + stop_gradient(code - latent)`` rearranged so that the
  forward value is exactly the integer code (the usual form can be off by a
  rounding, e.g. for clipped weights).

Where BitNet's norm goes
  BitNet normalises the input of every BitLinear before quantizing it (a
  parameter-free LayerNorm/RMSNorm inside the layer, "SubLN"). Here that is
  the optional ``BitLinear.input_norm`` (parameter-free RMSNorm over the
  contracted features) and it is **off** when the layers come from the
  config: the blocks already normalise the inputs of q/k/v and of the MLP's
  input projections (pre-LN: the sub-layer norm; post-LN: the previous
  block's norm); the inputs of the attention output and of the MLP's output
  projection are not normalised, and per-token absmax quantization does not
  need them to be (it is scale invariant per token). Set ``input_norm=True``
  when building the layers directly to get BitNet's in-layer norm.

Departures from Q8BERT
  Q8BERT quantizes activations with a scale from an exponential moving
  average of their training-time maximum (a static scale at inference).
  Here activations get a dynamic per-token absmax scale, in training and in
  serving: it needs no state collection, is exactly what the W8A8 kernel
  takes (``x_scale`` per row), and is finer than a per-tensor EMA.

Packed serving
  With ``serving=True`` (``config.quantization_serving``) the same layers
  declare packed parameters instead of ``kernel`` and run through the Pallas
  kernels of ``pallas_kernels.lowbit_matmul``; :func:`export_packed` turns a
  trained parameter tree into that form. Layouts (``R`` = rank of the float
  kernel, logical names as the float kernel's where shapes allow):

  * BitLinear: ``kernel_packed`` uint8 ``in_shape[:-1] + (ceil(in_last/4),)
    + features`` -- the ternary codes packed 4 per byte along the last
    contracted axis by ``lowbit_matmul.pack_ternary`` (that axis is zero-
    padded to a multiple of 4, so the reshaped ``[K_pad/4, N]`` matrix is
    exactly what ``ternary_matmul`` reads); ``kernel_scale`` float32 of
    shape ``(1,) * R`` (per tensor). 1/16 of the float32 kernel's bytes.
  * Int8Dense: ``kernel_int8`` int8 of the kernel's shape; ``kernel_scale``
    float32 ``(1,) * n_contracted + features`` (per output column). 1/4.

  Scales keep the kernel's rank so that :func:`export_packed` can read which
  axes were reduced from the template alone, also for ``scan_layers``
  (stacked) trees. Biases stay in ``param_dtype``. Embeddings, the output
  (vocabulary) projection, the MLM head's transform, poolers and classifiers
  stay float, as in BitNet.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.models import dense
from pallas_kernels import lowbit_matmul

TERNARY_EPS = 1e-5  # absmean guard, as lowbit_matmul.quantize_ternary_absmean
INPUT_NORM_EPS = 1e-6


def ste(latent: jax.Array, code: jax.Array) -> jax.Array:
  """Straight-through estimator: the value of ``code``, the gradient of ``latent``.

  ``latent - stop_gradient(latent)`` is exactly zero for finite inputs, so the
  forward value is bit-for-bit ``code``; the derivative w.r.t. ``latent`` is 1.
  """
  latent = jnp.asarray(latent, jnp.float32)
  zero = latent - jax.lax.stop_gradient(latent)
  return zero + jax.lax.stop_gradient(jnp.asarray(code, jnp.float32))


def _safe(scale: jax.Array) -> jax.Array:
  """1 where a scale is 0 (all-zero rows/tensors): their codes are 0 anyway."""
  return jnp.where(scale > 0, scale, jnp.ones_like(scale))


def rms_normalize(x: jax.Array, eps: float = INPUT_NORM_EPS) -> jax.Array:
  """Parameter-free RMSNorm over the last axis, in float32."""
  x = jnp.asarray(x, jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def quantize_activations(x2d: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token (row) absmax int8 codes and float32 scales of ``[M, K]`` activations."""
  return lowbit_matmul.quantize_rows_absmax(jax.lax.stop_gradient(x2d))


class _QuantizedDense(nn.Module):
  """What both quantized layers share with ``DenseGeneral``: attributes, shapes, bias.

  Attributes:
    features: Output shape appended after the batch axes.
    kernel_axes: Logical names of the kernel (contracted input axes, then outputs).
    axis: Input axes that are contracted.
    use_bias: Add a float bias of shape ``features``.
    dtype: Compute dtype (of the integer-code matmul and the output).
    param_dtype: Storage dtype of ``kernel`` and ``bias``.
    init_stddev: Stddev of the truncated-normal kernel init.
    serving: Declare packed parameters and run the Pallas kernels instead of
      quantization-aware training on a float ``kernel``.
  """

  features: dense.Features
  kernel_axes: dense.AxisNames
  axis: dense.Axes = -1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  init_stddev: float = 0.02
  serving: bool = False

  def _prepare(self, x2d: jax.Array) -> jax.Array:
    """Float32 activations as they enter the quantizer (BitLinear may normalise)."""
    return jnp.asarray(x2d, jnp.float32)

  def _train_matmul(self, x2d: jax.Array, w2d: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _serve_matmul(self, x2d: jax.Array, in_shape: tuple[int, ...],
                    features: tuple[int, ...]) -> jax.Array:
    raise NotImplementedError

  def _code_dot(self, x_codes: jax.Array, w_codes: jax.Array) -> jax.Array:
    """Integer-valued codes multiplied in the compute dtype, accumulated in float32 (exact)."""
    return jnp.dot(x_codes.astype(self.dtype), w_codes.astype(self.dtype),
                   preferred_element_type=jnp.float32)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axes = dense.normalize_axes(self.axis, x.ndim)
    in_shape = tuple(x.shape[a] for a in axes)
    if len(self.kernel_axes) != len(in_shape) + len(features):
      raise ValueError(f"kernel_axes {self.kernel_axes} do not match a kernel of shape "
                       f"{in_shape + features}.")
    trailing = tuple(range(x.ndim - len(axes), x.ndim))
    if axes != trailing:  # same contraction as DenseGeneral's dot_general path
      x = jnp.moveaxis(x, axes, trailing)
    lead = x.shape[:x.ndim - len(axes)]
    size_in, size_out = math.prod(in_shape), math.prod(features)
    x2d = x.reshape(-1, size_in)
    if self.serving:
      y = self._serve_matmul(x2d, in_shape, features)
    else:
      kernel = self.param(
          "kernel",
          nn.with_logical_partitioning(
              nn.initializers.truncated_normal(stddev=self.init_stddev), self.kernel_axes),
          in_shape + features, self.param_dtype)
      y = self._train_matmul(x2d, kernel.reshape(size_in, size_out))
    y = jnp.asarray(y, self.dtype).reshape(lead + features)
    return dense.add_output_bias(self, y, features, self.kernel_axes[len(in_shape):])


class BitLinear(_QuantizedDense):
  """BitNet b1.58 linear layer: ternary absmean weights, int8 absmax per-token activations.

  See the module docstring for the forward/backward definitions and the
  packed serving layout. Extra attribute:

  Attributes:
    input_norm: Parameter-free RMSNorm of the input over the contracted
      features before quantizing it (BitNet's in-layer norm). Off by default;
      the config route leaves normalisation to the surrounding blocks.
  """

  input_norm: bool = False

  def _prepare(self, x2d: jax.Array) -> jax.Array:
    x2d = jnp.asarray(x2d, jnp.float32)
    return rms_normalize(x2d) if self.input_norm else x2d

  def _train_matmul(self, x2d: jax.Array, w2d: jax.Array) -> jax.Array:
    x = self._prepare(x2d)
    x_q, x_scale = quantize_activations(x)
    x_scale = _safe(x_scale)
    w = jnp.asarray(w2d, jnp.float32)
    w_t, w_scale = lowbit_matmul.quantize_ternary_absmean(jax.lax.stop_gradient(w), TERNARY_EPS)
    w_scale = _safe(w_scale)
    acc = self._code_dot(ste(x / x_scale[:, None], x_q), ste(w / w_scale, w_t))
    # The ternary kernel's order: (sum * weight scale) * row scale.
    return acc * w_scale * x_scale[:, None]

  def _serve_matmul(self, x2d, in_shape, features):
    packed_shape = in_shape[:-1] + (-(-in_shape[-1] // 4),) + features
    packed = self.param("kernel_packed",
                        nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes),
                        packed_shape, jnp.uint8)
    rank = len(self.kernel_axes)
    scale = self.param("kernel_scale",
                       nn.with_logical_partitioning(nn.initializers.ones, (None,) * rank),
                       (1,) * rank, jnp.float32)
    x_q, x_scale = quantize_activations(self._prepare(x2d))
    last_padded = 4 * packed_shape[len(in_shape) - 1]
    if last_padded != in_shape[-1]:  # zero codes pad the last contracted axis to whole bytes
      x_q = x_q.reshape((-1,) + in_shape)
      x_q = jnp.pad(x_q, [(0, 0)] * len(in_shape) + [(0, last_padded - in_shape[-1])])
    k_padded = math.prod(in_shape[:-1]) * last_padded
    x_q = x_q.reshape(-1, k_padded)
    return lowbit_matmul.ternary_matmul(
        x_q, packed.reshape(k_padded // 4, math.prod(features)), scale.reshape(()), k=k_padded,
        x_scale=x_scale, out_dtype=jnp.float32)


class Int8Dense(_QuantizedDense):
  """Int8 W8A8 quantization-aware dense layer (Q8BERT-style, per-column weights).

  See the module docstring for the forward/backward definitions, the
  departure from Q8BERT's EMA activation scales, and the serving layout.
  """

  def _train_matmul(self, x2d: jax.Array, w2d: jax.Array) -> jax.Array:
    x = self._prepare(x2d)
    x_q, x_scale = quantize_activations(x)
    x_scale = _safe(x_scale)
    w = jnp.asarray(w2d, jnp.float32)
    w_q, w_scale = lowbit_matmul.quantize_columns_absmax(jax.lax.stop_gradient(w))
    w_scale = _safe(w_scale)
    acc = self._code_dot(ste(x / x_scale[:, None], x_q), ste(w / w_scale[None, :], w_q))
    # The int8 kernel's order: (sum * row scale) * column scale.
    return acc * x_scale[:, None] * w_scale[None, :]

  def _serve_matmul(self, x2d, in_shape, features):
    kernel = self.param("kernel_int8",
                        nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes),
                        in_shape + features, jnp.int8)
    n_in = len(in_shape)
    scale = self.param(
        "kernel_scale",
        nn.with_logical_partitioning(nn.initializers.ones,
                                     (None,) * n_in + tuple(self.kernel_axes[n_in:])),
        (1,) * n_in + features, jnp.float32)
    x_q, x_scale = quantize_activations(self._prepare(x2d))
    size_out = math.prod(features)
    return lowbit_matmul.int8_matmul(
        x_q, kernel.reshape(math.prod(in_shape), size_out), x_scale, scale.reshape(size_out),
        out_dtype=jnp.float32)


# ``dense_quantization`` name -> layer class (``"none"`` is the float ``dense.DenseGeneral``).
QUANTIZED_LAYERS: dict[str, type[nn.Module]] = {"bitlinear": BitLinear, "int8": Int8Dense}


# ---------------------------------------------------------------------------
# Export to the packed serving tree
# ---------------------------------------------------------------------------


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _export_ternary(kernel: jax.Array, packed_shape: tuple[int, ...],
                    scale_shape: tuple[int, ...]) -> dict[str, jax.Array]:
  """BitLinear ``kernel`` -> ``kernel_packed`` + ``kernel_scale`` of the given shapes."""
  kshape = _shape(kernel)
  if len(packed_shape) != len(kshape) or len(scale_shape) != len(kshape):
    raise ValueError(f"Packed template {packed_shape}/{scale_shape} does not fit kernel {kshape}.")
  # Leading stacked (scan) axes are the leading scale axes that are not 1.
  stacked = 0
  while stacked < len(kshape) and scale_shape[stacked] != 1:
    stacked += 1
  if scale_shape[:stacked] != kshape[:stacked]:
    raise ValueError(f"Scale template {scale_shape} does not fit kernel {kshape}.")
  body, packed_body = kshape[stacked:], packed_shape[stacked:]
  differ = [i for i, (a, b) in enumerate(zip(body, packed_body)) if a != b]
  if len(differ) > 1 or (differ and packed_body[differ[0]] != -(-body[differ[0]] // 4)):
    raise ValueError(f"Packed template {packed_shape} does not fit kernel {kshape}.")
  # The packed axis is the last contracted one; with none (its size is 1),
  # packing along any size-1 axis gives the same bytes.
  last = differ[0] if differ else next((i for i, d in enumerate(body) if d == 1), len(body) - 1)
  size_in = math.prod(body[:last + 1])
  padded_last = 4 * -(-body[last] // 4)
  kernel = jnp.asarray(kernel, jnp.float32)
  packed_slices, scales = [], []
  for index in np.ndindex(*kshape[:stacked]):
    w2d = kernel[index].reshape(size_in, -1)
    codes, scale = lowbit_matmul.quantize_ternary_absmean(w2d, TERNARY_EPS)
    codes = codes.reshape(body)
    pad = [(0, 0)] * len(body)
    pad[last] = (0, padded_last - body[last])
    codes = jnp.pad(codes, pad).reshape(-1, w2d.shape[1])
    packed_slices.append(lowbit_matmul.pack_ternary(codes).reshape(packed_body))
    scales.append(scale)
  return {
      "kernel_packed": jnp.stack(packed_slices).reshape(packed_shape),
      "kernel_scale": jnp.stack(scales).astype(jnp.float32).reshape(scale_shape),
  }


def _export_int8(kernel: jax.Array, int8_shape: tuple[int, ...],
                 scale_shape: tuple[int, ...]) -> dict[str, jax.Array]:
  """Int8Dense ``kernel`` -> ``kernel_int8`` + per-column ``kernel_scale``."""
  kshape = _shape(kernel)
  if int8_shape != kshape or len(scale_shape) != len(kshape) or any(
      s not in (1, d) for s, d in zip(scale_shape, kshape)):
    raise ValueError(f"Int8 template {int8_shape}/{scale_shape} does not fit kernel {kshape}.")
  reduce = tuple(i for i, s in enumerate(scale_shape) if s == 1)
  w = jnp.asarray(kernel, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=reduce, keepdims=True) / 127.0
  codes = jnp.clip(jnp.round(w / _safe(scale)), -127, 127).astype(jnp.int8)
  return {"kernel_int8": codes, "kernel_scale": scale.astype(jnp.float32)}


def export_packed(params: Any, template: Any) -> dict:
  """Converts trained (quantization-aware) parameters into the packed serving tree.

  Args:
    params: Parameters of a model built with ``dense_quantization`` set
      (boxed or not); every quantized layer holds a float ``kernel``.
    template: Parameters, or just their shapes (``jax.eval_shape`` of the
      init), of the same model with ``quantization_serving=True``. It names
      the packed layers and their shapes (which axes are contracted, scan
      stacking); everything else is copied from ``params`` unchanged.

  Returns:
    A plain nested dict that the serving model applies directly.

  Raises:
    ValueError/KeyError: if the trees do not correspond.
  """
  params, template = nn.meta.unbox(params), nn.meta.unbox(template)

  def convert(p: Any, t: Any, path: str) -> Any:
    if isinstance(t, Mapping):
      if not isinstance(p, Mapping):
        raise ValueError(f"{path or '/'}: expected a sub-tree, found a leaf.")
      out, done = {}, set()
      if "kernel_packed" in t:
        out.update(_export_ternary(p["kernel"], _shape(t["kernel_packed"]),
                                   _shape(t["kernel_scale"])))
        done = {"kernel_packed", "kernel_scale"}
      elif "kernel_int8" in t:
        out.update(_export_int8(p["kernel"], _shape(t["kernel_int8"]), _shape(t["kernel_scale"])))
        done = {"kernel_int8", "kernel_scale"}
      for key, sub in t.items():
        if key in done:
          continue
        if key not in p:
          raise KeyError(f"{path}/{key} is in the serving template but not in the parameters.")
        out[key] = convert(p[key], sub, f"{path}/{key}")
      return out
    if _shape(p) != _shape(t):
      raise ValueError(f"{path}: shape {_shape(p)} does not match the template's {_shape(t)}.")
    return p

  return convert(params, template, "")


def tree_bytes(tree: Any, select: Optional[Callable[[str], bool]] = None) -> int:
  """Bytes of the leaves of ``tree`` (arrays or ``ShapeDtypeStruct``s; boxed or not).

  Args:
    tree: A parameter tree.
    select: Optional filter on a leaf's path written ``a/b/c``.
  """
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    if select is None or select(name):
      total += int(np.prod(_shape(leaf))) * jnp.dtype(leaf.dtype).itemsize
  return total
