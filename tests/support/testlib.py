"""Helpers shared by test modules (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np


def assert_ok(proc: subprocess.CompletedProcess) -> None:
  """A CLI run exited 0; otherwise fail showing the tail of its output."""
  assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
  # TensorFlow never probes CUDA from a CLI run (it is hidden from accelerators).
  assert "cuInit" not in proc.stderr, proc.stderr[-3000:]


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def start_cli_process(flags: Sequence[str], *, devices: int, process_id: Optional[int] = None,
                      port: Optional[int] = None,
                      entry: Sequence[str] = ("-m", "lmlab.main")) -> subprocess.Popen:
  """Starts the CLI (or ``entry``) on CPU with ``devices`` fake devices, output piped.

  With ``process_id`` and ``port`` it joins a two-process ``jax.distributed`` job
  coordinated on localhost.
  """
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  extra = []
  if process_id is not None:
    extra = [f"--coordinator_address=localhost:{port}", "--num_processes=2",
             f"--process_id={process_id}"]
  return subprocess.Popen([sys.executable, *entry, *flags, *extra], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def free_port() -> int:
  """A TCP port on localhost that nothing listens on (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def mlm_batch(seed: int, rows: int = 8, length: int = 16, *, staircase_padding: bool = False,
              vocab: int = 256) -> dict[str, np.ndarray]:
  """A random masked-LM batch: about 30% of positions masked (id 3), the first always.

  With ``staircase_padding`` row ``r`` loses its last ``r`` tokens to padding, so
  micro-batches and devices see different loss weights (what the loss
  normalisation must handle).
  """
  rng = np.random.RandomState(seed)
  targets = rng.randint(4, vocab, size=(rows, length)).astype(np.int32)
  weights = (rng.rand(rows, length) < 0.3).astype(np.float32)
  weights[:, 0] = 1.0
  inputs = np.where(weights > 0, 3, targets).astype(np.int32)
  segment_ids = np.ones((rows, length), np.int32)
  if staircase_padding:
    for row in range(rows):
      segment_ids[row, length - row:] = 0
  weights *= segment_ids
  return {"input_ids": inputs * segment_ids, "targets": targets, "loss_weights": weights,
          "segment_ids": segment_ids,
          "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}
