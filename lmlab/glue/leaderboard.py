"""GLUE and SuperGLUE leaderboard submission files from test-set predictions.

GLUE (gluebenchmark.com) takes one TSV per task, ``<Name>.tsv`` with a header
``index<TAB>prediction`` and one row per test example in index order; the
prediction is the class id (CoLA, SST-2, MRPC, QQP, WNLI), the class name
(MNLI, QNLI, RTE, AX) or the score (STS-B). SuperGLUE (super.gluebenchmark.com)
takes one JSON-lines file per task, ``<Name>.jsonl``, each line
``{"idx": ..., "label": ...}`` with the label written as that task expects
(``lmlab.glue.spec.label_to_submission``); MultiRC nests answers under
questions under paragraphs. Both leaderboards take a zip of these files.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Mapping, Sequence

from lmlab.glue.spec import GLUE, TaskSpec, label_to_submission


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
  """Rows of a written file (for checks): ``[index, prediction]`` pairs or JSON records."""
  with open(path, encoding="utf-8") as f:
    if path.endswith(".tsv"):
      header, *rows = f.read().splitlines()
      if header != "index\tprediction":
        raise ValueError(f"{path}: header {header!r} is not 'index<TAB>prediction'.")
      return [row.split("\t") for row in rows]
    return [json.loads(line) for line in f if line.strip()]
