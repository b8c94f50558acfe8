"""GLUE and SuperGLUE leaderboard submission files from test-set predictions.

GLUE (gluebenchmark.com) takes one TSV per task, ``<Name>.tsv`` with a header
``index<TAB>prediction`` and one row per test example in index order; the
prediction is the class id (CoLA, SST-2, MRPC, QQP, WNLI), the class name
(MNLI, QNLI, RTE, AX) or the score (STS-B). SuperGLUE (super.gluebenchmark.com)
takes one JSON-lines file per task, ``<Name>.jsonl``, each line
``{"idx": ..., "label": ...}`` with the label written as that task expects
(``lmlab.glue.spec.label_to_submission``); MultiRC nests answers under
questions under paragraphs. Both leaderboards take a zip of these files.

Tasks of a researcher's own files (``lmlab.glue.file_tasks``) get GLUE-style
TSVs in the same folder: ``<name>.tsv`` for the test split and
``<name>.validation.tsv`` for the validation split, with the columns
``index`` (the example's integer id or 0-based position in its file),
``prediction`` (the class name, or the score), ``id`` (when the file's ids are
not integers) and ``label`` (the gold class name or score, when the split has
labels), one row per example in index order.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Mapping, Sequence

from lmlab.glue import file_tasks
from lmlab.glue.spec import FILE, GLUE, TaskSpec, label_to_submission


def _write_glue_tsv(path: str, spec: TaskSpec, idx: Sequence[int], labels: Sequence) -> None:
  rows = sorted(zip((int(i) for i in idx), labels))
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    for index, label in rows:
      value = label_to_submission(spec, label)
      f.write(f"{index}\t{value:.3f}\n" if isinstance(value, float) else f"{index}\t{value}\n")


def _multirc_records(ids: Sequence[Mapping[str, int]], labels: Sequence) -> list[dict]:
  """Paragraph -> question -> answer nesting of per-answer predictions."""
  tree: dict[int, dict[int, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
  for row, label in zip(ids, labels):
    tree[int(row["paragraph"])][int(row["question"])].append((int(row["answer"]), int(label)))
  return [{"idx": p, "passage": {"questions": [
      {"idx": q, "answers": [{"idx": a, "label": lab} for a, lab in sorted(answers)]}
      for q, answers in sorted(questions.items())]}} for p, questions in sorted(tree.items())]


def _file_task_value(spec: TaskSpec, value) -> str:
  """A class id as its name ("" for an unparseable text-to-text output, -1) or a score."""
  if spec.kind == "regression":
    value = float(value)
    return "" if value != value else f"{value:.6g}"  # NaN: a test example without a score
  index = int(value)
  return spec.label_names[index] if 0 <= index < len(spec.label_names) else ""


def _write_file_task_tsv(path: str, spec: TaskSpec, split: str, idx: Sequence,
                         labels: Sequence) -> None:
  task = file_tasks.registered(spec.name)
  examples = {example.idx: example for example in task.examples(split)}
  show_ids = task.id_field is not None and not task.integer_ids(split)
  show_labels = any(_file_task_value(spec, e.label) for e in examples.values())
  header = ["index", "prediction"] + ["id"] * show_ids + ["label"] * show_labels
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for index, label in sorted(zip(idx, labels), key=lambda pair: int(pair[0])):
      example = examples[int(index)]
      row = [str(int(index)), _file_task_value(spec, label)]
      if show_ids:
        row.append(" ".join(example.id.split()))  # no tabs or line breaks inside a cell
      if show_labels:
        row.append(_file_task_value(spec, example.label))
      f.write("\t".join(row) + "\n")


def write_submission(directory: str, spec: TaskSpec, split_index: int, idx: Sequence,
                     labels: Sequence) -> str:
  """Writes the file of ``spec.test_splits[split_index]`` and returns its path.

  Args:
    directory: Where the file goes (created if missing).
    spec: The task.
    split_index: Which test split (MNLI has matched and mismatched).
    idx: Per prediction, the example index (an int), or for MultiRC a mapping
      with ``paragraph``, ``question`` and ``answer`` ids, for ReCoRD the
      query id.
    labels: Per prediction, a class id, a score (STS-B) or an entity string
      (ReCoRD).
  """
  if len(idx) != len(labels):
    raise ValueError(f"{spec.name}: {len(idx)} example ids but {len(labels)} predictions.")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, spec.leaderboard_files[split_index])
  if spec.benchmark == FILE:
    _write_file_task_tsv(path, spec, spec.test_splits[split_index], idx, labels)
    return path
  if spec.benchmark == GLUE:
    _write_glue_tsv(path, spec, idx, labels)
    return path
  if spec.kind == "answer_scoring":
    records = _multirc_records(idx, labels)
  else:
    records = [{"idx": int(i), "label": label_to_submission(spec, label)}
               for i, label in sorted(zip(idx, labels), key=lambda pair: int(pair[0]))]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)
  return path


def read_submission(path: str) -> list:
  """Rows of a written file (for checks): ``[index, prediction, ...]`` lists or JSON records.

  A TSV's header must start with ``index<TAB>prediction`` (file tasks add columns after them).
  """
  with open(path, encoding="utf-8") as f:
    if path.endswith(".tsv"):
      header, *rows = f.read().splitlines()
      if header.split("\t")[:2] != ["index", "prediction"]:
        raise ValueError(f"{path}: header {header!r} does not start with 'index<TAB>prediction'.")
      return [row.split("\t") for row in rows]
    return [json.loads(line) for line in f if line.strip()]
