"""Train steps of the T5-family wrapper on synthetic batches: loss, z-loss, accumulation, MrT5."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from lmlab.wrappers.encoder_decoder import DeletionRegularizer, EncoderDecoderModel
from lmlab.models.config import T5Config
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lmlab.training.trainer import create_train_state, make_train_step

CONFIG = T5Config(vocab_size=128, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                  num_encoder_layers=2, num_decoder_layers=1)


def _batch(seed: int, rows: int = 8, enc_len: int = 16, dec_len: int = 8) -> dict:
  """Copy task: each target is the first half of its input (uneven padding per row)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, 128, (rows, enc_len)).astype(np.int32)
  enc_seg = np.ones((rows, enc_len), np.int32)
  for row in range(rows):
    enc_seg[row, enc_len - row:] = 0
  enc *= enc_seg
  targets = np.concatenate([enc[:, :dec_len - 1], np.ones((rows, 1), np.int32)], axis=1)
  dec_in = np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1)
  dec_seg = np.ones((rows, dec_len), np.int32)
  positions = lambda n: np.tile(np.arange(n, dtype=np.int32), (rows, 1))
  return {"encoder_input_tokens": enc, "encoder_segment_ids": enc_seg,
          "encoder_positions": positions(enc_len), "decoder_input_tokens": dec_in,
          "decoder_target_tokens": targets, "decoder_loss_weights": dec_seg.astype(np.float32),
          "decoder_segment_ids": dec_seg, "decoder_positions": positions(dec_len)}


def _setup(model: EncoderDecoderModel, accum_steps: int = 1, optimizer: str = "adamw",
           lr: float = 3e-3):
  opt_config = OptimizerConfig(optimizer=optimizer, learning_rate=lr, schedule="constant",
                               weight_decay=0.0)
  opt = make_optimizer(opt_config, 100)
  state = create_train_state(model, opt, seed=0, batch_size=2, sequence_length=16)
  step = jax.jit(make_train_step(model, opt, make_schedule(opt_config, 100), accum_steps))
  return state, step


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_loss_falls_on_a_fixed_batch(optimizer):
  state, step = _setup(EncoderDecoderModel(CONFIG), optimizer=optimizer,
                       lr=3e-3 if optimizer == "adamw" else 1e-2)
  batch = _batch(0)
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
  assert losses[-1] < 0.6 * losses[0], losses


