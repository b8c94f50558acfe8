"""End-to-end CLI runs of the T5 family: quickstarts train, infer writes JSONL, bad input fails clearly."""

from __future__ import annotations

import json
import pathlib

import gin
import pytest

from testlib import assert_ok

from lmlab import main as cli

from lmlab.inference import read_input_lines

# Small enough for 2 CPU cores; the batch divides the 8 fake devices.
TINY_T5 = (
    "--gin.T5Config.d_model=64",
    "--gin.T5Config.d_ff=128",
    "--gin.T5Config.num_heads=2",
    "--gin.BATCH_SIZE=8",
    "--gin.OptimizerConfig.warmup_steps=10",
    "--gin.TrainConfig.eval_steps=3",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.log_every=5",
    "--gin.TrainConfig.checkpoint_every=1000",
    "--gin.TrainConfig.progress_bar=False",
)
T5_LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"
BYT5_LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 32}"


def _evals(model_dir: pathlib.Path) -> list[float]:
  lines = (model_dir / "metrics.jsonl").read_text().splitlines()
  return [r["eval/loss"] for r in map(json.loads, lines) if "eval/loss" in r]


@pytest.fixture
def run(cli_run):
  """``run(gin_file, model_dir, *flags, run_mode=...)`` with the tiny T5 settings."""
  def go(gin_file: str, model_dir: pathlib.Path, *extra: str, run_mode: str = "train"):
    return cli_run(f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--run_mode={run_mode}", *TINY_T5, *extra)
  return go


@pytest.mark.parametrize("gin_file,lengths,steps", [
    ("runs/t5_quickstart.gin", T5_LENGTHS, 30),
    # ByT5 differs from T5 only in vocabulary and shapes (covered by model tests): slow.
    pytest.param("runs/byt5_quickstart.gin", BYT5_LENGTHS, 30, marks=pytest.mark.slow),
], ids=["t5", "byt5"])
def test_quickstart_validation_loss_falls_and_infer_writes_predictions(
    gin_file, lengths, steps, tmp_path, run):
  assert_ok(run(gin_file, tmp_path, lengths, f"--gin.TRAIN_STEPS={steps}"))
  evals = _evals(tmp_path)
  assert len(evals) == 2 and evals[-1] < evals[0] - 1.0, evals
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("In the beginning God created the heaven and the earth.\n\nAnd God said.\n",
                    encoding="utf-8")
  # Inference reads that checkpoint; in this process, to skip a second start-up.
  try:
    cli.main([f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{tmp_path}'", "--run_mode=infer",
              *TINY_T5, lengths, f"--gin.InferConfig.input_file='{inputs}'",
              "--gin.InferConfig.max_decode_length=8"])
  finally:
    gin.clear_config(clear_constants=True)
  rows = [json.loads(l) for l in (tmp_path / "inference" / "predictions.jsonl").read_text().splitlines()]
  assert [r["input"] for r in rows] == ["In the beginning God created the heaven and the earth.",
                                        "And God said."]
  assert all(isinstance(r["prediction"], str) and r["step"] == steps for r in rows)


@pytest.mark.slow  # two CLI runs; beam search itself is unit-tested in tests/test_decoding.py
def test_infer_from_the_task_with_beam_search(tmp_path, run):
  gin_file = "runs/byt5_quickstart.gin"
  assert_ok(run(gin_file, tmp_path, BYT5_LENGTHS, "--gin.TRAIN_STEPS=2"))
  assert_ok(run(gin_file, tmp_path, BYT5_LENGTHS, "--gin.InferConfig.num_examples=3",
                 "--gin.InferConfig.max_decode_length=4", "--gin.InferConfig.method='beam'",
                 "--gin.InferConfig.beam_size=2", run_mode="infer"))
  rows = [json.loads(l) for l in (tmp_path / "inference" / "predictions.jsonl").read_text().splitlines()]
  assert len(rows) == 3 and all("target" in r for r in rows)


def test_input_files_must_be_utf8_and_non_empty(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"fine line\nbroken \xff\xfe bytes\n")
  with pytest.raises(ValueError, match="bad.txt:2 is not valid UTF-8"):
    read_input_lines(str(bad))
  blank = tmp_path / "blank.txt"
  blank.write_text("\n  \n", encoding="utf-8")
  with pytest.raises(ValueError, match="no non-blank line"):
    read_input_lines(str(blank))
  good = tmp_path / "good.txt"
  good.write_text("ünïcode ok\n\nsecond\n", encoding="utf-8")
  assert read_input_lines(str(good)) == ["ünïcode ok", "second"]


def test_model_and_task_families_must_match(tmp_path, run):
  proc = run("runs/t5_quickstart.gin", tmp_path, T5_LENGTHS,
             "--gin.MIXTURE_OR_TASK_NAME='lmlab.embedded_mlm'")
  assert proc.returncode != 0 and "yields masked_lm examples but run.model is a EncoderDecoderModel" in proc.stderr
