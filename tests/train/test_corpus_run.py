"""Pretraining on your own files from the command line: gin/runs/corpus_pretrain.gin, no Python registration."""

from __future__ import annotations

import json
import math
import pathlib

import gin
import pytest

from lmlab import main as cli
from lmlab.training.config import DataConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS_GIN = "--gin_file=runs/corpus_pretrain.gin"
EVAL_SPLIT = "--gin.DataConfig.eval_split='validation'"
WORDS = "the cat sat on the mat and the dog lay by the door".split()


def _corpus_file(tmp_path: pathlib.Path) -> pathlib.Path:
  """A few hundred short, repetitive sentences: a tiny model's loss falls on them within steps."""
  path = tmp_path / "corpus" / "books.txt"
  path.parent.mkdir()
  path.write_text("\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(300)) + "\n")
  return path


@pytest.mark.slow  # a CLI run (~10 s); test_continued_pretraining trains on a user file by default
def test_pretrains_on_a_user_file_without_python(tmp_path, tiny_run_in_process):
  path = _corpus_file(tmp_path)
  model_dir = tmp_path / "run"
  code, stderr = tiny_run_in_process(model_dir, CORPUS_GIN, f"--gin.CORPUS_FILES=['{path.parent}/*.txt']",
                                     "--gin.TRAIN_STEPS=6", "--gin.WARMUP_STEPS=1", "--gin.LEARNING_RATE=1e-2",
                                     "--gin.TrainConfig.compilation_cache_dir=None")
  assert code == 0, stderr[-3000:]
  losses = [r["train/loss"] for r in map(json.loads, (model_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r]
  assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
  assert losses[-1] < losses[0] - 0.5, losses  # ~9.05 -> ~7.7
  config = (model_dir / "config.gin").read_text()
  assert "CorpusTask.train_files = %CORPUS_FILES" in config and str(path.parent) in config


def test_a_pattern_that_matches_nothing_fails_before_training(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path / "run", CORPUS_GIN, "--gin.CORPUS_FILES=['missing/*.txt']")
  assert code == 2
  assert "missing/*.txt" in stderr and "matches no file" in stderr
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_documented_span_corruption_variant_reads_the_corpus(tmp_path):
  """The gin lines in corpus_pretrain.gin's comment make an encoder–decoder run on the files."""
  text = (REPO_ROOT / "gin" / "runs" / "corpus_pretrain.gin").read_text()
  comment = text[text.index("# Span corruption"):].splitlines()[1:]
  lines = [line[len("#   "):].split("  #")[0] for line in comment if line.startswith("#   ")]
  assert lines[0] == "include 'runs/t5_quickstart.gin'"
  variant = tmp_path / "variant.gin"
  variant.write_text("\n".join(lines) + "\n")
  cli.parse_gin([str(variant)], [f"MODEL_DIR = '{tmp_path}'"], [])
  try:
    data = DataConfig()
    model = gin.query_parameter("run.model").scoped_configurable_fn()
  finally:
    gin.clear_config(clear_constants=True)
  assert data.mixture_or_task_name == data.corpus.name == "lmlab.corpus"
  assert data.corpus.objective == "span_corruption" and data.corpus.encoder_decoder
  assert data.corpus.train_files == ("/data/*.txt",) and set(data.feature_lengths) == {"inputs", "targets"}
  assert type(model).__name__ == "EncoderDecoderModel"


@pytest.mark.slow  # three CLI runs; the default suite trains once (above)
def test_eval_and_infer_modes_read_the_corpus_too(tmp_path, tiny_run_in_process):
  path = _corpus_file(tmp_path)
  held_out = tmp_path / "held_out.txt"
  held_out.write_text("the dog sat on the mat and the cat lay by the door\n" * 40)  # 2 eval batches of 8 rows
  model_dir = tmp_path / "run"
  flags = (CORPUS_GIN, f"--gin.CORPUS_FILES=['{path}']", f"--gin.CORPUS_VALIDATION_FILES=['{held_out}']",
           "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.compilation_cache_dir=None")
  for mode in ("train", "eval", "infer"):  # each in a fresh gin config: the corpus is registered every time
    code, stderr = tiny_run_in_process(model_dir, *flags, EVAL_SPLIT, run_mode=mode)
    assert code == 0, f"{mode}: {stderr[-3000:]}"
  result = json.loads((model_dir / "eval_results.json").read_text())
  assert result["task"] == "lmlab.corpus" and result["split"] == "validation" and math.isfinite(result["loss"])
  assert (model_dir / "inference" / "fill_mask.jsonl").exists()
