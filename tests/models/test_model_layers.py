"""Norms, MLP variants, the dense hook, rotary embeddings and ALiBi helpers."""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import dense, layers, quantized
from pallas_kernels import flash_attention


def test_alibi_slopes_power_of_two():
  np.testing.assert_allclose(layers.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-7)
  np.testing.assert_allclose(layers.alibi_slopes(4), 2.0 ** -(2.0 * np.arange(1, 5)), rtol=1e-7)


def test_alibi_slopes_interleave_for_other_head_counts():
  # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads.
  want = np.concatenate([2.0 ** -np.arange(1, 9), 2.0 ** -(np.arange(1, 9, 2) * 0.5)])
  np.testing.assert_allclose(layers.alibi_slopes(12), want, rtol=1e-6)
  assert layers.alibi_slopes(6).shape == (6,)


def test_alibi_bias_is_symmetric_distance_penalty():
  # The encoder's ALiBi term as the attention backends build it: per-document
  # positions, so packed documents each see distances within themselves.
  positions = np.array([[0, 1, 2, 0, 1]])
  bias, _ = flash_attention.attention_logits_and_mask(
      5, 5, batch=1, heads=2, q_positions=positions, kv_positions=positions,
      alibi_slopes=layers.alibi_slopes(2))
  bias = np.asarray(bias)
  assert bias.shape == (1, 2, 5, 5)
  np.testing.assert_allclose(bias, np.swapaxes(bias, -1, -2))
  slope = layers.alibi_slopes(2)[1]
  np.testing.assert_allclose(bias[0, 1, 0, 2], -2 * slope)
  np.testing.assert_allclose(bias[0, 1, 3, 4], -slope)


def _rope_scores(q, k, positions):
  rq = layers.apply_rotary(q, positions)
  rk = layers.apply_rotary(k, positions)
  return np.asarray(jnp.einsum("bqhd,bkhd->bhqk", rq, rk))


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(1, 6, 2, 8)).astype(np.float32)
  k = rng.normal(size=(1, 6, 2, 8)).astype(np.float32)
  positions = np.arange(6)[None]
  np.testing.assert_allclose(_rope_scores(q, k, positions), _rope_scores(q, k, positions + 37),
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(_rope_scores(q, k, positions), _rope_scores(q, k, positions * 2),
                         atol=1e-3)


def test_rope_preserves_norm_and_dtype_and_identity_at_zero():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 2, 8)), jnp.bfloat16)
  positions = np.array([[0, 5, 9], [3, 0, 1]])
  out = layers.apply_rotary(x, positions)
  assert out.dtype == jnp.bfloat16
  norms = lambda a: np.linalg.norm(np.asarray(a, np.float32), axis=-1)
  np.testing.assert_allclose(norms(out), norms(x), rtol=2e-2)
  np.testing.assert_array_equal(np.asarray(out[0, 0]), np.asarray(x[0, 0]))


def test_layernorm_matches_numpy_and_casts_back():
  x = np.random.default_rng(2).normal(size=(2, 3, 16)).astype(np.float32) * 3 + 1
  norm = layers.make_norm("layernorm", eps=1e-6)
  variables = norm.init(jax.random.key(0), x)
  want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(norm.apply(variables, x)), want, rtol=1e-5, atol=1e-5)
  bf16 = layers.make_norm("layernorm", eps=1e-12, dtype=jnp.bfloat16)
  assert bf16.apply(variables, x).dtype == jnp.bfloat16


def test_rmsnorm_matches_numpy_and_has_no_bias():
  x = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
  norm = layers.make_norm("rmsnorm", eps=1e-6)
  variables = nn.meta.unbox(norm.init(jax.random.key(0), x))
  assert set(variables["params"]) == {"scale"}
  want = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(norm.apply(variables, x)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "gated_gelu", "gated_silu"])
def test_mlp_variants(activation):
  x = np.random.default_rng(4).normal(size=(2, 3, 16)).astype(np.float32)
  mlp = layers.Mlp(hidden_features=32, activation=activation)
  params = nn.meta.unbox(mlp.init(jax.random.key(0), x))["params"]
  gated = activation.startswith("gated_")
  assert set(params) == ({"wi_0", "wi_1", "wo"} if gated else {"wi", "wo"})
  act = {"gelu": lambda a: jax.nn.gelu(a, approximate=False), "relu": jax.nn.relu,
         "silu": jax.nn.silu}[activation.replace("gated_", "")]
  lin = lambda name, a: a @ params[name]["kernel"] + params[name]["bias"]
  hidden = act(lin("wi_0", x)) * lin("wi_1", x) if gated else act(lin("wi", x))
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": params}, x)),
                             np.asarray(lin("wo", hidden)), rtol=1e-5, atol=1e-5)


