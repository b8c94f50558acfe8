"""BiGS trains like the BERT encoder: the recipe's SSM learning rate, freezing, the quickstart, sharding."""

from __future__ import annotations

import json
import pathlib
import re

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from testlib import assert_ok, mlm_batch

from lmlab import main as cli
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.models.ssm import SSM_PARAMETER_NAMES
from lmlab.training.optimizers import (OptimizerConfig, decay_mask, make_optimizer, make_schedule,
                                       pattern_mask)
from lmlab.training.trainer import create_train_state, make_train_step

CONFIG = EncoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=1, d_ff=48,
                       max_positions=32, mixer="bigs", norm_position="pre", ssm_state_size=8,
                       dropout_rate=0.0, attention_dropout_rate=0.0)


def _one_step(**optimizer_fields):
  model = MaskedLMModel(CONFIG)
  # eps far below the gradients: Adam's first step is then lr * sign(grad) for every
  # entry, even for the SSM leaves whose gradients are ~1e-9 at the reference init.
  opt_config = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant",
                               eps=1e-20, weight_decay=0.0, **optimizer_fields)
  optimizer = make_optimizer(opt_config, 100)
  state = create_train_state(model, optimizer, seed=0, batch_size=2, sequence_length=16)
  step = jax.jit(make_train_step(model, optimizer, make_schedule(opt_config, 100)))
  new_state, _ = step(state, mlm_batch(0))
  flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v)
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  before, after = flat(state.params), flat(new_state.params)
  return {name: after[name] - before[name] for name in before}


def _is_ssm(name: str) -> bool:
  return any(f"'{leaf}'" in name for leaf in SSM_PARAMETER_NAMES)


def _recipe_scales() -> dict:
  """``OptimizerConfig.learning_rate_scales`` as ``runs/bigs_pretrain.gin`` binds it.

  The config is cleared again, so the recipe's other bindings do not reach the
  configs a test builds afterwards.
  """
  try:
    cli.parse_gin(["models/bigs_tiny.gin", "runs/bigs_pretrain.gin"], ["MODEL_DIR = '/unused'"], [])
    scales = dict(OptimizerConfig().learning_rate_scales)
  finally:
    gin.clear_config(clear_constants=True)
  assert set(scales.values()) == {0.1}, scales
  return scales


def _params():
  return nn.meta.unbox(MaskedLMModel(CONFIG).init(jax.random.PRNGKey(0), 2, 16))


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow  # optimizer masks are unit-tested; the CLI run is long
def test_ssm_parameters_take_a_scaled_step_or_stay_frozen():
  scales = _recipe_scales()  # the recipe's patterns, bound the way a run binds them
  plain = _one_step(clip_grad_norm=None)
  scaled = _one_step(clip_grad_norm=None, learning_rate_scales=scales)
  frozen = _one_step(learning_rate_scales=scales, frozen=list(scales))
  ssm_names = [n for n in plain if _is_ssm(n)]
  assert len(ssm_names) == 3 * 2 * CONFIG.num_layers  # 3 leaves x 2 directions x layers
  for name, delta in plain.items():
    assert np.abs(delta).max() > 0, name
    if _is_ssm(name):
      # float32 rounding of p + delta at |p| ~ 20 (A_im) is ~1e-6.
      np.testing.assert_allclose(scaled[name], 0.1 * delta, rtol=0, atol=5e-6)
      assert np.abs(scaled[name]).max() > 5e-4, name
      assert not frozen[name].any(), name
    else:
      np.testing.assert_allclose(scaled[name], delta, rtol=0, atol=1e-7)
      assert np.abs(frozen[name]).max() > 0, name


