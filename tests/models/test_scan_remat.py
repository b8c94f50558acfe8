"""Memory levers of the encoder: scanned layers and rematerialisation change no numbers."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import Encoder, EncoderConfig
from lmlab.models.config import REMAT_POLICIES

TINY = EncoderConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                     max_positions=8, dropout_rate=0.0, attention_dropout_rate=0.0)
# ALiBi passes a bias tensor through the layers; the other schemes pass None.
POST_LN = dict(norm_position="post", position_scheme="alibi")
PRE_LN = dict(norm_position="pre", norm_type="rmsnorm", position_scheme="rope")
DROPOUT = dict(dropout_rate=0.1, attention_dropout_rate=0.1)
IDS = np.array([[3, 4, 5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14, 15, 16]], np.int32)
# XLA options that cut CPU compile time of these tiny programs by about a third.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Fixed output weights: a plain sum of normalised hidden states is ~0 and hides errors.
OUT_WEIGHTS = np.random.default_rng(1).normal(size=(2, 8, 16)).astype(np.float32)


def _params(cfg: EncoderConfig, seed: int = 0):
  """Loop-layout params filled from numpy (compiling the initializers is slow on CPU)."""
  loop_cfg = dataclasses.replace(cfg, scan_layers=False, remat_policy="none")
  abstract = jax.eval_shape(lambda: Encoder(loop_cfg).init(jax.random.key(0), IDS))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape, name = leaf.shape, path[-1].key
    if name == "scale":
      return np.ones(shape, np.float32) + 0.1 * rng.normal(size=shape).astype(np.float32)
    return ((0.1 if name == "bias" else 0.3) * rng.normal(size=shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract))["params"]


def _stack_layers(params, num_layers: int):
  """Loop layout (``layers_<i>``) -> scan layout (``layers`` with a leading layer axis)."""
  params = dict(params)
  per_layer = [params.pop(f"layers_{i}") for i in range(num_layers)]
  params["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_layer)
  return params


def _run(runs):
  """``(output, loss, grads)`` of each ``(config, params, deterministic, dropout_seed)``.

  All runs are traced into one jitted function: compiling is what costs time on
  a small CPU, and one larger program compiles faster than several small ones.
  """

  def one(cfg, params, deterministic, seed):
    def loss(p):
      out = Encoder(cfg).apply({"params": p}, IDS, deterministic=deterministic,
                               rngs={"dropout": jax.random.key(seed)})
      return jnp.sum(out * OUT_WEIGHTS), out

    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, value, grads

  def all_runs(params_list):
    return [one(cfg, p, det, seed) for (cfg, _, det, seed), p in zip(runs, params_list)]

  params_list = [params for _, params, _, _ in runs]
  compiled = jax.jit(all_runs).lower(params_list).compile(_FAST_COMPILE)
  results = compiled(params_list)
  return jax.tree_util.tree_map(np.asarray, results)


def _assert_trees_close(a, b, atol=1e-5):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("overrides", [POST_LN, PRE_LN], ids=["post_ln_alibi", "pre_ln_rope"])
def test_scanned_encoder_matches_loop(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  scan_cfg = dataclasses.replace(cfg, scan_layers=True)
  params = _params(cfg)
  stacked = _stack_layers(params, cfg.num_layers)
  # The layers really differ, so a scan that reused one layer's params would fail.
  assert not np.allclose(params["layers_0"]["mlp_norm"]["scale"],
                         params["layers_1"]["mlp_norm"]["scale"])
  (loop_out, loop_loss, loop_grads), (scan_out, scan_loss, scan_grads) = _run(
      [(cfg, params, True, 0), (scan_cfg, stacked, True, 0)])
  np.testing.assert_allclose(scan_out, loop_out, atol=1e-5, rtol=0)
  np.testing.assert_allclose(scan_loss, loop_loss, atol=1e-5, rtol=1e-6)
  _assert_trees_close(scan_grads, _stack_layers(loop_grads, cfg.num_layers))


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_remat_policies_match_no_remat(scan):
  # One layer keeps compilation short; remat wraps each layer the same way.
  cfg = dataclasses.replace(TINY, scan_layers=scan, num_layers=1, **DROPOUT)
  params = _params(cfg)
  if scan:
    params = _stack_layers(params, cfg.num_layers)
  policies = sorted(REMAT_POLICIES)
  variants = [dataclasses.replace(cfg, remat_policy=policy) for policy in policies]
  # Deterministic runs for every policy, then dropout on (same rng) without and with remat.
  # ``deterministic`` is a static argument of the rematerialised layer, so both values
  # must trace; with dropout on, the remat layer must draw the plain layer's masks.
  runs = [(variant, params, True, 0) for variant in variants]
  full = variants[policies.index("full")]
  # The last run drops out only inside the layers, to show the flag reaches them.
  runs += [(variants[policies.index("none")], params, False, 1), (full, params, False, 1),
           (dataclasses.replace(full, dropout_rate=0.0), params, False, 1)]
  results = _run(runs)
  ref_out, ref_loss, ref_grads = results[policies.index("none")]
  for policy, (out, loss, grads) in zip(policies, results):
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0, err_msg=policy)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=1e-6, err_msg=policy)
    _assert_trees_close(grads, ref_grads)
  dropout, remat, inner_dropout = results[len(policies):]
  (dropout_out, dropout_loss, dropout_grads), (remat_out, remat_loss, remat_grads) = dropout, remat
  np.testing.assert_allclose(remat_out, dropout_out, atol=1e-5, rtol=0)
  np.testing.assert_allclose(remat_loss, dropout_loss, atol=1e-5, rtol=1e-6)
  _assert_trees_close(remat_grads, dropout_grads)
  # Dropout is really active inside the layers, and the policy is really applied.
  assert abs(float(dropout_loss) - float(ref_loss)) > 1e-3
  assert abs(float(inner_dropout[1]) - float(ref_loss)) > 1e-3
  for variant in variants:
    jaxpr = str(jax.make_jaxpr(lambda p: Encoder(variant).apply({"params": p}, IDS))(params))
    has_checkpoint = "checkpoint" in jaxpr or "remat" in jaxpr
    assert has_checkpoint == (variant.remat_policy != "none"), variant.remat_policy


def test_scanned_params_have_layers_axis_first():
  cfg = dataclasses.replace(TINY, num_layers=3, scan_layers=True, remat_policy="dots")
  boxed = jax.eval_shape(lambda: Encoder(cfg).init(jax.random.key(0), IDS))
  specs = nn.get_partition_spec(boxed)["params"]
  assert set(specs) == {"embeddings", "layers"}
  query = specs["layers"]["attention"]["query"]
  assert tuple(query["kernel"]) == ("layers", "embed", "heads", "kv")
  assert tuple(query["bias"]) == ("layers", "heads", "kv")
  assert tuple(specs["layers"]["mlp_norm"]["scale"]) == ("layers", "embed")
  # Non-scanned parameters keep their own names.
  assert tuple(specs["embeddings"]["token_embedder"]["embedding"]) == ("vocab", "embed")
  shapes = nn.meta.unbox(boxed)["params"]["layers"]
  assert shapes["attention"]["query"]["kernel"].shape == (3, 16, 2, 8)
  for spec, shape in zip(jax.tree_util.tree_leaves(specs["layers"]),
                         jax.tree_util.tree_leaves(shapes)):
    assert spec[0] == "layers" and len(spec) == len(shape.shape)


def test_invalid_remat_policy_raises():
  with pytest.raises(ValueError) as info:
    EncoderConfig(remat_policy="everything")
  message = str(info.value)
  assert "remat_policy" in message and "'everything'" in message
  for allowed in REMAT_POLICIES:
    assert repr(allowed) in message
