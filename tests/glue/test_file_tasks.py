"""Fine-tuning on a researcher's own CSV/TSV/JSONL files (``lmlab.glue.file_tasks``).

Parsing into examples, the seqio tasks the heads read, the errors that stop
a run before training (each naming the file, the row and the column), the
prediction files, and one tiny end-to-end fine-tune from a random init.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np
import pytest
import seqio

from lmlab.glue import file_tasks, finetune, leaderboard
from lmlab.glue import spec as glue_spec
from lmlab.glue import tasks as glue_tasks
from lmlab.glue.config import FinetuneConfig
from lmlab.glue.file_tasks import FileTask, FileTaskError
from lmlab.glue.metrics import METRICS
from lmlab.models import EncoderConfig
from lmlab.training.config import TrainConfig
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.partitioning import MeshConfig, Partitioner

EOS = 1


@pytest.fixture(autouse=True)
def own_registries(monkeypatch):
  """Each test registers into copies of the task tables, and its seqio tasks are removed after."""
  monkeypatch.setattr(glue_spec, "TASKS", dict(glue_spec.TASKS))
  monkeypatch.setattr(glue_tasks, "TASK_NAMES", dict(glue_tasks.TASK_NAMES))
  monkeypatch.setattr(file_tasks, "_REGISTRY", {})
  before = set(seqio.TaskRegistry.names())
  yield
  for name in set(seqio.TaskRegistry.names()) - before:
    seqio.TaskRegistry.remove(name)


def _write(directory, name: str, text: str) -> str:
  path = os.path.join(str(directory), name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def _rows(task: FileTask, split: str, fmt: str = "encoder") -> list[dict]:
  """The examples of a registered task's seqio task, tokenized, in file order."""
  glue_tasks.register_file_tasks([task])
  seqio_task = seqio.get_mixture_or_task(glue_tasks.TASK_NAMES[task.name][fmt])
  return list(seqio_task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator())


# ---------------------------------------------------------------------------
# Parsing


def test_csv_single_sentences_with_label_names_or_indices(tmp_path):
  train = _write(tmp_path, "train.csv", 'sentence,label\ngood film,pos\n"bad, really bad",neg\n'
                 "fine,1\n\n")
  test = _write(tmp_path, "test.csv", "sentence\nunseen one\nunseen two\n")
  task = FileTask("reviews", train, train, test=test, label_names=["neg", "pos"])
  assert [(e.texts, e.label, e.idx) for e in task.examples("train")] == [
      (("good film",), 1, 0), (("bad, really bad",), 0, 1), (("fine",), 1, 2)]
  assert [e.label for e in task.examples("test")] == [-1, -1]
  spec = task.spec()
  assert (spec.metrics, spec.main_metric, spec.num_classes) == (("accuracy", "f1"), "average", 2)
  rows = _rows(task, "train")
  assert [int(r["label"]) for r in rows] == [1, 0, 1]
  assert [int(r["idx"]) for r in rows] == [0, 1, 2]
  assert rows[1]["inputs_a_pretokenized"] == b"bad, really bad"
  for row in rows:  # tokenized sentence A ending in EOS; single-sentence B is just EOS
    assert len(row["inputs_a"]) > 1 and row["inputs_a"][-1] == EOS
    assert row["inputs_b"].tolist() == [EOS]
  t2t = _rows(task, "train", "t2t")
  assert t2t[0]["inputs_pretokenized"] == b"reviews sentence: good film"
  assert t2t[0]["targets_pretokenized"] == b"pos"


