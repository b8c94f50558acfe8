"""BiGS blocks and encoder: the reference equations, padding, long sequences, errors."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models.bigs import BiGSLayer
from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import EncoderForMaskedLM, EncoderForSequenceClassification

TINY = EncoderConfig(vocab_size=128, d_model=16, num_layers=2, num_heads=1, d_ff=24,
                     max_positions=64, mixer="bigs", norm_position="pre", ssm_state_size=8,
                     dropout_rate=0.0, attention_dropout_rate=0.0, norm_eps=1e-6)


# --- the reference equations, written out naively in float64 --------------------------


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _s4d(u, p):
  """One S4D system per channel group: explicit ZOH kernel, direct causal convolution, D skip."""
  length, channels = u.shape
  a_re, a_im = np.asarray(p["A_re"], np.float64), np.asarray(p["A_im"], np.float64)
  c = np.asarray(p["C"], np.float64)
  a = np.minimum(a_re, -1e-4) + 1j * a_im
  c = c[..., 0] + 1j * c[..., 1]
  dt = np.exp(np.asarray(p["log_step"], np.float64))
  if a.ndim == 1:  # shared by all channels
    a, c, dt = a[None], c[None], np.broadcast_to(dt, (1,))
  d = np.broadcast_to(np.asarray(p["D"], np.float64), (channels,))
  out = np.empty_like(u)
  for h in range(channels):
    row = h if a.shape[0] > 1 else 0
    kernel = [np.real(np.sum(c[row] * (np.exp(dt[row] * a[row]) - 1) / a[row]
                             * np.exp(l * dt[row] * a[row]))) for l in range(length)]
    out[:, h] = np.convolve(u[:, h], kernel)[:length] + d[h] * u[:, h]
  return out


def naive_bigs_layer(x, p, *, pre_norm=True, eps=1e-6):
  """``X [length, d_model]`` through one BiGS block, as the paper/reference write it."""
  mix_in = _layer_norm(x, p["norm"], eps) if pre_norm else x
  v = _gelu_tanh(_dense(mix_in, p["value"]))
  f = _gelu_tanh(_dense(mix_in, p["forward_in"]))
  b = _gelu_tanh(_dense(mix_in[::-1], p["backward_in"]))
  f = _s4d(f, p["forward_ssm"])
  b = _s4d(b, p["backward_ssm"])
  u = _dense(f, p["forward_out"]) * _dense(b, p["backward_out"])[::-1]
  out = x + _dense(_gelu_tanh(_dense(u, p["gate_in"])) * v, p["out"])
  return out if pre_norm else _layer_norm(out, p["norm"], eps)


def _perturbed(params, key, scale=0.3):
  """Random offsets on every parameter so no term hides behind its initial value."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("norm_position,shared,a_init", [
    ("pre", True, "hippo"), ("post", True, "lin"), ("pre", False, "inv")])
@pytest.mark.parametrize("length", [9, 32])
def test_layer_equals_reference_equations(norm_position, shared, a_init, length):
  cfg = dataclasses.replace(TINY, norm_position=norm_position, ssm_shared_kernel=shared,
                            ssm_a_init=a_init)
  layer = BiGSLayer(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, length, cfg.d_model))
  mask = jnp.ones((2, length), bool)
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(1), x, mask, None, None, True)["params"])
  params = _perturbed(params, jax.random.PRNGKey(2))
  out = np.asarray(layer.apply({"params": params}, x, mask, None, None, True))
  numpy_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  for row in range(2):
    expected = naive_bigs_layer(np.asarray(x[row], np.float64), numpy_params,
                                pre_norm=norm_position == "pre", eps=cfg.norm_eps)
    np.testing.assert_allclose(out[row], expected, atol=2e-5 * np.abs(expected).max(), rtol=0)


def _init_mlm(cfg, length=16, seed=0):
  """Model, ids and perturbed parameters: at the reference init (dense std 0.02) the gated
  product of two projected branches is ~1e-4 of the residual, too small to test mixing."""
  model = EncoderForMaskedLM(cfg)
  ids = jax.random.randint(jax.random.PRNGKey(seed), (2, length), 1, cfg.vocab_size)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), ids)["params"])
  return model, ids, _perturbed(params, jax.random.PRNGKey(seed + 1))


