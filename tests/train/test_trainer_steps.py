"""Train-step behaviour on the real encoder with synthetic batches."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from testlib import mlm_batch

from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.training.optimizers import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from lmlab.training.trainer import create_train_state, make_train_step

CONFIG = EncoderConfig(vocab_size=256, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                       max_positions=32, dropout_rate=0.0, attention_dropout_rate=0.0)




def _setup(accum_steps: int, lr: float = 1e-2):
  model = MaskedLMModel(CONFIG)
  opt_config = OptimizerConfig(learning_rate=lr, warmup_steps=0, schedule="constant")
  optimizer = make_optimizer(opt_config, 100)
  state = create_train_state(model, optimizer, seed=0, batch_size=2, sequence_length=16)
  step = jax.jit(make_train_step(model, optimizer, make_schedule(opt_config, 100), accum_steps))
  return state, step


def test_gradient_accumulation_matches_one_big_batch():
  state1, step1 = _setup(1)
  state4, step4 = _setup(4)
  batch = mlm_batch(0, staircase_padding=True)
  new1, m1 = step1(state1, batch)
  new4, m4 = step4(state4, batch)
  np.testing.assert_allclose(float(m1["loss_sum"]), float(m4["loss_sum"]), rtol=1e-5)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(new1.params), jax.tree_util.tree_leaves(new4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_loss_falls_when_training_on_a_fixed_batch():
  state, step = _setup(1, lr=3e-3)
  batch = mlm_batch(1, staircase_padding=True)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 30


def test_weight_decay_skips_biases_and_norms():
  model = MaskedLMModel(CONFIG)
  state, _ = _setup(1)
  mask = decay_mask(state.params)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert any(v for k, v in flat.items() if "kernel" in k or "embedding" in k)
  assert not any(v for k, v in flat.items() if "bias" in k or "scale" in k)
  del model


def test_schedules_warm_up_then_decay():
  cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="linear")
  lin = make_schedule(cfg, 110)
  assert float(lin(0)) == 0.0 and abs(float(lin(10)) - 1.0) < 1e-6
  assert abs(float(lin(60)) - 0.5) < 1e-6 and float(lin(110)) < 1e-6
  cos = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="cosine"), 110)
  assert abs(float(cos(60)) - 0.5) < 1e-6
  const = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="constant"), 110)
  assert float(const(0)) == float(const(100)) == 1.0


def test_clipping_bounds_the_update():
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1.0, clip_grad_norm=1.0,
                                             weight_decay=0.0, schedule="constant"), 10)
  params = {"w": jnp.ones((4, 4))}
  state = optimizer.init(params)
  clip = optax.clip_by_global_norm(1.0)
  clipped, _ = clip.update({"w": jnp.full((4, 4), 100.0)}, clip.init(params))
  assert abs(float(optax.global_norm(clipped)) - 1.0) < 1e-5
  updates, _ = optimizer.update({"w": jnp.full((4, 4), 100.0)}, state, params)
  assert bool(jnp.all(jnp.isfinite(updates["w"])))


def test_gathered_mlm_head_matches_full_head():
  batch = mlm_batch(2, staircase_padding=True)
  full, gathered = MaskedLMModel(CONFIG), MaskedLMModel(CONFIG, max_prediction_fraction=0.45)
  params = nn.meta.unbox(jax.jit(lambda r: full.init(r, 2, 16))(jax.random.PRNGKey(1)))
  assert int(np.max(batch["loss_weights"].sum(1))) <= 8  # fits in ceil(0.45 * 16) = 8
  loss_full = jax.jit(lambda p: full.loss_sums(p, batch)["loss_sum"])
  loss_gathered = jax.jit(lambda p: gathered.loss_sums(p, batch)["loss_sum"])
  np.testing.assert_allclose(float(loss_full(params)), float(loss_gathered(params)), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss_full)(params)),
                  jax.tree_util.tree_leaves(jax.grad(loss_gathered)(params))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert float(gathered.loss_sums(params, batch)["dropped_predictions"]) == 0.0
  tight = MaskedLMModel(CONFIG, max_prediction_fraction=0.1)  # 2 per row: some are dropped
  assert float(tight.loss_sums(params, batch)["dropped_predictions"]) > 0
