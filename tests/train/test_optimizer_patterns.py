"""OptimizerConfig's parameter patterns: learning-rate scales, frozen parameters, no decay.

Small hand-made parameter trees, so every number can be worked out by hand.
"""

from __future__ import annotations

import ast
import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmlab.training import optimizers
from lmlab.training.optimizers import (OptimizerConfig, decay_mask, make_optimizer,
                                       parameter_paths, pattern_mask)


def _params():
  return {"encoder": {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.zeros((3,))},
                      "embed": {"embedding": jnp.ones((4, 2))}},
          "head": {"kernel": jnp.ones((3, 2))}}


def _step(params, grads, **fields):
  """One optimizer step (constant learning rate 0.1); returns the parameter changes."""
  config = OptimizerConfig(learning_rate=0.1, schedule="constant", **fields)
  optimizer = make_optimizer(config, 10)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  return updates


def test_paths_and_masks():
  params = _params()
  assert parameter_paths(params) == ["encoder/dense/bias", "encoder/dense/kernel",
                                     "encoder/embed/embedding", "head/kernel"]
  assert pattern_mask(params, [".*/kernel"]) == {
      "encoder": {"dense": {"kernel": True, "bias": False}, "embed": {"embedding": False}},
      "head": {"kernel": True}}
  # Patterns match the whole path: "kernel" alone selects nothing.
  assert not any(jax.tree_util.tree_leaves(pattern_mask(params, ["kernel"])))
  assert decay_mask(params) == {
      "encoder": {"dense": {"kernel": True, "bias": False}, "embed": {"embedding": True}},
      "head": {"kernel": True}}
  assert decay_mask(params, no_decay=["encoder/embed/.*", "head/kernel"]) == {
      "encoder": {"dense": {"kernel": True, "bias": False}, "embed": {"embedding": False}},
      "head": {"kernel": False}}


def test_learning_rate_scale_multiplies_the_whole_update():
  params = _params()
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  plain = _step(params, grads, weight_decay=0.1)
  scaled = _step(params, grads, weight_decay=0.1, learning_rate_scales={"encoder/dense/.*": 0.25})
  for path, leaf in (("dense", "kernel"), ("dense", "bias")):
    np.testing.assert_allclose(scaled["encoder"][path][leaf], 0.25 * plain["encoder"][path][leaf],
                               rtol=1e-6)
  np.testing.assert_allclose(scaled["head"]["kernel"], plain["head"]["kernel"], rtol=0)
  assert np.abs(plain["encoder"]["dense"]["kernel"]).min() > 0


def test_frozen_parameters_neither_move_nor_count_in_the_global_norm():
  params = _params()
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  grads["encoder"]["dense"]["kernel"] = jnp.full((2, 3), 1e6)
  grads["head"]["kernel"] = jnp.full((3, 2), 0.1)  # global norm 0.245 < 1 once the kernel is out
  # eps = 1 makes Adam's first step proportional to the gradient, so clipping would show.
  fields = dict(eps=1.0, b1=0.0, b2=0.0, weight_decay=0.5, clip_grad_norm=1.0)
  updates = _step(params, grads, frozen=["encoder/dense/kernel"], **fields)
  assert not np.any(updates["encoder"]["dense"]["kernel"])  # despite the weight decay
  decayed_only = -0.1 * 0.5 * params["head"]["kernel"]
  np.testing.assert_allclose(updates["head"]["kernel"] - decayed_only, -0.1 * 0.1 / 1.1, rtol=1e-5)
  # Not frozen, the big gradient dominates the clipped norm and the head barely moves.
  unfrozen = _step(params, grads, **fields)
  assert np.abs(unfrozen["head"]["kernel"] - decayed_only).max() < 1e-6


def test_frozen_wins_over_a_learning_rate_scale_and_works_with_adafactor():
  params = _params()
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates = _step(params, grads, optimizer="adafactor", weight_decay=0.1,
                  learning_rate_scales={"head/.*": 2.0}, frozen=["head/.*"])
  assert not np.any(updates["head"]["kernel"])
  assert np.abs(updates["encoder"]["dense"]["kernel"]).min() > 0


@pytest.mark.parametrize("fields, message", [
    ({"frozen": ["("]}, r"OptimizerConfig.frozen: '\(' is not a valid regular expression"),
    ({"no_decay": ".*/bias"}, r"OptimizerConfig.no_decay must be a list of patterns"),
    ({"frozen": [""]}, r"a pattern must be a non-empty string"),
    ({"learning_rate_scales": {".*": float("nan")}}, r"must be a finite factor >= 0"),
    ({"learning_rate_scales": [".*"]}, r"must map patterns to factors"),
])
def test_invalid_options_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    OptimizerConfig(**fields)


def test_a_parameter_takes_one_learning_rate_scale():
  optimizer = make_optimizer(OptimizerConfig(learning_rate_scales={".*/kernel": 0.5, "head/.*": 2.0}),
                             10)
  with pytest.raises(ValueError, match=r"parameter 'head/kernel' matches \['\.\*/kernel', 'head/\.\*'\]"):
    optimizer.init(_params())


def test_unmatched_pattern_is_named():
  optimizer = make_optimizer(OptimizerConfig(no_decay=["encoder/dense/kernel", ".*/scale"]), 10)
  with pytest.raises(ValueError, match=r"OptimizerConfig.no_decay: pattern '\.\*/scale' matches no "
                                       r"parameter.*encoder/dense/bias"):
    optimizer.init(_params())


def test_options_bind_from_gin():
  gin.parse_config("""
      OptimizerConfig.learning_rate_scales = {'.*/(A_re|A_im|log_step)': 0.1}
      OptimizerConfig.frozen = ['.*/log_step']
      OptimizerConfig.no_decay = ['.*/embedding']
  """)
  config = OptimizerConfig()
  assert config.learning_rate_scales == {".*/(A_re|A_im|log_step)": 0.1}
  assert config.frozen == (".*/log_step",) and config.no_decay == (".*/embedding",)


def test_state_maps_over_parameters_with_patterns():
  """optax.tree_map_params (how optimizer-state shardings are found) initialises with a placeholder."""
  params = _params()
  config = OptimizerConfig(learning_rate_scales={"head/.*": 0.5}, frozen=["encoder/embed/.*"],
                           no_decay=[".*/bias"])
  optimizer = make_optimizer(config, 10)
  state = optimizer.init(params)
  shapes = optax.tree_map_params(optimizer, lambda leaf: leaf.shape, state,
                                 transform_non_params=lambda _: None)
  assert jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))


def test_optimizers_know_no_model():
  """Which parameters are special is configuration (gin), not an import of the networks."""
  tree = ast.parse(pathlib.Path(optimizers.__file__).read_text())
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names}
  imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  assert not {name for name in imported if name.startswith("lmlab")}, imported