def test_padding_is_read_by_the_backward_branch_unless_masked():
  """The reference lets right padding reach real tokens through the backward SSM;
  ``ssm_mask_padding`` makes a padded example equal the unpadded one."""
  for mask_padding in (False, True):
    cfg = dataclasses.replace(TINY, ssm_mask_padding=mask_padding)
    model, ids, params = _init_mlm(cfg, length=12)
    real = ids[:1, :8]
    padded = jnp.concatenate([real, jnp.zeros((1, 4), real.dtype)], axis=1)
    short = model.apply({"params": params}, real)
    long = model.apply({"params": params}, padded)[:, :8]
    difference = float(jnp.max(jnp.abs(short - long)))
    if mask_padding:
      assert difference < 1e-4
    else:
      assert difference > 1e-3


def test_sequence_classification_pools_non_padding_tokens():
  cfg = dataclasses.replace(TINY, ssm_mask_padding=True)
  model = EncoderForSequenceClassification(cfg, num_classes=3, pooling="mean")
  ids = jax.random.randint(jax.random.PRNGKey(3), (1, 8), 1, cfg.vocab_size)
  padded = jnp.concatenate([ids, jnp.zeros((1, 5), ids.dtype)], axis=1)
  params = _perturbed(nn.meta.unbox(model.init(jax.random.PRNGKey(4), padded)["params"]),
                      jax.random.PRNGKey(5))
  np.testing.assert_allclose(model.apply({"params": params}, ids),
                             model.apply({"params": params}, padded), atol=1e-5)


def test_gradients_are_finite_and_reach_every_parameter():
  model, ids, params = _init_mlm(TINY, length=32)

  def loss(p):
    logits = model.apply({"params": p}, ids)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 5])

  grads = jax.grad(loss)(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.isfinite(np.asarray(grad)).all(), name
    if "token_type" not in name:  # token types are all 0: rows other than 0 get no gradient
      assert np.abs(np.asarray(grad)).max() > 0, name


def test_4096_tokens_forward_and_backward_on_cpu():
  cfg = dataclasses.replace(TINY, d_model=8, d_ff=8, num_layers=1, max_positions=4096,
                            ssm_state_size=4)
  model, ids, params = _init_mlm(cfg, length=4096)
  ids = ids[:1]

  def loss(p):
    return jnp.mean(jnp.square(model.apply({"params": p}, ids)))

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  # The backward branch carries information from the last token to the first.
  logits = lambda tokens: model.apply({"params": params}, tokens)
  changed = ids.at[0, -1].set((ids[0, -1] + 1) % cfg.vocab_size)
  assert float(jnp.max(jnp.abs(logits(ids)[0, 0] - logits(changed)[0, 0]))) > 0


def test_scan_and_remat_equal_the_unrolled_stack():
  model, ids, params = _init_mlm(TINY)
  scanned_cfg = dataclasses.replace(TINY, scan_layers=True, remat_policy="full")
  scanned = EncoderForMaskedLM(scanned_cfg)
  stacked = dict(params)
  encoder = dict(params["encoder"])
  layers = [encoder.pop(f"layers_{i}") for i in range(TINY.num_layers)]
  encoder["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  stacked["encoder"] = encoder
  np.testing.assert_allclose(scanned.apply({"params": stacked}, ids),
                             model.apply({"params": params}, ids), atol=1e-5)


def test_bad_configs_and_inputs_are_refused():
  with pytest.raises(ValueError, match="ssm_a_init='legs' is not one of"):
    dataclasses.replace(TINY, ssm_a_init="legs")
  with pytest.raises(ValueError, match="mixer='mamba' is not one of"):
    dataclasses.replace(TINY, mixer="mamba")
  with pytest.raises(ValueError, match="position_scheme='rope' has no effect with mixer='bigs'"):
    dataclasses.replace(TINY, position_scheme="rope")
  model, _, params = _init_mlm(TINY)
  too_long = jnp.ones((1, TINY.max_positions + 1), jnp.int32)
  with pytest.raises(ValueError, match="exceeds EncoderConfig.max_positions=64"):
    model.apply({"params": params}, too_long)