def test_tsv_sentence_pairs_with_integer_ids_and_inferred_labels(tmp_path, caplog):
  text = ('id\tpremise\thypothesis\tlabel\n10\tHe said "hi".\tHe spoke.\tentailment\n'
          "11\tIt rained.\tIt was dry.\tcontradiction\n12\tA cat.\tAn animal.\tentailment\n")
  train = _write(tmp_path, "train.tsv", text)
  task = FileTask("nli", train, train, text_fields=["premise", "hypothesis"], id_field="id")
  with caplog.at_level(logging.INFO, logger="lmlab.glue.file_tasks"):
    assert task.resolved_label_names() == ("contradiction", "entailment")
  assert "inferred" in caplog.text and "contradiction" in caplog.text
  examples = task.examples("train")
  assert examples[0].texts == ('He said "hi".', "He spoke.")  # TSV quotes are text
  assert [(e.idx, e.label) for e in examples] == [(10, 1), (11, 0), (12, 1)]
  rows = _rows(task, "validation")
  assert [int(r["idx"]) for r in rows] == [10, 11, 12]
  assert [int(r["group"]) for r in rows] == [10, 11, 12]
  assert rows[1]["inputs_b_pretokenized"] == b"It was dry."
  assert len(rows[1]["inputs_b"]) > 1 and rows[1]["inputs_b"][-1] == EOS


def test_jsonl_regression_with_an_unlabelled_test_file(tmp_path):
  train = _write(tmp_path, "train.jsonl",
                 '{"text": "a", "score": 1.5}\n\n{"text": "b", "score": "4"}\n{"text": "c", '
                 '"score": 0}\n')
  test = _write(tmp_path, "test.jsonl", '{"text": "d"}\n')
  task = FileTask("quality", train, train, test=test, text_fields=["text"], label_field="score",
                  kind="regression")
  assert [e.label for e in task.examples("train")] == [1.5, 4.0, 0.0]
  assert math.isnan(task.examples("test")[0].label)
  spec = task.spec()
  assert (spec.kind, spec.label_names, spec.metrics, spec.main_metric, spec.num_classes) == (
      "regression", (), ("pearson", "spearman"), "average", 1)
  assert [float(r["label"]) for r in _rows(task, "train")] == [1.5, 4.0, 0.0]
  t2t = _rows(task, "train", "t2t")
  assert [r["targets_pretokenized"] for r in t2t] == [b"1.6", b"4.0", b"0.0"]  # as STS-B
  assert _rows(task, "test", "t2t")[0]["targets_pretokenized"] == b""


def test_inferred_integer_labels_sort_numerically_and_metrics_follow_the_class_count(tmp_path):
  train = _write(tmp_path, "train.csv", "sentence,label\na,10\nb,2\nc,1\n")
  task = FileTask("levels", train, train)
  assert task.resolved_label_names() == ("1", "2", "10")
  assert task.examples("train")[0].label == 2  # the name "10" wins over the index 10
  assert task.spec().metrics == ("accuracy",) and task.spec().main_metric == "accuracy"
  ranked = FileTask("levels", train, train, main_metric="macro_f1")
  assert ranked.spec().metrics == ("accuracy", "macro_f1")
  with pytest.raises(FileTaskError, match="'f1' is the binary F1.*3 classes.*macro_f1"):
    FileTask("levels", train, train, metrics=["f1"]).spec()


def test_configuration_errors_name_the_problem():
  paths = dict(train="t.csv", validation="v.csv")
  with pytest.raises(FileTaskError, match=r"unknown classification metric\(s\) \['acc'\]; the "
                     r"valid ones are \['accuracy', 'f1', 'macro_f1', 'matthews_corrcoef'\]"):
    FileTask("x", metrics=["acc"], **paths)
  with pytest.raises(FileTaskError, match="regression task has float labels, not label_names"):
    FileTask("x", kind="regression", label_names=["a", "b"], **paths)
  with pytest.raises(FileTaskError, match="unknown regression metric.*'accuracy'.*pearson"):
    FileTask("x", kind="regression", metrics=["accuracy"], **paths)
  with pytest.raises(FileTaskError, match="main_metric 'f1' is not one of the metrics"):
    FileTask("x", metrics=["accuracy"], main_metric="f1", **paths)
  with pytest.raises(FileTaskError, match="kind 'ranking' is not one of"):
    FileTask("x", kind="ranking", **paths)
  with pytest.raises(FileTaskError, match="built-in GLUE/SuperGLUE name"):
    FileTask("glue_rte", **paths)
  with pytest.raises(FileTaskError, match="one column .* or two different ones"):
    FileTask("x", text_fields=["a", "b", "c"], **paths)
  with pytest.raises(FileTaskError, match="at least two classes"):
    FileTask("x", label_names=["only"], **paths)
  with pytest.raises(FileTaskError, match="must start with a letter"):
    FileTask("my-task", **paths)
  for metric in file_tasks.KIND_METRICS["classification"] + file_tasks.KIND_METRICS["regression"]:
    assert metric in METRICS


