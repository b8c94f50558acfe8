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


SHARDING_BENCH = BENCH.parent / "bench_sharding.py"


@pytest.fixture(scope="module")
def sharding_bench():
  spec = importlib.util.spec_from_file_location("bench_sharding", SHARDING_BENCH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_sharding_benchmark_tables(sharding_bench):
  lines = sharding_bench.memory_table(["tiny"])
  ratios = {line.split()[2]: float(line.split()[-1].rstrip("x")) for line in lines[2:]}
  assert ratios["DP"] == 1.0 and 0.1 < ratios["FSDP"] < 0.15 and 0.1 < ratios["FSDP+TP2"] < 0.15
  micro = sharding_bench.EncoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=2,
                                       d_ff=64, max_positions=128, scan_layers=True)
  partitioner = sharding_bench.Partitioner(sharding_bench.MeshConfig(ici_shape=(1, -1, 1)))
  assert sharding_bench.compile_seconds(micro, partitioner, 8) > 0