def test_ssm_parameters_are_not_weight_decayed():
  params = _params()
  decayed = _flat(decay_mask(params))
  selected = _flat(pattern_mask(params, list(_recipe_scales())))
  assert sum(selected.values()) == 3 * 2 * CONFIG.num_layers  # 3 leaves x 2 directions x layers
  for name, is_ssm in selected.items():
    assert is_ssm == _is_ssm(name), name
    if any(f"'{leaf}'" in name for leaf in ("A_re", "A_im", "C", "D", "log_step")):
      assert not decayed[name], name
  assert any(v for k, v in decayed.items() if "forward_in" in k and "kernel" in k)


def test_negative_learning_rate_scale_is_refused():
  with pytest.raises(ValueError, match=r"learning_rate_scales\['.\*/A_re'\] must be a finite factor >= 0"):
    OptimizerConfig(learning_rate_scales={".*/A_re": -1.0})


@pytest.mark.parametrize("field", ["learning_rate_scales", "frozen", "no_decay"])
def test_pattern_that_matches_no_parameter_is_refused(field):
  """Misspelt leaf names (``A_real``) would otherwise switch the option off without a word."""
  pattern = ".*/(A_real|A_imag)"
  value = {pattern: 0.1} if field == "learning_rate_scales" else [pattern]
  optimizer = make_optimizer(OptimizerConfig(**{field: value}), 100)
  params = _params()
  message = f"OptimizerConfig.{field}: pattern {pattern!r} matches no parameter"
  with pytest.raises(ValueError, match=re.escape(message)) as info:
    jax.eval_shape(optimizer.init, params)
  assert "encoder/" in str(info.value)  # shows what a path looks like
  # The same option with a pattern that does match builds its state.
  good = {".*/log_step": 0.1} if field == "learning_rate_scales" else [".*/log_step"]
  jax.eval_shape(make_optimizer(OptimizerConfig(**{field: good}), 100).init, params)


# --- through the command line -------------------------------------------------------

TINY_BIGS = (
    "--gin.EncoderConfig.d_model=64",
    "--gin.EncoderConfig.d_ff=128",
    "--gin.EncoderConfig.ssm_state_size=16",
    "--gin.EncoderConfig.max_positions=64",
    "--gin.SEQUENCE_LENGTH=64",
    "--gin.BATCH_SIZE=16",
    "--gin.WARMUP_STEPS=5",
    "--gin.TrainConfig.eval_steps=3",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.log_every=5",
    "--gin.TrainConfig.checkpoint_every=1000",
    "--gin.TrainConfig.progress_bar=False",
)


def _metrics(model_dir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a CLI recipe run; BiGS training steps are tested in-process above
def test_bigs_quickstart_validation_loss_falls(tmp_path, cli_run):
  assert_ok(cli_run("--gin_file=runs/bigs_quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                     *TINY_BIGS, "--gin.TRAIN_STEPS=60"))
  evals = [r["eval/loss"] for r in _metrics(tmp_path) if "eval/loss" in r]
  assert len(evals) == 2 and evals[-1] < evals[0] - 1.0, evals
  config = (tmp_path / "config.gin").read_text()
  assert "EncoderConfig.mixer = 'bigs'" in config
  assert "OptimizerConfig.learning_rate_scales = {'.*/(A_re|A_im|log_step)': 0.1}" in config


@pytest.mark.slow  # sharding, scan and remat have default tests of their own
def test_bigs_trains_sharded_with_per_channel_kernels_scan_and_remat(tmp_path, cli_run):
  assert_ok(cli_run("--gin_file=runs/bigs_quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                     "--gin_file=partitioning/fsdp_tensor.gin", *TINY_BIGS,
                     "--gin.EncoderConfig.ssm_shared_kernel=False",
                     "--gin.EncoderConfig.scan_layers=True",
                     "--gin.EncoderConfig.remat_policy='full'",
                     "--gin.EncoderConfig.ssm_mask_padding=True",
                     "--gin.TRAIN_STEPS=10"))
  losses = [r["train/loss"] for r in _metrics(tmp_path) if "train/loss" in r]
  assert losses and all(np.isfinite(losses)) and losses[-1] < losses[0], losses