# ---------------------------------------------------------------------------
# Bad files: clear errors


def _examples(task: FileTask, split: str = "train"):
  return task.examples(split)


def test_file_errors_name_the_file_row_and_column(tmp_path):
  names = dict(label_names=["neg", "pos"])
  good = _write(tmp_path, "good.csv", "sentence,label\na,pos\n")
  missing = str(tmp_path / "nope.csv")
  with pytest.raises(FileNotFoundError, match=f"'t': the train file {missing} does not exist"):
    _examples(FileTask("t", missing, good, **names))
  text = _write(tmp_path, "text.csv", "text,label\na,pos\n")
  with pytest.raises(FileTaskError, match=r"text.csv has no column 'sentence' \(a text field\); "
                     r"the columns are \['text', 'label'\]"):
    _examples(FileTask("t", text, good, **names))
  nolabel = _write(tmp_path, "nolabel.csv", "sentence,y\na,pos\n")
  with pytest.raises(FileTaskError, match=r"nolabel.csv has no column 'label' \(the label field\)"):
    _examples(FileTask("t", nolabel, good, **names))
  bad_label = _write(tmp_path, "train.csv", "sentence,label\na,pos\nb,neg\nc,maybe\n")
  with pytest.raises(FileTaskError, match=r"train.csv row 3: label 'maybe' is not one of "
                     r"\['neg', 'pos'\]"):
    _examples(FileTask("t", bad_label, good, **names))
  with pytest.raises(FileTaskError, match=r"train.csv row 3: label 'maybe' is not one of"):
    _examples(FileTask("t", good, bad_label, **names), "validation")  # inferred from train
  empty_label = _write(tmp_path, "empty_label.csv", "sentence,label\na,pos\nb,\n")
  with pytest.raises(FileTaskError, match="empty_label.csv row 2: the label .* is empty"):
    _examples(FileTask("t", empty_label, good, **names))
  short = _write(tmp_path, "short.csv", "sentence,label\na,pos\nb\n")
  with pytest.raises(ValueError, match=r"short.csv row 2: 1 fields, but the header has 2"):
    _examples(FileTask("t", short, good, **names))
  score = _write(tmp_path, "score.csv", "sentence,label\na,1.5\nb,high\n")
  with pytest.raises(FileTaskError, match=r"score.csv row 2: label 'high' is not a number"):
    _examples(FileTask("t", score, good, kind="regression"))
  empty = _write(tmp_path, "empty.csv", "")
  with pytest.raises(ValueError, match="empty.csv is empty"):
    _examples(FileTask("t", empty, good, **names))
  header_only = _write(tmp_path, "header.tsv", "sentence\tlabel\n")
  with pytest.raises(ValueError, match="header.tsv has a header but no data rows"):
    _examples(FileTask("t", header_only, good, **names))
  repeated = _write(tmp_path, "ids.csv", "id,sentence,label\n4,a,pos\n5,b,neg\n4,c,pos\n")
  with pytest.raises(FileTaskError, match=r"ids.csv row 3: id '4' was already used at .*ids.csv "
                     "row 1"):
    _examples(FileTask("t", repeated, good, id_field="id", **names))
  with pytest.raises(ValueError, match="Cannot tell the format of .*data.txt"):
    _examples(FileTask("t", _write(tmp_path, "data.txt", "x"), good, **names))


