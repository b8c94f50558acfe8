"""Two real processes joined by ``jax.distributed`` train as one job.

Both run the CLI with ``--coordinator_address/--num_processes/--process_id``
on localhost (CPU collectives), each with 2 devices: the mesh is data=2
across processes (``dcn_shape``) times fsdp=2 inside each. Each process reads
its own data shard. The reference is one process on one device fed, step by
step, the two shards' rows concatenated: losses and final parameters must
match it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from testlib import free_port, start_cli_process

from lmlab import main as cli
from lmlab import runs
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.partitioning import MeshConfig, Partitioner
from lmlab.training.config import DataConfig, TrainConfig
from lmlab.training.trainer import Trainer

STEPS = 3
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _flags(model_dir, tiny_bindings) -> list[str]:
  return ["--gin_file=runs/quickstart.gin", "--gin_file=partitioning/fsdp.gin",
          "--gin.MeshConfig.dcn_shape=(2, 1, 1)", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={STEPS}", *tiny_bindings,
          "--gin.DataConfig.eval_split='validation'"]  # eval steps are collectives too


def _start(process_id: int, port: int, flags: list[str]) -> subprocess.Popen:
  return start_cli_process(flags, devices=2, process_id=process_id, port=port)


def _reference(flags: list[str], reference_dir):
  """Losses and trainer of a 1-device run on the two shards' batches, concatenated."""
  argv = [f for f in flags if not f.startswith(("--gin_file", "--gin.MeshConfig"))]
  _, bindings = cli.split_gin_macro_flags(argv)
  cli.parse_gin(["runs/quickstart.gin"], bindings, [])
  data, config = DataConfig(), dataclasses.replace(TrainConfig(), model_dir=str(reference_dir))
  model, data = runs.prepare(None, data, config.model_dir)
  shards = [iter(runs.train_dataset(data, config.batch_size // 2, shard_id=i, num_shards=2))
            for i in range(2)]
  trainer = Trainer(model, OptimizerConfig(), config, Partitioner(MeshConfig(num_devices=1)))
  state, _ = trainer.initial_state(data.sequence_length)
  losses, first_rows = [], None
  for _ in range(STEPS):
    pieces = [{k: v.numpy() for k, v in next(shard).items()} for shard in shards]
    first_rows = first_rows or [p["targets"] for p in pieces]
    batch = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss_sum"]) / float(metrics["weight_sum"]))
  trainer.checkpointer.close()
  return losses, state, first_rows, model, data, config


@pytest.mark.slow  # two real processes: long on 2 cores; flags and mesh checks run by default
def test_two_processes_train_together_like_one(tmp_path, tiny_run_bindings):
  model_dir = tmp_path / "two_processes"
  flags = _flags(model_dir, tiny_run_bindings)
  port = free_port()
  procs = [_start(i, port, flags) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
  assert "== lmlab summary ==" in outputs[0] and "== lmlab summary ==" not in outputs[1]

  losses, ref_state, first_rows, model, data, config = _reference(flags, tmp_path / "ref")
  assert not np.array_equal(first_rows[0], first_rows[1]), "the two shards gave the same rows"

  records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [0, STEPS]
  records = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # process 0 alone wrote
  np.testing.assert_allclose([r["train/loss"] for r in records], losses, rtol=1e-5)
  data_files = os.listdir(model_dir / "checkpoints" / str(STEPS) / "data")
  assert {f.split(".")[0] for f in data_files if f.startswith("process_")} == {"process_0", "process_1"}

  # The 2-process checkpoint (4 devices) restored here on one device.
  gin_free = dataclasses.replace(config, model_dir=str(model_dir))
  loader = Trainer(model, OptimizerConfig(), gin_free, Partitioner(MeshConfig(num_devices=1)))
  restored, resumed = loader.initial_state(data.sequence_length)
  loader.checkpointer.close()
  assert resumed and int(restored.step) == STEPS
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored.params),
                               jax.tree_util.tree_leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