def test_embed_attend_is_transposed_lookup():
  embed = layers.Embed(num_embeddings=10, features=16, axes=("vocab", "embed"))
  variables = embed.init(jax.random.key(0), np.array([1]))
  table = np.asarray(nn.meta.unbox(variables)["params"]["embedding"])
  x = np.random.default_rng(5).normal(size=(2, 16)).astype(np.float32)
  scores = embed.apply(variables, x, method=layers.Embed.attend)
  assert scores.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(scores), x @ table.T, rtol=1e-5, atol=1e-5)


def test_mlp_hidden_dropout_and_output_init():
  x = np.random.default_rng(6).normal(size=(2, 5, 16)).astype(np.float32)
  mlp = layers.Mlp(hidden_features=64, activation="relu", use_bias=False, hidden_dropout_rate=0.5,
                   init_stddev=1e-3, out_init_stddev=1.0)
  params = nn.meta.unbox(mlp.init(jax.random.key(0), x))["params"]
  assert set(params["wi"]) == {"kernel"}  # no biases
  assert np.std(params["wi"]["kernel"]) < 1e-2 < np.std(params["wo"]["kernel"])
  plain = np.asarray(mlp.apply({"params": params}, x))
  dropped = np.asarray(mlp.apply({"params": params}, x, False, rngs={"dropout": jax.random.key(1)}))
  assert not np.allclose(plain, dropped)
  # Without dropout: wo(relu(wi x)) with the two inits.
  hidden = np.maximum(x @ params["wi"]["kernel"], 0.0)
  np.testing.assert_allclose(plain, hidden @ params["wo"]["kernel"], rtol=1e-5, atol=1e-5)


def test_dense_factory_picks_the_layer_by_quantization_name():
  assert layers.dense_factory() == dense.FLOAT
  assert layers.dense_factory().layer is dense.DenseGeneral
  assert layers.dense_factory("bitlinear").layer is quantized.BitLinear
  int8 = layers.dense_factory("int8", serving=True)
  assert int8.layer is quantized.Int8Dense and dict(int8.options) == {"serving": True}
  built = int8(8, ("embed", "mlp"), use_bias=False, init_stddev=0.5, name="proj")
  assert isinstance(built, quantized.Int8Dense)
  assert (built.serving, built.use_bias, built.init_stddev) == (True, False, 0.5)
  assert built.name == "proj"
  # Equal choices give equal (hashable) factories: modules may hold them as attributes.
  assert hash(layers.dense_factory("int8", True)) == hash(int8)
  with pytest.raises(ValueError, match="not one of"):
    layers.dense_factory("int4")
  with pytest.raises(ValueError, match="nothing to serve"):
    layers.dense_factory("none", serving=True)


class _Scaled(nn.Module):
  """Toy adapter layer: the wrapped layer's output times a learned scalar.

  The wrapped layer shares this module's scope, so its ``kernel``/``bias``
  keep their paths, as a LoRA adapter would need for checkpoints.
  """

  make: Callable[..., nn.Module]
  kwargs: tuple

  @nn.compact
  def __call__(self, x):
    inner = self.make(**dict(self.kwargs), name="inner")
    nn.share_scope(self, inner)
    factor = self.param("adapter_scale", nn.initializers.constant(2.0), ())
    return inner(x) * factor


@dataclasses.dataclass(frozen=True)
class _ScaleAdapter:
  def __call__(self, make):
    def build(*, name=None, **kwargs):
      return _Scaled(make=make, kwargs=tuple(sorted(kwargs.items())), name=name)
    return build


@pytest.mark.parametrize("quantization", ["none", "bitlinear"])
def test_adapters_wrap_whatever_layer_the_quantization_chose(quantization):
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 3, 16)), jnp.float32)
  plain = layers.dense_factory(quantization)
  adapted = layers.dense_factory(quantization, adapters=(_ScaleAdapter(),))
  assert adapted == plain.with_adapter(_ScaleAdapter())
  base = plain(8, ("embed", "mlp"), name="proj")
  wrapped = adapted(8, ("embed", "mlp"), name="proj")
  base_vars = base.init(jax.random.key(0), x)
  wrapped_vars = wrapped.init(jax.random.key(0), x)
  # The adapter adds its parameter next to the wrapped layer's unchanged ones.
  assert set(wrapped_vars["params"]) == set(base_vars["params"]) | {"adapter_scale"}
  shared = {k: v for k, v in wrapped_vars["params"].items() if k != "adapter_scale"}
  np.testing.assert_array_equal(np.asarray(wrapped.apply(wrapped_vars, x)),
                                2.0 * np.asarray(base.apply({"params": shared}, x)))
  # And the networks build their blocks through the same hook: an MLP with it.
  mlp = layers.Mlp(hidden_features=32, dense=adapted)
  params = nn.meta.unbox(mlp.init(jax.random.key(0), x))["params"]
  assert set(params["wi"]) == {"kernel", "bias", "adapter_scale"}