def test_jsonl_errors_name_the_line(tmp_path):
  good = _write(tmp_path, "good.jsonl", '{"sentence": "a", "label": "pos"}\n')
  broken = _write(tmp_path, "broken.jsonl", '{"sentence": "a", "label": "pos"}\n\n'
                  '{"sentence": "b", "label": pos}\n')
  with pytest.raises(ValueError, match=r"broken.jsonl line 3: not valid JSON"):
    _examples(FileTask("t", broken, good))
  field = _write(tmp_path, "field.jsonl", '{"sentence": "a", "label": "pos"}\n{"text": "b", '
                 '"label": "neg"}\n')
  with pytest.raises(FileTaskError, match=r"field.jsonl line 2: no field 'sentence' \(a text "
                     r"field\); this record's fields are \['text', 'label'\]"):
    _examples(FileTask("t", field, good, label_names=["neg", "pos"]))
  array = _write(tmp_path, "array.jsonl", '["a", "pos"]\n')
  with pytest.raises(ValueError, match="array.jsonl line 1: expected a JSON object"):
    _examples(FileTask("t", array, good))
  with pytest.raises(ValueError, match="empty.jsonl is empty"):
    _examples(FileTask("t", _write(tmp_path, "empty.jsonl", "\n"), good))


def _tiny_configs(tmp_path, task: FileTask, **finetune):
  network = EncoderConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_positions=16,
                          dropout_rate=0.0, attention_dropout_rate=0.0)
  config = FinetuneConfig(tasks=[task.name], file_tasks=[task], network=network,
                          init_checkpoint_dir=None, sequence_length=16, epochs=None, **finetune)
  train = TrainConfig(model_dir=str(tmp_path / "run"), train_steps=4, batch_size=8,
                      eval_batch_size=8, eval_every=2, progress_bar=False, log_every=1)
  return config, train, OptimizerConfig(learning_rate=1e-3)


def test_bad_files_stop_the_run_before_training(tmp_path):
  train = _write(tmp_path, "train.csv", "sentence,label\na,pos\nb,neg\n")
  dev = _write(tmp_path, "dev.csv", "sentence,label\na,pos\nb,maybe\n")
  task = FileTask("reviews", train, dev)
  with pytest.raises(FileTaskError, match=r"dev.csv row 2: label 'maybe' is not one of"):
    finetune.run_finetune(*_tiny_configs(tmp_path, task))
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match="defines 'reviews' twice"):
    FinetuneConfig(tasks=["reviews"], file_tasks=[task, task]).task_names()


def test_prediction_files_carry_string_ids_and_gold_labels(tmp_path):
  data = _write(tmp_path, "data.csv", "key,sentence,label\nb-2,x,neg\na-1,y,pos\n")
  task = FileTask("keyed", data, data, test=data, id_field="key", label_names=["neg", "pos"])
  glue_tasks.register_file_tasks([task])
  spec = glue_spec.TASKS["keyed"]
  assert spec.test_splits == ("test", "validation")
  path = leaderboard.write_submission(str(tmp_path / "out"), spec, 1, [1, 0], [1, 1])
  assert os.path.basename(path) == "keyed.validation.tsv"
  with open(path, encoding="utf-8") as f:
    assert f.read() == "index\tprediction\tid\tlabel\n0\tpos\tb-2\tneg\n1\tpos\ta-1\tpos\n"
  assert leaderboard.read_submission(path)[0] == ["0", "pos", "b-2", "neg"]


# ---------------------------------------------------------------------------
# End to end


