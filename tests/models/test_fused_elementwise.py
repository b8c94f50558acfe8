"""The CPU-friendly rewrites of dropout masks, accuracy and GELU give exactly what the library forms give."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import layers
from lmlab.wrappers.base import weighted_cross_entropy


@pytest.mark.parametrize("key_kind", ["raw", "typed", "folded"])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 128, 64)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_bernoulli_is_jax_random_bernoulli_bit_for_bit(key_kind, shape, p):
  key = {"raw": jax.random.PRNGKey(3), "typed": jax.random.key(3),
         "folded": jax.random.fold_in(jax.random.PRNGKey(1), 17)}[key_kind]
  want = jax.random.bernoulli(key, p, shape)
  got = jax.jit(layers.bernoulli, static_argnums=(1, 2))(key, p, shape)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_dropout_module_draws_flax_masks():
  x = jnp.ones((4, 16, 32))

  class Twice(nn.Module):
    dropout_cls: type

    @nn.compact
    def __call__(self, x):
      return self.dropout_cls(0.3)(x, deterministic=False) + self.dropout_cls(0.3)(x, False)

  rngs = {"dropout": jax.random.PRNGKey(5)}
  want = Twice(nn.Dropout).apply({}, x, rngs=rngs)
  got = Twice(layers.Dropout).apply({}, x, rngs=rngs)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_accuracy_counts_argmax_with_first_index_ties():
  rng = np.random.RandomState(0)
  logits = rng.randint(0, 3, size=(64, 10)).astype(np.float32)  # many ties
  logits[0, :] = -np.inf
  logits[1, 4] = np.inf
  targets = rng.randint(0, 10, size=(64,)).astype(np.int32)
  targets[:3] = [0, 4, 9]
  weights = np.ones((64,), np.float32)
  got = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  want = float(np.sum(np.argmax(logits, axis=-1) == targets))
  assert float(got["correct_sum"]) == want


def test_exact_gelu_matches_jax():
  x = jnp.linspace(-8.0, 8.0, 4001)
  np.testing.assert_allclose(layers.gelu_exact(x), jax.nn.gelu(x, approximate=False),
                             rtol=1e-6, atol=1e-6)  # erf form: absolute error ~1e-7 in the tails
  grad = jax.vmap(jax.grad(layers.gelu_exact))(x)
  want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)
