"""Fine-tuning evaluation: predict a split, resolve candidate rows, score with the official metrics.

Per-row model outputs become one prediction per scored unit (an example, a
MultiRC answer, a COPA example's choice, a ReCoRD query's entity), which the
metrics (``lmlab.glue.metrics``) and leaderboard files take.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from lmlab.glue import metrics as glue_metrics
from lmlab.glue import rows as finetune_data
from lmlab.glue import spec as glue_spec
from lmlab.glue.task_data import TaskData, local_rows

# Per-row predictions of a global batch, from this process's rows of it.
Predict = Callable[[Any, dict], np.ndarray]


def _postprocess(spec: glue_spec.TaskSpec, text: str):
  from lmlab.glue import tasks as glue_tasks  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return glue_tasks.postprocess_prediction(spec, text)


def predict_split(predict: Predict, params, data: TaskData, split: str, batch_size: int,
                  limit: Optional[int]) -> tuple[list, dict[str, list]]:
  """Raw per-row predictions of a split, and the rows' meta features."""
  log = finetune_data.TruncationLog(f"{data.spec.name}/{split}")
  outputs, metas = [], []
  for batch, meta in data.eval_batches(split, batch_size, limit, log):
    raw = predict(params, local_rows(batch))[:len(meta)]
    if data.text_to_text:
      raw = [data.vocabulary.decode([int(t) for t in row if t > 0]) for row in raw]
      raw = [_postprocess(data.spec, text) for text in raw]
    outputs.extend(list(raw))
    metas.append(meta)
  log.report()
  return outputs, finetune_data.stack_meta(metas)


def _multirc_ids(meta: dict[str, list]) -> list[dict]:
  return [dict(paragraph=p, question=q, answer=a) for p, q, a in
          zip(meta["idx_paragraph"], meta["idx_question"], meta["idx_answer"])]


def resolve_predictions(spec: glue_spec.TaskSpec, outputs: list, meta: dict[str, list],
                        text_to_text: bool) -> dict[str, Any]:
  """Per-unit predictions (one per example, question or query) from per-row outputs.

  Returns a dict with ``predictions``, ``labels``, ``ids`` (what leaderboard
  files index by) and, for ReCoRD, ``answers``; for MultiRC ``groups``.
  """
  labels = meta.get("label", [])
  if spec.kind in ("classification", "regression") or (text_to_text and spec.kind != "entity_ranking"):
    if spec.kind == "answer_scoring":
      return dict(predictions=[int(o) for o in outputs], labels=labels, groups=meta["group"],
                  ids=_multirc_ids(meta))
    return dict(predictions=outputs, labels=labels, ids=meta["idx"])
  if spec.kind == "answer_scoring":  # one row per answer; score > 0 means "true"
    return dict(predictions=[int(o > 0) for o in outputs], labels=labels, groups=meta["group"],
                ids=_multirc_ids(meta))
  if spec.kind == "entity_ranking" and text_to_text:
    return dict(predictions=list(outputs), labels=None, ids=meta["idx_query"],
                answers=[a.split("\x1f") if a else [] for a in meta["answers"]])
  best = glue_metrics.argmax_per_group(np.asarray(outputs, np.float32), np.asarray(meta["group"]))
  groups = sorted(best)
  first_row = {}
  for row, group in enumerate(meta["group"]):
    first_row.setdefault(group, row)
  if spec.kind == "multiple_choice":  # COPA: the chosen row's choice vs the correct row's
    correct = {g: meta["choice"][r] for r, g in enumerate(meta["group"]) if meta["label"][r] == 1}
    return dict(predictions=[int(meta["choice"][best[g]]) for g in groups],
                labels=[int(correct.get(g, -1)) for g in groups],
                ids=[meta["idx"][first_row[g]] for g in groups])
  # ReCoRD: the best-scoring candidate entity per query.
  return dict(predictions=[meta["entity"][best[g]] for g in groups], labels=None,
              ids=[meta["idx_query"][first_row[g]] for g in groups],
              answers=[meta["answers"][first_row[g]].split("\x1f") if meta["answers"][first_row[g]]
                       else [] for g in groups])


def score(spec: glue_spec.TaskSpec, resolved: dict, split: str) -> dict[str, float]:
  return glue_metrics.compute(spec, resolved["predictions"], resolved["labels"],
                              groups=resolved.get("groups"), answers=resolved.get("answers"),
                              split=split)


def validate(predict: Predict, params, data: TaskData, batch_size: int) -> dict[str, float]:
  """Official metrics over every validation split, and ``main`` (the task's main metric)."""
  scores: dict[str, float] = {}
  for split in data.spec.validation_splits:
    outputs, meta = predict_split(predict, params, data, split, batch_size,
                                  data.config.max_eval_examples)
    scores.update(score(data.spec, resolve_predictions(data.spec, outputs, meta, data.text_to_text),
                        split))
  scores["main"] = glue_metrics.main_score(data.spec, scores)
  return scores
