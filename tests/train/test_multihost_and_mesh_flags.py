"""When lmlab joins a multi-process run, and how bad multi-process or mesh flags are refused."""

from __future__ import annotations

import pytest

from lmlab.training import multihost


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, False),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({"SLURM_NTASKS": "garbage"}, False),
])
def test_platform_detection(environ, expected):
  assert multihost.platform_provides_cluster(environ) is expected


def test_single_process_initialises_nothing():
  assert multihost.initialize(environ={}) is False


@pytest.mark.parametrize("kwargs, message", [
    ({"coordinator_address": "localhost:1234"}, "missing: --num_processes, --process_id"),
    ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, "must be HOST:PORT"),
    ({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 2},
     r"--process_id=2 must be in \[0, --num_processes=2\)"),
])
def test_bad_multiprocess_flags_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    multihost.initialize(**kwargs, environ={})


def test_cli_reports_incomplete_flags(tmp_path, tiny_run_in_process):
  code, err = tiny_run_in_process(tmp_path, "--process_id=1")
  assert code == 2
  assert "lmlab: error: Multi-process flags need" in err and "--coordinator_address" in err


@pytest.mark.parametrize("flag, message", [
    ("--gin.MeshConfig.ici_shape=(3, -1, 1)", "ici_shape=(3, -1, 1) does not divide the 8 devices"),
    ("--gin.BATCH_SIZE=12", "batch_size=12 is not divisible by the data-parallel size 8"),
    ("--gin.MeshConfig.rules=(('batch', 'dp'),)", "names mesh axis 'dp'"),
])
def test_cli_refuses_a_bad_mesh_at_start(tmp_path, tiny_run_in_process, flag, message):
  code, err = tiny_run_in_process(tmp_path, flag)
  assert code == 2
  assert message in err
  assert not (tmp_path / "checkpoints").exists()