def test_gradient_accumulation_matches_one_big_batch():
  model = EncoderDecoderModel(CONFIG)
  (s1, step1), (s4, step4) = _setup(model, 1), _setup(model, 4)
  batch = _batch(1)
  n1, m1 = step1(s1, batch)
  n4, m4 = step4(s4, batch)
  np.testing.assert_allclose(float(m1["loss_sum"]), float(m4["loss_sum"]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(n1.params), jax.tree_util.tree_leaves(n4.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_z_loss_is_an_auxiliary_term():
  batch = _batch(2)
  with_z, without_z = EncoderDecoderModel(CONFIG, z_loss=1e-2), EncoderDecoderModel(CONFIG, z_loss=0.0)
  params = jax.jit(lambda r: with_z.init(r, 2))(jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda x: x, __import__("flax").linen.meta.unbox(params))
  a, b = jax.jit(with_z.loss_sums)(params, batch), jax.jit(without_z.loss_sums)(params, batch)
  assert float(a["loss_sum"]) == pytest.approx(float(b["loss_sum"]), rel=1e-6)
  assert float(a["aux_loss_sum"]) > 0 and float(b["aux_loss_sum"]) == 0.0
  metrics = with_z.metrics(jax.device_get(a))
  assert metrics["z_loss"] > 0 and np.isfinite(metrics["loss"])


def test_mrt5_pi_controller_raises_alpha_below_target_and_lowers_it_above():
  mrt5 = dataclasses.replace(CONFIG, delete_gate_layer=1)
  model = EncoderDecoderModel(mrt5, deletion=DeletionRegularizer(alpha=0.0, target_rate=0.5, kp=0.1,
                                                                 ki=0.01))
  state0 = model.initial_model_state()
  below = model.update_model_state(state0, {"deleted_sum": 10.0, "encoder_token_sum": 100.0})
  assert float(below["deletion_alpha"]) > 0  # 10% deleted < 50% target: push harder
  above = model.update_model_state(below, {"deleted_sum": 95.0, "encoder_token_sum": 100.0})
  assert float(above["deletion_alpha"]) < float(below["deletion_alpha"])
  with pytest.raises(ValueError, match="delete_gate_layer"):
    EncoderDecoderModel(CONFIG, deletion=DeletionRegularizer())


def test_mrt5_pi_controller_follows_the_reference_formula():
  """Kallini et al.'s controller: smoothed P term, I term, alpha = max(0, P + I)."""
  mrt5 = dataclasses.replace(CONFIG, delete_gate_layer=1)
  reg = DeletionRegularizer(alpha=0.3, target_rate=0.4)
  assert (reg.kp, reg.ki, reg.p_smoothing, reg.min_alpha, reg.max_alpha) == (0.5, 1e-5, 0.9, 0.0,
                                                                            None)
  model = EncoderDecoderModel(mrt5, deletion=reg)
  state = model.initial_model_state()
  assert float(state["deletion_alpha"]) == pytest.approx(0.3)  # the first step's weight
  p_acc = i_acc = 0.0
  alphas = []
  # Below, above (alpha clamps to 0 while P + I < 0), then below the target again.
  for rate in (0.1, 0.2, 0.5, 0.9, 0.9, 0.3, 0.0, 0.0, 0.0):
    state = model.update_model_state(state, {"deleted_sum": rate * 200.0,
                                             "encoder_token_sum": 200.0})
    error = 0.4 - rate
    p_acc = 0.9 * p_acc + 0.1 * 0.5 * error
    i_acc = i_acc + 1e-5 * error
    alphas.append(max(0.0, p_acc + i_acc))
    assert float(state["deletion_p_acc"]) == pytest.approx(p_acc, rel=1e-5, abs=1e-8)
    assert float(state["deletion_i_acc"]) == pytest.approx(i_acc, rel=1e-5, abs=1e-10)
    assert float(state["deletion_alpha"]) == pytest.approx(alphas[-1], rel=1e-5, abs=1e-8)
  assert alphas[3] == alphas[6] == 0.0 and alphas[0] > 0 and alphas[-1] > 0


def test_mrt5_earlier_signed_controller_is_an_option():
  """p_smoothing=0 and a [-1, 1] clip give the earlier clip(kp * e + ki * sum(e), -1, 1)."""
  mrt5 = dataclasses.replace(CONFIG, delete_gate_layer=1)
  reg = DeletionRegularizer(alpha=0.0, target_rate=0.5, kp=0.05, ki=0.005, p_smoothing=0.0,
                            min_alpha=-1.0, max_alpha=1.0)
  model = EncoderDecoderModel(mrt5, deletion=reg)
  state, errors = model.initial_model_state(), []
  for rate in (0.1, 0.9, 0.95, 0.7):
    state = model.update_model_state(state, {"deleted_sum": rate * 100.0,
                                             "encoder_token_sum": 100.0})
    errors.append(0.5 - rate)
    want = np.clip(0.05 * errors[-1] + 0.005 * sum(errors), -1.0, 1.0)
    assert float(state["deletion_alpha"]) == pytest.approx(want, rel=1e-5, abs=1e-8)
  assert float(state["deletion_alpha"]) < 0  # signed: it rewards keeping after an overshoot


@pytest.mark.parametrize("controller", ["reference", "signed"])
def test_mrt5_deletion_rate_moves_to_the_target(controller):
  """From (almost) nothing deleted, the controller raises the deletion rate to the target.

  The signed option (plain P term, ``alpha`` in [-1, 1]) then holds it there.
  The reference's ``alpha >= 0`` cannot undo an overshoot: on this toy task
  its rate runs past the target (to about 0.9) with ``alpha`` at 0, and the
  cross-entropy alone does not bring saturated gates back.
  """
  signed = controller == "signed"
  options = dict(p_smoothing=0.0, min_alpha=-1.0, max_alpha=1.0) if signed else {}
  mrt5 = dataclasses.replace(CONFIG, delete_gate_layer=1, delete_gate_bias_init=2.0)
  model = EncoderDecoderModel(mrt5, deletion=DeletionRegularizer(alpha=0.0, target_rate=0.5,
                                                                 kp=0.5, ki=0.02, **options))
  state, step = _setup(model, lr=3e-3)
  batch = {k: np.concatenate([_batch(i)[k] for i in range(4)]) for k in _batch(0)}
  rates, alphas = [], []
  for _ in range(150 if signed else 30):
    state, metrics = step(state, batch)
    rates.append(float(metrics["deleted_sum"] / metrics["encoder_token_sum"]))
    alphas.append(float(state.model_state["deletion_alpha"]))
  assert rates[0] < 0.1
  assert max(rates[:30]) >= 0.5, rates[:30]
  if signed:
    assert min(alphas) < 0  # it did reward keeping, after the overshoot
    assert abs(np.mean(rates[-30:]) - 0.5) < 0.08, rates[::10]
    assert np.std(rates[-30:]) < 0.1, rates[-30:]
  else:
    assert min(alphas) >= 0.0