def test_finetune_a_csv_task_like_a_glue_task(tmp_path):
  """Two seeds of a tiny random-init encoder; summary, best seed and prediction files."""
  words = ["good", "bad", "fine", "awful", "great", "poor"]
  rng = np.random.default_rng(0)

  def lines(n):
    picks = rng.integers(0, len(words), size=n)
    return "".join(f"{words[i]} film {k},{'pos' if i % 2 == 0 else 'neg'}\n"
                   for k, i in enumerate(picks))
  train = _write(tmp_path, "train.csv", "sentence,label\n" + lines(16))
  dev = _write(tmp_path, "dev.csv", "sentence,label\n" + lines(10))
  test = _write(tmp_path, "test.csv", "sentence\n" + "".join(f"{w} one\n" for w in words[:5]))
  task = FileTask("sentiment", train, dev, test=test)
  one_device = Partitioner(MeshConfig(num_devices=1))  # compiles faster than 8 fake devices
  summary = finetune.run_finetune(*_tiny_configs(tmp_path, task, seeds=(0, 1)),
                                  partitioner=one_device)

  run = tmp_path / "run"
  results = summary["tasks"]["sentiment"]
  assert [r["seed"] for r in results] == [0, 1]
  assert set(results[0]["validation"]) == {"accuracy", "f1", "average", "main"}
  assert "| sentiment | accuracy | 2 |" in (run / "summary.md").read_text()
  best = max(results, key=lambda r: r["validation"]["main"])

  predictions = leaderboard.read_submission(str(run / "leaderboard" / "sentiment.tsv"))
  assert [int(r[0]) for r in predictions] == list(range(5))
  assert {r[1] for r in predictions} <= {"neg", "pos"}

  validation = leaderboard.read_submission(str(run / "leaderboard" / "sentiment.validation.tsv"))
  assert len(validation) == 10
  recomputed = 100.0 * np.mean([r[1] == r[2] for r in validation])
  assert recomputed == pytest.approx(best["validation"]["accuracy"])
  gold = [line.rsplit(",", 1)[1].strip() for line in open(dev, encoding="utf-8").readlines()[1:]]
  assert [r[2] for r in validation] == gold
  result = json.loads((run / "sentiment" / f"seed_{best['seed']}" / "result.json").read_text())
  assert result["best_step"] == best["best_step"]


@pytest.mark.slow  # ~30 s each on 2 cores; the default suite runs the encoder classifier above
@pytest.mark.parametrize("head", ["classifier", "text_to_text"])
def test_finetune_a_jsonl_regression_task(tmp_path, head):
  """Sentence-pair regression from JSON lines: the encoder's score head, and T5 text to text."""
  def lines(n, labelled=True):
    return "".join(json.dumps({"a": f"first {k}", "b": f"second {k % 3}",
                               **({"score": k % 5 + 0.5} if labelled else {})}) + "\n"
                   for k in range(n))
  train = _write(tmp_path, "train.jsonl", lines(12))
  dev = _write(tmp_path, "dev.jsonl", lines(6))
  test = _write(tmp_path, "test.jsonl", lines(3, labelled=False))
  task = FileTask("similarity", train, dev, test=test, text_fields=["a", "b"],
                  label_field="score", kind="regression")
  config, train_config, optimizer = _tiny_configs(tmp_path, task)
  if head == "text_to_text":
    from lmlab.models.config import T5Config  # pylint: disable=import-outside-toplevel
    config = dataclasses.replace(config, network=T5Config(
        d_model=16, num_heads=2, head_dim=8, d_ff=32, num_encoder_layers=1,
        num_decoder_layers=1), sequence_length=24, target_length=4)
  summary = finetune.run_finetune(config, train_config, optimizer,
                                  partitioner=Partitioner(MeshConfig(num_devices=1)))
  result = summary["tasks"]["similarity"][0]
  assert result["head"] == head
  assert set(result["validation"]) == {"pearson", "spearman", "average", "main"}
  run = tmp_path / "run" / "leaderboard"
  predictions = leaderboard.read_submission(str(run / "similarity.tsv"))
  assert [int(r[0]) for r in predictions] == [0, 1, 2] and all(len(r) == 2 for r in predictions)
  assert all(np.isfinite(float(r[1])) for r in predictions)
  validation = leaderboard.read_submission(str(run / "similarity.validation.tsv"))
  assert [float(r[2]) for r in validation] == [k % 5 + 0.5 for k in range(6)]
