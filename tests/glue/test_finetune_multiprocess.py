"""A fine-tune runs as one job over two real processes, like pretraining does.

Two CLI processes (``lmlab.main.main``) joined by ``jax.distributed`` on
localhost, each with 2 CPU devices: the mesh is data=2 across processes times
fsdp=2 inside each. GLUE data is TFDS's mock (random examples from the real
feature specs), set up by a tiny launcher since it only patches the process it
runs in. The reference is the same command in one process on one device:
training losses and validation scores must match it, only process 0 writes
files, and the leaderboard file holds every test example once.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np
import pytest
from testlib import free_port, start_cli_process

LAUNCHER = """
import sys
import tensorflow_datasets as tfds
from lmlab import main
from lmlab.glue import tasks
tasks.check_prepared = lambda name, data_dir: None  # mocked data is never prepared on disk
with tfds.testing.mock_data(num_examples=6):
  main.main(sys.argv[1:])
"""


def _flags(model_dir) -> list[str]:
  return ["--run_mode=finetune", "--gin_file=models/tiny.gin", "--gin_file=finetune/glue.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.PRETRAINED_DIR=None",
          "--gin.EncoderConfig.d_model=32", "--gin.EncoderConfig.num_layers=1",
          "--gin.EncoderConfig.num_heads=2", "--gin.EncoderConfig.d_ff=64",
          "--gin.FinetuneConfig.tasks=['glue_rte']", "--gin.FinetuneConfig.seeds=[0]",
          "--gin.FinetuneConfig.epochs=None", "--gin.FinetuneConfig.per_task={}",
          "--gin.FinetuneConfig.sequence_length=32", "--gin.TrainConfig.train_steps=4",
          "--gin.TrainConfig.eval_every=2", "--gin.TrainConfig.batch_size=8",
          "--gin.TrainConfig.eval_batch_size=8", "--gin.TrainConfig.log_every=1",
          "--gin.TrainConfig.progress_bar=False", "--gin.OptimizerConfig.learning_rate=1e-3"]


def _start(flags: list[str], devices: int, process: tuple[int, int] = None) -> subprocess.Popen:
  process_id, port = process if process is not None else (None, None)
  return start_cli_process(flags, devices=devices, process_id=process_id, port=port,
                           entry=("-c", LAUNCHER))


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  try:
    outputs = [p.communicate(timeout=420)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
  return outputs


def _run_dir(model_dir: pathlib.Path) -> pathlib.Path:
  return model_dir / "glue_rte" / "seed_0"


@pytest.mark.slow  # three fine-tuning processes on 2 cores
def test_two_process_finetune_matches_one_process(tmp_path):
  port = free_port()
  two = _finish([_start(_flags(tmp_path / "two") + ["--gin_file=partitioning/fsdp.gin",
                                                    "--gin.MeshConfig.dcn_shape=(2, 1, 1)"],
                        2, (i, port)) for i in range(2)])
  assert "== lmlab summary ==" in two[0] and "== lmlab summary ==" not in two[1]
  _finish([_start(_flags(tmp_path / "one") + ["--gin.MeshConfig.num_devices=1"], 1)])

  records = {name: [json.loads(line) for line in
                    (_run_dir(tmp_path / name) / "metrics.jsonl").read_text().splitlines()]
             for name in ("one", "two")}
  losses = {name: [r["train/loss"] for r in rs if "train/loss" in r] for name, rs in records.items()}
  assert len(losses["one"]) == 4
  np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-5)
  results = {name: json.loads((_run_dir(tmp_path / name) / "result.json").read_text())
             for name in ("one", "two")}
  assert results["two"]["history"] == results["one"]["history"]
  rows = {name: (tmp_path / name / "leaderboard" / "RTE.tsv").read_text().splitlines()
          for name in ("one", "two")}
  assert rows["two"] == rows["one"] and len(rows["one"]) == 1 + 6  # header + every test example
