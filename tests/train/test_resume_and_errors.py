"""End-to-end CLI runs: exact resume, and clear errors for bad input."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from testlib import assert_ok

EVAL_SPLIT = "--gin.DataConfig.eval_split='validation'"


def _final_params(model_dir: pathlib.Path) -> dict:
  ckpt_dir = model_dir / "checkpoints"
  step = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  restored = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
  return step, restored


def _train_losses(model_dir: pathlib.Path) -> dict[int, float]:
  lines = (model_dir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r}


def test_resume_is_bitwise_exact(tmp_path, tiny_run):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  common = ("--gin.TrainConfig.checkpoint_every=3",)
  assert_ok(tiny_run(straight, "--gin.TRAIN_STEPS=6", *common))
  # What every run writes: the resolved config, TensorBoard files, a loss per step.
  assert "EncoderConfig.d_model = 32" in (straight / "config.gin").read_text()
  assert (straight / "config.operative.gin").exists()
  assert list((straight / "tensorboard").iterdir())
  assert set(_train_losses(straight)) == set(range(1, 7))
  assert_ok(tiny_run(resumed, "--gin.TRAIN_STEPS=6", "--gin.TrainConfig.stop_after_step=3", *common))
  proc = tiny_run(resumed, "--gin.TRAIN_STEPS=6", *common)  # a new process resumes at step 3
  assert_ok(proc)
  assert "steps 3 -> 6" in proc.stdout

  step_a, state_a = _final_params(straight)
  step_b, state_b = _final_params(resumed)
  assert step_a == step_b == 6
  leaves_a, leaves_b = jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses_a, losses_b = _train_losses(straight), _train_losses(resumed)
  assert [losses_a[s] for s in (4, 5, 6)] == [losses_b[s] for s in (4, 5, 6)]


def test_unknown_gin_configurable_names_file_and_line(tmp_path, tiny_run_in_process):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'runs/quickstart.gin'\nEncodrConfig.d_model = 64\n")
  code, stderr = tiny_run_in_process(tmp_path / "run", f"--gin_file={bad}")
  assert code == 2
  assert "EncodrConfig" in stderr and str(bad) in stderr and "line 2" in stderr


def test_unknown_gin_parameter_is_rejected(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path, "--gin.EncoderConfig.d_modle=64")
  assert code == 2
  assert "d_modle" in stderr


def test_unknown_task_lists_close_matches(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path, "--gin.MIXTURE_OR_TASK_NAME='lmlab.embeded_mlm'")
  assert code == 2
  assert "lmlab.embeded_mlm" in stderr and "lmlab.embedded_mlm" in stderr


def test_sequence_longer_than_max_positions(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path, "--gin.SEQUENCE_LENGTH=128")  # tiny run caps positions at 64
  assert code == 2
  assert "max_positions" in stderr and "128" in stderr


def test_unwritable_model_dir(tmp_path, tiny_run_in_process):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code, stderr = tiny_run_in_process(blocker / "run")
  assert code == 2
  assert "not writable" in stderr and "MODEL_DIR" in stderr


@pytest.mark.slow  # a CLI train + restart; sharding tests restore across shapes by default
def test_checkpoint_of_another_shape_is_refused(tmp_path, tiny_run):
  assert_ok(tiny_run(tmp_path, "--gin.TRAIN_STEPS=1"))
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  proc = tiny_run(tmp_path, "--gin.TRAIN_STEPS=2", "--gin.EncoderConfig.d_ff=96")
  assert proc.returncode == 2
  assert "another shape" in proc.stderr and "MODEL_DIR" in proc.stderr
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


@pytest.mark.slow  # a CLI train + corrupt + restart (about a minute on 2 cores)
def test_corrupt_checkpoint_falls_back_and_is_kept(tmp_path, tiny_run):
  assert_ok(tiny_run(tmp_path, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.checkpoint_every=2"))
  newest = tmp_path / "checkpoints" / "4" / "state"
  damaged = 0
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(b"\x00garbage" * 4)
      damaged += 1
  assert damaged
  proc = tiny_run(tmp_path, "--gin.TRAIN_STEPS=6", "--gin.TrainConfig.checkpoint_every=2")
  assert_ok(proc)
  assert "steps 2 -> 6" in proc.stdout
  kept = list((tmp_path / "corrupt_checkpoints").iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("4-")
  assert any(f.read_bytes().startswith(b"\x00garbage") for f in kept[0].rglob("*") if f.is_file())


@pytest.mark.slow  # the NaN guard also runs in-process by default (fine-tuning test)
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_run):
  proc = tiny_run(tmp_path, "--gin.TRAIN_STEPS=8", "--gin.LEARNING_RATE=1e30",
                  "--gin.WARMUP_STEPS=0", "--gin.OptimizerConfig.clip_grad_norm=None",
                  "--gin.TrainConfig.checkpoint_every=1")
  assert proc.returncode == 2
  assert "at step" in proc.stderr and "last good checkpoint" in proc.stderr
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 8
  bad_step = int(proc.stderr.split("at step ")[1].split(".")[0])
  assert steps[-1] == bad_step - 1


@pytest.mark.slow  # train, eval and infer CLI runs (~34 s)
def test_eval_and_infer_modes_use_the_checkpoint(tmp_path, tiny_run, tiny_run_in_process):
  assert_ok(tiny_run(tmp_path, "--gin.TRAIN_STEPS=2", EVAL_SPLIT))
  assert any("eval/loss" in l for l in (tmp_path / "metrics.jsonl").read_text().splitlines())
  # Evaluation and inference read that checkpoint; run in this process (no second start-up).
  code, stderr = tiny_run_in_process(tmp_path, EVAL_SPLIT, run_mode="eval")
  assert code == 0, stderr[-3000:]
  result = json.loads((tmp_path / "eval_results.json").read_text())
  assert result["step"] == 2 and np.isfinite(result["loss"])
  code, stderr = tiny_run_in_process(tmp_path, run_mode="infer")
  assert code == 0, stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / "inference" / "fill_mask.jsonl").read_text().splitlines()]
  assert rows and "<mask>" not in rows[0]["filled"] and len(rows[0]["candidates"]) == 1


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path, EVAL_SPLIT, run_mode="eval")
  assert code == 2 and "No checkpoint" in stderr


def test_time_budget_ends_training_with_a_checkpoint(tmp_path, tiny_run_in_process):
  # A schedule of 100,000 steps, a budget of half a second: the loop stops
  # after a handful of steps, saves that step and ends normally.
  model_dir = tmp_path / "budget"
  code, stderr = tiny_run_in_process(model_dir, "--gin.TRAIN_STEPS=100000",
                                     "--gin.TrainConfig.time_budget_seconds=0.5",
                                     "--gin.TrainConfig.checkpoint_every=100000")
  assert code == 0, stderr
  steps = sorted(_train_losses(model_dir))
  assert 2 <= steps[-1] < 100000
  step, _ = _final_params(model_dir)
  assert step == steps[-1]
  code, stderr = tiny_run_in_process(tmp_path / "bad", "--gin.TrainConfig.time_budget_seconds=0")
  assert code != 0 and "time_budget_seconds=0" in stderr
