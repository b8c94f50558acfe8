"""Shared test fixtures: gin isolation and a CLI runner for end-to-end tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import gin
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Shared helpers (tests/support/testlib.py) import as ``testlib`` from any test module.
# Only that folder goes on sys.path: the test folders' names (models/, data/) would
# shadow the gin-file folders that gin also resolves as Python packages.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "support"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Eight fake CPU devices for this process and the runs it starts, so sharding
# is exercised everywhere (set before JAX initialises its backends). A test
# that uses plain jax.jit still runs on device 0.
FAKE_DEVICES = 8
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={FAKE_DEVICES}").strip()

# Float32 matmuls at full precision on accelerators too (GPUs default to TF32), so the
# numerical-equality tests hold wherever the suite runs; a no-op on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# Small enough that a CLI run takes seconds on 2 CPU cores.
TINY_RUN_BINDINGS = (
    "--gin.EncoderConfig.d_model=32",
    "--gin.EncoderConfig.num_layers=1",
    "--gin.EncoderConfig.num_heads=2",
    "--gin.EncoderConfig.d_ff=64",
    "--gin.EncoderConfig.max_positions=64",
    "--gin.SEQUENCE_LENGTH=32",
    "--gin.BATCH_SIZE=8",  # divisible by the 8 fake devices
    "--gin.WARMUP_STEPS=2",
    "--gin.TrainConfig.eval_steps=2",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.log_every=1",
    "--gin.TrainConfig.progress_bar=False",
    "--gin.DataConfig.eval_split=''",  # tests that evaluate set it back
)
EVAL_SPLIT = "--gin.DataConfig.eval_split='validation'"


@pytest.fixture(scope="session")
def tiny_run_bindings() -> tuple[str, ...]:
  """The ``--gin.X=Y`` flags that make a quickstart run tiny."""
  return TINY_RUN_BINDINGS


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
  """One persistent XLA compilation cache for all CLI runs of the session."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(autouse=True)
def clean_gin():
  """Each test starts and ends with an empty, unlocked gin config."""
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


def run_cli(*args: str, timeout: int = 600, cache_dir: str = "") -> subprocess.CompletedProcess:
  """Runs ``python -m lmlab.main`` in a fresh process (like a user or a restart would)."""
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2",
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run([sys.executable, "-m", "lmlab.main", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def tiny_run_in_process(capsys):
  """Like ``tiny_run`` but in this process (for failures at start-up): returns (exit code, stderr)."""
  from lmlab import main as cli  # pylint: disable=import-outside-toplevel

  def run(model_dir: pathlib.Path, *extra: str, run_mode: str = "train"):
    argv = ["--gin_file=runs/quickstart.gin", f"--gin.MODEL_DIR='{model_dir}'",
            f"--run_mode={run_mode}", *TINY_RUN_BINDINGS, *extra]
    try:
      cli.main(argv)
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      gin.clear_config(clear_constants=True)
    return code, capsys.readouterr().err

  return run


@pytest.fixture
def tiny_run(compile_cache):
  """Runs a tiny quickstart-based CLI job: ``tiny_run(model_dir, *flags, run_mode=...)``."""

  def run(model_dir: pathlib.Path, *extra: str, run_mode: str = "train") -> subprocess.CompletedProcess:
    return run_cli("--gin_file=runs/quickstart.gin", f"--gin.MODEL_DIR='{model_dir}'",
                   f"--run_mode={run_mode}", *TINY_RUN_BINDINGS, *extra, cache_dir=compile_cache)

  return run


@pytest.fixture
def cli_run(compile_cache):
  """``cli_run(*flags)``: ``python -m lmlab.main *flags`` in a fresh process, sharing the compile cache."""
  return lambda *args: run_cli(*args, cache_dir=compile_cache)
