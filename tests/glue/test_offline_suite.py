"""The offline downstream suite (``lmlab.glue.offline_tasks``; ``lmlab.data.build_offline_suite``).

The default tests read the shipped files only (about a second): they load as
file tasks, splits share no text and no chapter, labels are balanced as the
README says, and ``FinetuneConfig`` names the suite. Rebuilding from the
Debian packages and a tiny fine-tune are ``slow``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import subprocess

import pytest

from lmlab.data import build_offline_suite as build
from lmlab.glue import file_tasks, offline_tasks
from lmlab.glue import spec as glue_spec
from lmlab.glue.config import FinetuneConfig


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """The suite decompressed once for this module, into a temporary cache (not ``~/.cache``)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("LMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    offline_tasks.data_dir.cache_clear()
    yield offline_tasks.data_dir()
  offline_tasks.data_dir.cache_clear()


@pytest.fixture(autouse=True)
def own_registries(monkeypatch, cache_dir):
  """Specs registered by a test go into a copy of the task table."""
  del cache_dir
  monkeypatch.setattr(glue_spec, "TASKS", dict(glue_spec.TASKS))
  monkeypatch.setattr(file_tasks, "_REGISTRY", {})


@pytest.fixture(scope="module")
def examples(cache_dir):
  """Task name -> split -> its ``FileExample`` list, read once through the tasks' ``FileTask``."""
  del cache_dir
  out = {}
  for name in offline_tasks.TASK_NAMES:
    task = offline_tasks.file_task(name)
    out[name] = {split: task.examples(split) for split in offline_tasks.SPLITS}
  return out


def _chapter(verse_key: str) -> str:
  """``Genesis 1`` of ``Genesis 1:3`` (ids look like ``kjv/Genesis 1:3|Genesis 1:4``)."""
  return verse_key.split("/")[-1].rsplit(":", 1)[0]


def test_shipped_files_load_as_file_tasks_with_the_manifest_sizes(examples):
  manifest = offline_tasks.manifest()["tasks"]
  assert [f"offline_{name}" for name in manifest] == list(offline_tasks.TASK_NAMES)
  for name, splits in examples.items():
    entry = manifest[name.removeprefix("offline_")]
    task = offline_tasks.file_task(name)
    assert list(task.resolved_label_names()) == entry["label_names"]
    assert list(task.text_fields) == entry["text_fields"]
    for split, rows in splits.items():
      assert len(rows) == entry["splits"][split]["examples"] == build.SIZES[split]
      assert all(len(r.texts) == len(task.text_fields) and all(r.texts) for r in rows)
      assert len({r.id for r in rows}) == len(rows), f"{name}/{split}: repeated ids"
  total = sum(path.stat().st_size for path in offline_tasks.ASSET_DIR.rglob("*.tsv.gz"))
  assert total < 1.5e6, f"the shipped data grew to {total} bytes"


def test_no_text_or_chapter_is_in_two_splits(examples):
  for name, splits in examples.items():
    texts = {split: {t for r in rows for t in r.texts} for split, rows in splits.items()}
    chapters = {split: {_chapter(k) for r in rows for k in r.id.split("|")}
                for split, rows in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
      assert not texts[a] & texts[b], f"{name}: {a} and {b} share {sorted(texts[a] & texts[b])[:3]}"
      assert not chapters[a] & chapters[b], f"{name}: {a} and {b} share chapters"


def test_labels_are_balanced_and_baselines_match_the_manifest_and_readme(examples):
  manifest = offline_tasks.manifest()["tasks"]
  readme = (offline_tasks.ASSET_DIR / "README.md").read_text(encoding="utf-8")
  for name, splits in examples.items():
    entry = manifest[name.removeprefix("offline_")]
    for split, rows in splits.items():
      stats = entry["splits"][split]
      if entry["kind"] == "regression":
        scores = [r.label for r in rows]
        assert 0.0 <= min(scores) and max(scores) <= 5.0
        assert stats["score_mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-3)
        continue
      counts = [sum(r.label == i for r in rows) for i in range(len(entry["label_names"]))]
      assert counts == [len(rows) // len(counts)] * len(counts), f"{name}/{split}: {counts}"
      baseline = round(100.0 * max(counts) / len(rows), 2)
      assert baseline == stats["majority_baseline"] == 50.0
      assert dict(zip(entry["label_names"], counts)) == stats["label_counts"]
      row = (f"| {name} | {split} | {len(rows)} | "
             + ", ".join(f"{k} {v}" for k, v in stats["label_counts"].items())
             + f" | {baseline:.2f} | {stats['bytes']} |")
      assert row in readme, f"README.md lacks the row {row!r}"


def test_labels_mean_what_the_docs_say(examples):
  """Paraphrase: same key or 1-3 verses away; order: consecutive; overlap: the documented score."""
  for row in examples["offline_paraphrase"]["validation"]:
    a, b = row.id.split("|")
    distance = abs(int(a.rsplit(":", 1)[1]) - int(b.rsplit(":", 1)[1]))
    assert _chapter(a) == _chapter(b) and (distance == 0) == (row.label == 1)
    assert distance in (0,) + build.NEARBY
  for row in examples["offline_order"]["validation"]:
    a, b = row.id.split("/", 1)[1].split("|")
    step = int(b.rsplit(":", 1)[1]) - int(a.rsplit(":", 1)[1])
    assert step == (1 if row.label == 1 else -1)
  for row in examples["offline_overlap"]["validation"]:
    assert row.label == pytest.approx(build.overlap_score(*row.texts), abs=1e-3)


def test_finetune_config_names_the_suite():
  config = FinetuneConfig(tasks=["offline"])
  assert config.task_names() == list(offline_tasks.TASK_NAMES)
  assert [t.name for t in config.file_tasks] == list(offline_tasks.TASK_NAMES)
  for name in offline_tasks.TASK_NAMES:
    spec = glue_spec.TASKS[name]
    assert spec.benchmark == glue_spec.FILE
    assert spec.leaderboard_files[-1] == f"{name}.validation.tsv"
  assert glue_spec.TASKS["offline_paraphrase"].metrics == ("accuracy", "f1")
  assert glue_spec.TASKS["offline_overlap"].metrics == ("pearson", "spearman")
  # Copies (per-task overrides, resolved starts) do not add the tasks twice.
  assert len(dataclasses.replace(config, seeds=(1, 2)).file_tasks) == len(offline_tasks.TASK_NAMES)
  one = FinetuneConfig(tasks=["offline_order", "glue_rte"])
  assert one.task_names() == ["offline_order", "glue_rte"]
  assert [t.name for t in one.file_tasks] == ["offline_order"]
  # A researcher's own task of that name wins; other tasks add nothing.
  mine = dataclasses.replace(offline_tasks.file_task("offline_order"), metrics=("accuracy",))
  assert FinetuneConfig(tasks=["offline_order"], file_tasks=[mine]).file_tasks == (mine,)
  assert FinetuneConfig(tasks=["glue"]).file_tasks == ()
  with pytest.raises(ValueError, match="No offline task 'offline_nope'"):
    offline_tasks.file_task("offline_nope")


# ---------------------------------------------------------------------------
# Slow: the rebuild (needs the Debian packages) and a tiny fine-tune


def _sources_missing() -> str:
  missing = [c for c in build.SOURCE_COMMANDS if shutil.which(c) is None]
  if missing:
    return (f"{missing} not installed: apt-get install -y bible-kjv sword-text-web diatheke "
            "to rebuild the offline suite")
  modules = subprocess.run(["diatheke", "-b", "system", "-k", "modulelist"], capture_output=True,
                           text=True, check=False).stdout
  if build.WEB_MODULE not in modules:
    return f"the SWORD module {build.WEB_MODULE} is missing: apt-get install -y sword-text-web"
  return ""


@pytest.mark.slow  # ~25 s: two full builds from the Debian packages
@pytest.mark.skipif(bool(_sources_missing()), reason=_sources_missing() or "sources installed")
def test_rebuild_twice_gives_the_shipped_bytes(tmp_path):
  for out in ("a", "b"):
    subprocess.run(["python", "-m", "lmlab.data.build_offline_suite", "--out_dir",
                    str(tmp_path / out)], check=True, capture_output=True)
  built = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
  shipped = sorted(p.relative_to(offline_tasks.ASSET_DIR)
                   for p in offline_tasks.ASSET_DIR.rglob("*") if p.is_file())
  assert built == shipped
  for path in built:
    first = (tmp_path / "a" / path).read_bytes()
    assert first == (tmp_path / "b" / path).read_bytes(), f"{path} differs between two builds"
    assert first == (offline_tasks.ASSET_DIR / path).read_bytes(), (
        f"{path} differs from the shipped file: have the Debian packages changed?")
  with gzip.open(tmp_path / "a" / "order" / "train.tsv.gz", "rt", encoding="utf-8") as f:
    assert f.readline() == "id\tsentence1\tsentence2\tlabel\n"
  assert json.loads((tmp_path / "a" / "manifest.json").read_text())["sizes"] == build.SIZES


@pytest.mark.slow  # ~30 s on 2 cores: builds the seqio tasks and compiles a tiny encoder
def test_tiny_finetune_on_an_offline_task_writes_its_summary(tmp_path):
  # pylint: disable=import-outside-toplevel
  from lmlab.glue import finetune, leaderboard
  from lmlab.models import EncoderConfig
  from lmlab.training.config import TrainConfig
  from lmlab.training.optimizers import OptimizerConfig
  from lmlab.training.partitioning import MeshConfig, Partitioner
  network = EncoderConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_positions=32,
                          dropout_rate=0.0, attention_dropout_rate=0.0)
  config = FinetuneConfig(tasks=["offline_paraphrase"], network=network, sequence_length=32,
                          epochs=None, max_train_examples=64, max_eval_examples=16)
  train = TrainConfig(model_dir=str(tmp_path / "run"), train_steps=4, batch_size=8,
                      eval_batch_size=8, eval_every=2, progress_bar=False, log_every=1)
  summary = finetune.run_finetune(config, train, OptimizerConfig(learning_rate=1e-3),
                                  partitioner=Partitioner(MeshConfig(num_devices=1)))
  result = summary["tasks"]["offline_paraphrase"][0]
  assert set(result["validation"]) == {"accuracy", "f1", "average", "main"}
  assert "offline_paraphrase" in (tmp_path / "run" / "summary.md").read_text()
  predictions = leaderboard.read_submission(
      str(tmp_path / "run" / "leaderboard" / "offline_paraphrase.validation.tsv"))
  assert predictions and all(r[-1] in ("equivalent", "not_equivalent") for r in predictions)
