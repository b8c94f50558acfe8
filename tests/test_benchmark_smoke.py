"""The benchmark's code paths run (tiny sizes); its figures come from running the script."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "benchmarks"


def load_benchmark(name: str):
  """Imports ``experiments/benchmarks/<name>.py`` (not a package) as a module."""
  if str(BENCHMARKS) not in sys.path:  # the scripts import their sibling ``timing``
    sys.path.insert(0, str(BENCHMARKS))
  spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return load_benchmark("bench_encoder_vs_hf")


@pytest.mark.slow  # benchmark smoke; the HF half runs by default
def test_lmlab_half_trains_and_times(bench):
  cfg = bench.BenchConfig("micro", 256, 32, 1, 2, 64, 2, 16)
  step, num_params, holder = bench.lmlab_runner(cfg, 0.2)
  seconds = load_benchmark("timing").time_steps(step, warmup=1, steps=2, repeats=1)
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


@pytest.fixture(scope="module")
def sharding_bench():
  return load_benchmark("bench_sharding")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.slow  # benchmark smoke (~9 s)
def test_sharding_benchmark_tables(sharding_bench):
  lines = sharding_bench.memory_table(["tiny"])
  ratios = {line.split()[2]: float(line.split()[-1].rstrip("x")) for line in lines[2:]}
  assert ratios["DP"] == 1.0 and 0.1 < ratios["FSDP"] < 0.15 and 0.1 < ratios["FSDP+TP2"] < 0.15
  micro = sharding_bench.EncoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=2,
                                       d_ff=64, max_positions=128, scan_layers=True)
  partitioner = sharding_bench.Partitioner(sharding_bench.MeshConfig(ici_shape=(1, -1, 1)))
  assert sharding_bench.compile_seconds(micro, partitioner, 8) > 0


@pytest.fixture(scope="module")
def t5_bench():
  return load_benchmark("bench_t5")


@pytest.mark.slow  # benchmark smoke; long on 2 cores
def test_t5_benchmark_training_runners(t5_bench):
  cfg = t5_bench.TrainBench(vocab_size=256, num_layers=1, d_model=32, num_heads=2, head_dim=16,
                            d_ff=64, batch_size=2, inputs_length=16, targets_length=8)
  batch = t5_bench.span_corruption_batch(cfg)
  assert (batch["encoder_input_tokens"] >= 256 - 64).any()  # sentinels from the top of the vocab
  assert (batch["decoder_target_tokens"][:, -1] == 1).all()
  step, lmlab_params, holder = t5_bench.lmlab_train_runner(cfg)
  step()
  first = holder["loss"]
  for _ in range(5):
    step()
  assert np.isfinite(first) and holder["loss"] < first  # the same batch: the loss must fall
  if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    hf_step, hf_params, hf_holder, _ = t5_bench.hf_train_runner(cfg, threads=1)
    hf_step()
    assert hf_params == lmlab_params and np.isfinite(hf_holder["loss"])


@pytest.mark.slow  # benchmark smoke (~10 s)
def test_t5_benchmark_mrt5_hard_deletion_shrinks_rows(t5_bench):
  cfg = t5_bench.byte_config("tiny", gate_layer=1)
  ids = np.random.RandomState(0).randint(3, 259, size=(2, 64)).astype(np.int32)
  gate = t5_bench.forced_gate(cfg, 2, 64, 0.5)
  assert ((gate != 0).sum(axis=1) == 32).all()
  forward, holder = t5_bench.mrt5_runner(cfg, ids, gate)
  out = forward()
  assert holder["length"] == 32 and abs(holder["kept"] - 0.5) < 1e-6
  assert out.shape[:2] == (2, 32)


@pytest.mark.slow  # benchmark smoke (~8 s)
def test_t5_benchmark_decode_table(t5_bench):
  cfg = t5_bench.TrainBench(vocab_size=128, num_layers=1, d_model=32, num_heads=2, head_dim=16,
                            d_ff=64)
  rates = t5_bench.decode_table(cfg, batch=2, inputs_length=8, decode_length=4, warmup=0,
                                steps=1, repeats=1)
  assert set(rates) == {"without cache", "with KV cache"} and min(rates.values()) > 0


@pytest.mark.slow  # benchmark smoke; long on 2 cores
def test_bigs_benchmark_rows(monkeypatch):
  bigs_bench = load_benchmark("bench_bigs")
  bench = bigs_bench.LayerBench(d_model=16, head_dim=8, state_size=4, batch_size=2)
  rows = bigs_bench.run_table(bench, [8, 16], warmup=1, steps=1, repeats=1, emit=lambda _: None)
  assert [row["length"] for row in rows] == [8, 16]
  assert all(row[mixer] > 0 for row in rows for mixer in ("bigs", "attention"))
  lengths = [128, 512, 1024, 2048, 4096]
  assert abs(bigs_bench.growth_exponent(lengths, [n**2 for n in lengths]) - 2.0) < 1e-6
  assert abs(bigs_bench.growth_exponent(lengths, [3e-4 * n for n in lengths]) - 1.0) < 1e-6
  assert abs(bigs_bench.growth_exponent(lengths, [n**2 for n in lengths[:-1]] + [None]) - 2.0) < 1e-6
  assert bigs_bench.growth_exponent([8, 16], [1.0, None]) is None
  fits = bigs_bench.report_exponents(
      [{"length": n, "bigs": float(n), "attention": float(n)**2} for n in lengths], 512,
      emit=lambda _: None)
  assert abs(fits["long"]["bigs"] - 1.0) < 1e-6 and abs(fits["all"]["attention"] - 2.0) < 1e-6

  def out_of_memory(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0G")

  monkeypatch.setattr(bigs_bench, "grad_runner", out_of_memory)
  assert bigs_bench.time_layer(bench, "attention", 8, 0, 1, 1) == (None, None)


@pytest.fixture(scope="module")
def kernels_bench():
  return load_benchmark("bench_kernels")


@pytest.mark.slow  # benchmark smoke (~13 s)
def test_kernel_benchmark_prints_every_table(kernels_bench, capsys):
  kernels_bench.main(["--lengths", "32", "--memory_lengths", "256,512", "--head_dims", "64",
                      "--batch", "1", "--heads", "1", "--squares", "32",
                      "--ternary_shape", "64,32"])
  out = capsys.readouterr().out
  for title in ("attention time", "attention memory", "int8 (W8A8", "packed ternary"):
    assert title in out
  for backend in kernels_bench.BACKENDS:
    assert f"    32   64 {backend:>8}" in out
  assert "OOM" not in out


def test_flash_memory_grows_linearly_and_xla_quadratically(kernels_bench):
  sizes = kernels_bench.Sizes.for_platform("cpu")
  sizes = kernels_bench.dataclasses.replace(sizes, batch=1, heads=2)
  per_token = {}
  for backend in ("xla", "pallas"):
    small, large = (kernels_bench.temp_bytes(backend, sizes, length, 64, False) / length
                    for length in (512, 2048))
    per_token[backend] = large / small
  assert per_token["pallas"] < 1.2  # flat bytes per token: linear in L
  assert per_token["xla"] > 2.5     # the L x L scores: quadratic


@pytest.mark.slow  # ~1 minute: every table of the accelerator suite at tiny sizes
def test_accelerator_suite_writes_one_report(tmp_path):
  import os
  import subprocess
  script = BENCHMARKS / "accelerator_suite.sh"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run([str(script), "--smoke", str(tmp_path)], capture_output=True, text=True,
                        env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = (tmp_path / "accelerator_suite.md").read_text()
  for title in ("attention time", "int8 (W8A8, Pallas)", "packed ternary", "Training steps"):
    assert title in report, report
  assert "failed" not in report, report
  # Every backend of both models produced a timed row with model TFLOP/s.
  model_rows = [line for line in report.splitlines() if line.startswith(("| BERT", "| T5"))]
  assert len(model_rows) == 5, model_rows
