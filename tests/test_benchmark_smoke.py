"""The benchmark's code paths run (tiny sizes); its figures come from running the script."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "benchmarks" / "bench_encoder_vs_hf.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_encoder_vs_hf", BENCH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_lmlab_half_trains_and_times(bench):
  cfg = bench.BenchConfig("micro", 256, 32, 1, 2, 64, 2, 16)
  step, num_params, holder = bench.lmlab_runner(cfg, 0.2)
  seconds = bench.time_steps(step, warmup=1, steps=2, repeats=1)
  assert seconds > 0 and num_params > 256 * 32
  assert int(holder["state"].step) == 3
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(holder["state"].params))


def test_hf_half_has_the_same_parameter_count(bench):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  cfg = bench.BenchConfig("micro", 256, 32, 1, 2, 64, 2, 16)
  _, lmlab_params, _ = bench.lmlab_runner(cfg, None)
  step, hf_params = bench.hf_runner(cfg)
  step()
  assert lmlab_params == hf_params
