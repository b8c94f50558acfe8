"""dot_product_attention against a numpy reference, masking and backend dispatch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import attention


def _numpy_attention(q, k, v, mask, bias):
  """Textbook softmax attention in float64; masked-out queries give zeros."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + bias
  logits = np.where(mask, logits, -np.inf)
  row_max = np.max(logits, axis=-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  weights = np.exp(logits - row_max)
  denom = np.sum(weights, axis=-1, keepdims=True)
  probs = np.where(denom > 0, weights / np.maximum(denom, 1e-300), 0.0)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


def _inputs(seed=0, batch=2, q_len=5, kv_len=7, heads=3, head_dim=4):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, heads, head_dim)).astype(np.float32)
  k = rng.normal(size=(batch, kv_len, heads, head_dim)).astype(np.float32)
  v = rng.normal(size=(batch, kv_len, heads, head_dim)).astype(np.float32)
  bias = rng.normal(size=(batch, heads, q_len, kv_len)).astype(np.float32)
  mask = rng.random((batch, 1, q_len, kv_len)) > 0.3
  mask[0, 0, 1, :] = False  # one fully masked query row
  return q, k, v, mask, bias


def test_xla_matches_numpy_reference_with_mask_and_bias():
  q, k, v, mask, bias = _inputs()
  got = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
  want = _numpy_attention(q.astype(np.float64), k, v, mask, bias)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_no_mask_no_bias_matches_reference():
  q, k, v, _, _ = _inputs(seed=1)
  got = attention.dot_product_attention(q, k, v)
  want = _numpy_attention(q.astype(np.float64), k, v, np.ones((1, 1, 1, 1), bool), 0.0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_are_finite_zero_with_finite_gradients():
  q, k, v, _, _ = _inputs()
  mask = np.zeros((2, 1, 5, 7), bool)
  out = attention.dot_product_attention(q, k, v, mask=mask)
  assert np.all(np.asarray(out) == 0.0)
  grad = jax.grad(lambda x: jnp.sum(attention.dot_product_attention(x, k, v, mask=mask)))(q)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_bfloat16_output_dtype_and_accuracy():
  q, k, v, mask, bias = _inputs()
  got = attention.dot_product_attention(q, k, v, bias=bias, mask=mask, dtype=jnp.bfloat16)
  assert got.dtype == jnp.bfloat16
  want = _numpy_attention(q.astype(np.float64), k, v, mask, bias)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.1)


def test_dropout_only_when_not_deterministic():
  q, k, v, mask, _ = _inputs()
  base = attention.dot_product_attention(q, k, v, mask=mask)
  kwargs = dict(mask=mask, dropout_rate=0.5)
  same = attention.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0),
                                         deterministic=True, **kwargs)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(base))
  one = attention.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0),
                                        deterministic=False, **kwargs)
  two = attention.dot_product_attention(q, k, v, dropout_rng=jax.random.key(1),
                                        deterministic=False, **kwargs)
  assert not np.allclose(np.asarray(one), np.asarray(base))
  assert not np.allclose(np.asarray(one), np.asarray(two))
  with pytest.raises(ValueError, match="dropout_rng"):
    attention.dot_product_attention(q, k, v, deterministic=False, **kwargs)


def test_unknown_backend_lists_known_ones():
  q, k, v, _, _ = _inputs()
  with pytest.raises(ValueError, match="xla"):
    attention.dot_product_attention(q, k, v, backend="no_such_backend")


def test_backends_registry_dispatches():
  q, k, v, _, _ = _inputs()
  calls = []

  def fake(query, key, value, **kwargs):
    calls.append(sorted(kwargs))
    return query

  attention.BACKENDS["fake_for_test"] = fake
  try:
    out = attention.dot_product_attention(q, k, v, backend="fake_for_test")
  finally:
    del attention.BACKENDS["fake_for_test"]
  np.testing.assert_array_equal(np.asarray(out), q)
  assert calls == [["deterministic", "dropout_rate", "dropout_rng", "dtype", "scale", "structure"]]


def test_make_attention_mask_segments_and_padding():
  seg = np.array([[1, 1, 2, 0]])
  mask = np.asarray(attention.make_attention_mask(seg, seg))
  assert mask.shape == (1, 1, 4, 4)
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask[0, 0], want)


_STRUCTURES = {
    "none": {},
    "causal": dict(causal=True),
    "causal_segments": dict(causal=True, segments=True),
    "segments_alibi_key_bias": dict(segments=True, alibi=True, key_bias=True),
    "dense_bias": dict(bias=True),
}


@pytest.mark.parametrize("backend", ["pallas", "cudnn"])
@pytest.mark.parametrize("name", sorted(_STRUCTURES))
def test_backends_match_xla_for_each_structured_input(backend, name):
  """Each way of describing visibility reaches every backend with the same meaning."""
  spec = _STRUCTURES[name]
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 9, 2, 16)), jnp.float32) for _ in range(3))
  kwargs = dict(causal=spec.get("causal", False))
  if spec.get("segments"):
    seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1] * 9], jnp.int32)
    kwargs.update(q_segment_ids=seg, kv_segment_ids=seg)
  if spec.get("alibi"):
    kwargs["alibi_slopes"] = jnp.asarray([0.5, 0.25])
  if spec.get("key_bias"):
    kwargs["key_bias"] = jnp.asarray(rng.normal(size=(2, 9)), jnp.float32)
  if spec.get("bias"):
    kwargs["bias"] = jnp.asarray(rng.normal(size=(1, 2, 9, 9)), jnp.float32)
  want = attention.dot_product_attention(q, k, v, backend="xla", **kwargs)
  got = attention.dot_product_attention(q, k, v, backend=backend, **kwargs)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  if spec.get("segments"):  # padding queries give zeros in every backend
    np.testing.assert_array_equal(np.asarray(got)[0, 7:], 0.0)
