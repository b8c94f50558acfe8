"""A restarted run finds its compiled steps on disk; training logs model TFLOP/s and MFU."""

from __future__ import annotations

import json

import jax
import jax.monitoring
import pytest
from testlib import mlm_batch

from lmlab.models import EncoderConfig
from lmlab.training import compilation_cache
from lmlab.training import mfu
from lmlab.wrappers.masked_lm import MaskedLMModel


def _cache_files(model_dir, program: str = ""):
  """Names of the cached programs (those of jitted function ``program`` if given)."""
  folder = model_dir / compilation_cache.CACHE_FOLDER
  names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
  return {n for n in names if n.startswith(f"jit_{program}-")} if program else names


def _train_metrics(model_dir):
  rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "train/loss" in r]


@pytest.mark.slow  # two CLI starts (~30 s)
def test_second_start_reads_compiled_steps_and_training_logs_mfu(tmp_path, tiny_run_in_process):
  # 0.1 s: the train step is cached, not the many millisecond-long eager helpers.
  always = ("--gin.TrainConfig.compilation_cache_min_compile_secs=0.1",
            "--gin.TrainConfig.peak_tflops_per_device=0.5")
  # The first start stops half way (same schedule, so the same compiled step); the second resumes.
  code, err = tiny_run_in_process(tmp_path, "--gin.TRAIN_STEPS=4", *always,
                                  "--gin.TrainConfig.stop_after_step=2")
  assert code == 0, err
  written = _cache_files(tmp_path, "train_step")
  assert written, "the first start wrote no train step to MODEL_DIR/compilation_cache"

  hits = []
  listener = lambda event, **kwargs: hits.append(event) if event.endswith("/cache_hits") else None
  jax.monitoring.register_event_listener(listener)
  try:
    jax.clear_caches()  # as a new process: nothing compiled in memory
    code, err = tiny_run_in_process(tmp_path, "--gin.TRAIN_STEPS=4", *always)
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert code == 0, err
  assert hits, "the resumed start compiled everything again"
  # The resumed start's train step came from disk: no new one was compiled and written.
  # (Tiny eager helper programs may be new: that depends on what this process ran before.)
  assert _cache_files(tmp_path, "train_step") == written

  # Model TFLOP/s per device at every logged step, and MFU against the given peak.
  rows = _train_metrics(tmp_path)
  assert len(rows) == 4 and all(r["train/tflops_per_device"] > 0 for r in rows)
  for r in rows:
    assert r["train/mfu"] == pytest.approx(r["train/tflops_per_device"] / 0.5)


def test_cache_can_be_turned_off_or_moved(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  assert compilation_cache.enable(str(tmp_path / "run"), None) is None
  assert jax.config.jax_compilation_cache_dir == before
  shared = tmp_path / "shared_cache"
  assert compilation_cache.enable(str(tmp_path / "run"), str(shared), 0.0) == str(shared)
  jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()
  assert any(shared.iterdir())
  # The default follows the run directory once lmlab, not the user, chose the last one.
  assert compilation_cache.enable(str(tmp_path / "run2")) == str(tmp_path / "run2" / "compilation_cache")


def test_throughput_arithmetic():
  model = MaskedLMModel(EncoderConfig(vocab_size=512, d_model=64, num_layers=1, num_heads=2,
                                      d_ff=128, max_positions=32))
  batch = mlm_batch(0, rows=4, length=32)
  meter = mfu.Throughput(model, peak_override=2.0)
  meter.observe_batch(batch)
  step_flops = model.train_flops({k: v.shape for k, v in batch.items()})
  assert meter.step_flops == step_flops
  got = meter.scalars(steps=10, seconds=0.5)
  want = step_flops * 10 / 0.5 / jax.local_device_count() / 1e12
  assert got["tflops_per_device"] == pytest.approx(want)
  assert got["mfu"] == pytest.approx(want / 2.0)


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("TPU v4", 275.0),
                                        ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
                                        ("TPU v5p", 459.0), ("TPU v5", 459.0),
                                        ("TPU v6 lite", 918.0), ("cpu", None)])
def test_peak_table(kind, peak):
  assert mfu.peak_tflops(kind) == peak
