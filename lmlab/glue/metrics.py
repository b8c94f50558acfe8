"""Official GLUE and SuperGLUE metrics, candidate aggregation and multi-seed statistics.

Every metric named in ``lmlab.glue.spec`` (``TaskSpec.metrics``) is
computed here, so the fine-tuning loop, the seqio tasks and the summaries all
score a task the same way. Scores are percentages (0-100), as both
leaderboards print them.

Where a library implements a metric it is used (scikit-learn for accuracy,
F1 and Matthews correlation; scipy for Pearson and Spearman). The degenerate
cases those libraries answer with NaN or a warning get a defined value
instead, so that an early checkpoint that predicts one class, or a constant
regression score, simply scores 0 rather than breaking checkpoint selection:

* Matthews correlation with only one predicted (or one gold) class: 0.
* Pearson / Spearman with a constant prediction (or gold) vector: 0.
* F1 with no positive prediction (or no positive label): 0.
* A text-to-text output that parsed to no class (-1) is wrong: F1 counts it
  as the opposite of its label (T5's ``f1_score_with_invalid``).
* An empty evaluation set is a ``ValueError``: there is no score to report.

Per-kind inputs of :func:`compute` (see ``glue_spec.KINDS``):

* ``classification``: class ids (TFDS label order) vs gold ids.
* ``regression``: float scores vs gold floats (STS-B).
* ``multiple_choice``: the chosen choice id (0/1) vs the correct one (COPA).
* ``answer_scoring``: 0/1 per answer option vs gold 0/1, with ``groups`` =
  the question id of each option (MultiRC).
* ``entity_ranking``: the predicted entity string per query, with
  ``answers`` = the list of gold answer strings per query (ReCoRD).

MNLI is scored on two validation splits; its two accuracies each belong to
one of them (``SPLIT_METRICS``). Score one split at a time with
:func:`compute_split_metrics` (or ``compute(..., split=...)``) and merge the
dicts, or give :func:`compute` one prediction array per split.
"""

from __future__ import annotations

import collections
import re
import string
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as sk_metrics

from lmlab.glue.spec import TaskSpec

# Every metric name a TaskSpec may list, and what it measures.
METRICS: dict[str, str] = {
    "accuracy": "percentage of examples predicted right",
    "matthews_corrcoef": "Matthews correlation of class ids (CoLA, AX, AX-b)",
    "f1": "binary F1 of class 1 (MRPC, QQP)",
    "macro_f1": "unweighted mean of per-class F1 (CB)",
    "pearson": "Pearson correlation of scores (STS-B)",
    "spearman": "Spearman rank correlation of scores (STS-B)",
    "accuracy_matched": "MNLI accuracy on validation_matched",
    "accuracy_mismatched": "MNLI accuracy on validation_mismatched",
    "f1a": "MultiRC binary F1 over all answer options",
    "exact_match": "MultiRC percentage of questions with every option right",
    "record_f1": "ReCoRD token F1, best over gold answers, mean over queries",
    "record_exact_match": "ReCoRD exact match, best over gold answers, mean over queries",
    "gender_parity": "AX-g percentage of minimal pairs predicted alike",
}

# Metrics that belong to one validation split only: metric -> split.
SPLIT_METRICS: dict[str, str] = {
    "accuracy_matched": "validation_matched",
    "accuracy_mismatched": "validation_mismatched",
}

AVERAGE = "average"


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _as_pair(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """Both inputs as equally long, non-empty 1-D arrays (else a clear ValueError)."""
  predictions = np.asarray(predictions, dtype=dtype)
  labels = np.asarray(labels, dtype=dtype)
  if predictions.ndim != 1 or labels.ndim != 1:
    raise ValueError(f"Predictions and labels must be 1-D, got shapes {predictions.shape} "
                     f"and {labels.shape}.")
  if len(predictions) != len(labels):
    raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels.")
  if len(predictions) == 0:
    raise ValueError("Cannot score an empty evaluation set: no predictions were given.")
  return predictions, labels


def _as_groups(groups, size: int, what: str) -> np.ndarray:
  """``groups`` (one id per row) as a 1-D array of length ``size``."""
  if groups is None:
    raise ValueError(f"{what} needs `groups` (one id per row).")
  groups = np.asarray(groups)
  if groups.shape != (size,):
    raise ValueError(f"{what}: groups has shape {groups.shape}, expected ({size},).")
  return groups


# ---------------------------------------------------------------------------
# Classification and regression
# ---------------------------------------------------------------------------


def accuracy(predictions, labels) -> float:
  """Percentage of predictions equal to their label (an invalid -1 is simply wrong, as in T5)."""
  predictions, labels = _as_pair(predictions, labels)
  return 100.0 * float(sk_metrics.accuracy_score(labels, predictions))


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation x 100; 0 when predictions or labels are all one class.

  With a single class on either side the coefficient is 0/0; scikit-learn
  also maps that to 0, but checking first keeps the rule explicit. Invalid
  text-to-text predictions (-1) are passed on as they are, as T5's
  scikit-learn wrapper does: they form one more predicted class.
  """
  predictions, labels = _as_pair(predictions, labels)
  if len(np.unique(predictions)) < 2 or len(np.unique(labels)) < 2:
    return 0.0
  return 100.0 * float(sk_metrics.matthews_corrcoef(labels, predictions))


def invalid_as_wrong(predictions, labels) -> np.ndarray:
  """Binary predictions with every invalid one (not 0 or 1) replaced by the opposite of its label.

  T5's ``f1_score_with_invalid`` rule: a text-to-text output that parsed to
  no class (-1) must count as a mistake, so it becomes a false positive
  where the label is 0 and a false negative where it is 1. Leaving it as
  "not positive" would turn the first case into a free true negative.
  """
  predictions, labels = _as_pair(predictions, labels)
  invalid = (predictions != 0) & (predictions != 1)
  return np.where(invalid, 1 - labels, predictions)


def f1(predictions, labels, positive=1) -> float:
  """Binary F1 of the ``positive`` class x 100; 0 when nothing is predicted or labelled positive.

  Invalid predictions (anything but 0 or 1, e.g. -1 for an unparseable
  text-to-text output) are wrong whatever the label, as in T5's
  ``f1_score_with_invalid`` (see :func:`invalid_as_wrong`): predictions
  [-1, 1] against labels [0, 1] score 2/3, not 1.
  """
  predictions, labels = _as_pair(predictions, labels)
  predictions = invalid_as_wrong(predictions, labels)
  per_class = sk_metrics.f1_score(labels, predictions, labels=[positive], average=None,
                                  zero_division=0.0)
  return 100.0 * float(per_class[0])


def macro_f1(predictions, labels, num_classes: Optional[int] = None) -> float:
  """Unweighted mean of per-class F1 x 100 (CB's "F1").

  The averaged classes are those occurring in labels or predictions (the
  SuperGLUE reference convention). With ``num_classes`` only ids in
  ``0..num_classes-1`` count as classes: an out-of-range prediction (a
  text-to-text output that parsed to -1) is then wrong, not a class of its own.
  """
  predictions, labels = _as_pair(predictions, labels)
  classes = np.union1d(labels, predictions)
  if num_classes is not None:
    classes = classes[(classes >= 0) & (classes < num_classes)]
  return 100.0 * float(sk_metrics.f1_score(labels, predictions, labels=classes,
                                           average="macro", zero_division=0.0))


def _correlation(statistic: Callable, predictions, labels) -> float:
  """A scipy correlation x 100; 0 when either side is constant."""
  predictions, labels = _as_pair(predictions, labels, dtype=np.float64)
  if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(labels))):
    raise ValueError("Correlation needs finite predictions and labels (got NaN or inf).")
  if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
    return 0.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # near-constant input warnings; handled below
    value = float(statistic(predictions, labels).statistic)
  return 0.0 if np.isnan(value) else 100.0 * value


def pearson(predictions, labels) -> float:
  """Pearson correlation x 100 (0 for a constant vector)."""
  return _correlation(scipy.stats.pearsonr, predictions, labels)


def spearman(predictions, labels) -> float:
  """Spearman rank correlation x 100 (0 for a constant vector)."""
  return _correlation(scipy.stats.spearmanr, predictions, labels)


# ---------------------------------------------------------------------------
# MultiRC
# ---------------------------------------------------------------------------


def multirc_f1a(predictions, labels) -> float:
  """F1a: binary F1 of "true" over every answer option of every question."""
  return f1(predictions, labels, positive=1)


def multirc_exact_match(predictions, labels, groups) -> float:
  """Percentage of questions (``groups``) whose every answer option is predicted right."""
  predictions, labels = _as_pair(predictions, labels)
  groups = _as_groups(groups, len(predictions), "MultiRC exact match")
  _, question = np.unique(groups, return_inverse=True)
  wrong_per_question = np.bincount(question.ravel(), weights=(predictions != labels))
  return 100.0 * float(np.mean(wrong_per_question == 0))


# ---------------------------------------------------------------------------
# ReCoRD (SQuAD-style answer matching)
# ---------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation, drop the articles a/an/the, squash whitespace.

  The SQuAD evaluation's normalisation (in its order), which ReCoRD's
  official scorer reuses, so "The U.S. Army!" matches "us army".
  """
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
  """Token-overlap F1 (0-1) of two normalised answers (0 when nothing is shared)."""
  predicted, reference = normalize_answer(prediction).split(), normalize_answer(gold).split()
  shared = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
  if shared == 0:
    return 0.0
  precision, recall = shared / len(predicted), shared / len(reference)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
  """1.0 when the two answers are equal after normalisation, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(gold))


def record_scores(predictions: Sequence[str],
                  answers: Sequence[Sequence[str]]) -> dict[str, float]:
  """ReCoRD ``record_f1`` and ``record_exact_match``.

  Per query the best value over its gold answers, then the mean over
  queries, x 100. A query without gold answers scores 0 on both.
  """
  if isinstance(predictions, str) or len(predictions) != len(answers):
    raise ValueError(f"ReCoRD needs one prediction per answer list, got "
                     f"{len(predictions)} predictions for {len(answers)} answer lists.")
  if len(predictions) == 0:
    raise ValueError("Cannot score an empty evaluation set: no predictions were given.")
  f1s, ems = [], []
  for prediction, golds in zip(predictions, answers):
    golds = [golds] if isinstance(golds, str) else list(golds)
    f1s.append(max((token_f1(prediction, g) for g in golds), default=0.0))
    ems.append(max((exact_match(prediction, g) for g in golds), default=0.0))
  return {"record_f1": 100.0 * float(np.mean(f1s)),
          "record_exact_match": 100.0 * float(np.mean(ems))}


# ---------------------------------------------------------------------------
# AX-g
# ---------------------------------------------------------------------------


def gender_parity(predictions, idx) -> float:
  """Percentage of AX-g minimal pairs whose two predictions agree.

  AX-g lists each premise twice, differing only in the pronoun's gender, as
  consecutive indices: after sorting by ``idx`` the pairs are rows (0, 1),
  (2, 3), ... The labels are not needed.
  """
  predictions, idx = _as_pair(predictions, idx)
  if len(idx) % 2:
    raise ValueError(f"Gender parity needs whole minimal pairs, got an odd number ({len(idx)}) "
                     "of examples.")
  if len(np.unique(idx)) != len(idx):
    raise ValueError("Gender parity: idx has duplicates, so the pairs are ambiguous.")
  ordered = predictions[np.argsort(idx, kind="stable")]
  return 100.0 * float(np.mean(ordered[0::2] == ordered[1::2]))


# ---------------------------------------------------------------------------
# Candidate aggregation (encoder format)
# ---------------------------------------------------------------------------


def argmax_per_group(scores, groups) -> dict[Any, int]:
  """Group id -> row index of that group's highest score (the first such row on ties).

  In the encoder format each row is one candidate scored by a single logit:
  COPA has two rows per example (one per choice), ReCoRD one row per
  candidate entity of a query. The winning row is the prediction. Keys are
  the group ids as Python scalars, in sorted order; NaN scores never win
  unless every score of the group is NaN.
  """
  scores = np.asarray(scores, dtype=np.float64)
  groups = np.asarray(groups)
  if scores.ndim != 1 or groups.shape != scores.shape:
    raise ValueError(f"argmax_per_group needs one 1-D score per group id, got shapes "
                     f"{scores.shape} and {groups.shape}.")
  if len(scores) == 0:
    return {}
  keys, codes = np.unique(groups, return_inverse=True)
  codes = codes.ravel()
  # Sort by group, then by descending score, then by row, so the first row of
  # each group in this order is its winner (lowest row among ties).
  order = np.lexsort((np.arange(len(scores)), -scores, codes))
  sorted_codes = codes[order]
  starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
  return dict(zip(keys.tolist(), order[starts].tolist()))


# ---------------------------------------------------------------------------
# One task
# ---------------------------------------------------------------------------


def _num_classes(spec: TaskSpec) -> Optional[int]:
  return len(spec.label_names) or None


def _score_metric(spec: TaskSpec, name: str, predictions, labels, *, groups, idx,
                  answers) -> float:
  """One metric of ``spec`` (the ReCoRD pair is handled by the caller)."""
  if name == "accuracy" or name in SPLIT_METRICS:
    return accuracy(predictions, labels)
  if name == "matthews_corrcoef":
    return matthews_corrcoef(predictions, labels)
  if name == "f1":
    return f1(predictions, labels)
  if name == "macro_f1":
    return macro_f1(predictions, labels, _num_classes(spec))
  if name == "pearson":
    return pearson(predictions, labels)
  if name == "spearman":
    return spearman(predictions, labels)
  if name == "f1a":
    return multirc_f1a(predictions, labels)
  if name == "exact_match":
    return multirc_exact_match(predictions, labels, groups)
  if name == "gender_parity":
    return gender_parity(predictions, np.arange(len(predictions)) if idx is None else idx)
  raise ValueError(f"Unknown metric {name!r} in {spec.name}; known: {', '.join(METRICS)}.")


def _with_average(spec: TaskSpec, scores: dict[str, float]) -> dict[str, float]:
  """Adds ``average`` when the task ranks by it and all its metrics are present."""
  if spec.main_metric == AVERAGE and all(m in scores for m in spec.metrics):
    scores[AVERAGE] = float(np.mean([scores[m] for m in spec.metrics]))
  return scores


def split_metric_names(spec: TaskSpec, split_name: Optional[str]) -> tuple[str, ...]:
  """The metrics of ``spec`` scored on ``split_name``.

  For a task without split-specific metrics that is all of them, whatever
  the split; for MNLI the one accuracy belonging to that split.
  """
  if not any(m in SPLIT_METRICS for m in spec.metrics):
    return spec.metrics
  names = tuple(m for m in spec.metrics if SPLIT_METRICS.get(m) == split_name)
  if not names:
    splits = sorted({SPLIT_METRICS[m] for m in spec.metrics if m in SPLIT_METRICS})
    raise ValueError(f"{spec.name} scores each validation split separately; split must be one "
                     f"of {splits}, got {split_name!r}.")
  return names


def compute_split_metrics(spec: TaskSpec, split_name: Optional[str], predictions, labels=None, *,
                          groups=None, idx=None, answers=None) -> dict[str, float]:
  """The metrics of ``spec`` that one split yields (see :func:`split_metric_names`).

  For MNLI, ``validation_matched`` gives ``{"accuracy_matched": ...}`` and
  ``validation_mismatched`` gives ``{"accuracy_mismatched": ...}``; merge
  the two dicts for the task's full score. Other tasks ignore the split.
  ``average`` is added when the task ranks by it (never for MNLI).
  """
  names = split_metric_names(spec, split_name)
  scores: dict[str, float] = {}
  if spec.kind == "entity_ranking":
    record = record_scores(predictions, labels if answers is None else answers)
    scores.update({m: record[m] for m in names})
    return _with_average(spec, scores)
  for name in names:
    scores[name] = _score_metric(spec, name, predictions, labels, groups=groups, idx=idx,
                                 answers=answers)
  return _with_average(spec, scores)


def _compute_all_splits(spec: TaskSpec, predictions, labels) -> dict[str, float]:
  """MNLI with one prediction/label array per split, keyed by split name."""
  if not isinstance(predictions, Mapping) or not isinstance(labels, Mapping):
    splits = sorted({SPLIT_METRICS[m] for m in spec.metrics if m in SPLIT_METRICS})
    raise ValueError(f"{spec.name} is scored per validation split: pass split= (one of "
                     f"{splits}) or give predictions and labels as dicts keyed by split.")
  scores: dict[str, float] = {}
  for split_name, split_predictions in predictions.items():
    scores.update(compute_split_metrics(spec, split_name, split_predictions, labels[split_name]))
  missing = [m for m in spec.metrics if m not in scores]
  if missing:
    raise ValueError(f"{spec.name}: no predictions for the split(s) of {missing}.")
  return _with_average(spec, scores)


def compute(spec: TaskSpec, predictions, labels=None, *, groups=None, idx=None, answers=None,
            split: Optional[str] = None) -> dict[str, float]:
  """The official metrics of ``spec`` (0-100), plus ``average`` when the task ranks by it.

  Args:
    spec: The task (``glue_spec.TASKS[...]``).
    predictions: Class ids (classification), floats (regression), chosen
      choice ids (COPA), 0/1 per answer option (MultiRC) or the predicted
      entity string per query (ReCoRD).
    labels: The gold values in the same form; unused for ReCoRD (or its
      answer lists, if ``answers`` is not given) and for ``gender_parity``.
    groups: MultiRC: the question id of each answer option.
    idx: AX-g: the example index of each prediction (pairs are consecutive
      indices); when None the rows are taken to be in index order.
    answers: ReCoRD: the list of gold answer strings of each query.
    split: The validation split these predictions come from. Only tasks
      with split-specific metrics (MNLI) use it: then only that split's
      metric is returned (see :func:`compute_split_metrics`). For MNLI
      without ``split``, ``predictions`` and ``labels`` must be dicts
      ``{split_name: array}`` covering both validation splits, and both
      accuracies are returned.

  Returns:
    ``{metric: score}`` with exactly the metrics of ``spec.metrics`` (those of
    ``split`` only, when given for MNLI), plus ``"average"`` (their mean) when
    ``spec.main_metric == "average"``.
  """
  has_split_metrics = any(m in SPLIT_METRICS for m in spec.metrics)
  if has_split_metrics and split is None:
    return _compute_all_splits(spec, predictions, labels)
  return compute_split_metrics(spec, split, predictions, labels, groups=groups, idx=idx,
                               answers=answers)


def main_score(spec: TaskSpec, scores: Mapping[str, float]) -> float:
  """The number a best checkpoint is chosen by: ``scores[spec.main_metric]``.

  For ``average`` tasks it is recomputed from the task's metrics when the
  dict lacks it (e.g. after merging per-split results).
  """
  if spec.main_metric in scores:
    return float(scores[spec.main_metric])
  needed = spec.metrics if spec.main_metric == AVERAGE else (spec.main_metric,)
  missing = [m for m in needed if m not in scores]
  if missing:
    raise ValueError(f"{spec.name}: main metric {spec.main_metric!r} needs {missing}, "
                     f"which the scores {sorted(scores)} lack.")
  return float(np.mean([scores[m] for m in needed]))


# ---------------------------------------------------------------------------
# seqio (text-to-text format)
# ---------------------------------------------------------------------------


def _multirc_from_dicts(targets, predictions) -> tuple[list[int], list[int], list[Any]]:
  """MultiRC text-to-text rows ``{"group": question, "value": 0/1}`` as arrays.

  The question ids are read from the targets (the predictions' own
  ``group``, if any, is ignored: the model only generates the value).
  """
  def value(row) -> int:
    return int(row["value"]) if isinstance(row, Mapping) else int(row)
  if not all(isinstance(t, Mapping) and "group" in t for t in targets):
    raise ValueError('MultiRC text-to-text targets must be dicts {"group": question_id, '
                     '"value": 0 or 1}, so that exact match can group answers by question.')
  return ([value(p) for p in predictions], [value(t) for t in targets],
          [t["group"] for t in targets])


def seqio_metric_fn(spec: TaskSpec, split: Optional[str] = None
                    ) -> Callable[[Sequence, Sequence], dict[str, float]]:
  """A seqio metric function ``fn(targets, predictions) -> {metric: score}``.

  Targets and predictions are the postprocessed text-to-text outputs:

  * classification / COPA: label (choice) ids; a postprocessor should map an
    unparseable output to -1, which then scores as wrong (for F1: as the
    opposite of its label, T5's ``f1_score_with_invalid``).
  * regression: floats (an unparseable output as -1, T5's ``string_to_float``).
  * ReCoRD: predictions are entity strings, targets the list of gold answer
    strings per query.
  * MultiRC: each target is ``{"group": question_id, "value": 0/1}`` and each
    prediction either the same kind of dict or a bare 0/1 (the question ids
    are taken from the targets), because exact match needs the grouping and
    a seqio metric only sees targets and predictions.
  * AX-g: rows must be in example-index order (seqio keeps dataset order).

  For MNLI, ``split`` names which validation split the seqio task evaluates
  (default: the first, ``validation_matched``), since each split's accuracy
  has its own metric name.
  """
  if split is None and any(m in SPLIT_METRICS for m in spec.metrics):
    split = spec.validation_splits[0]

  def metric_fn(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    if spec.kind == "answer_scoring":
      values, gold, groups = _multirc_from_dicts(targets, predictions)
      return compute(spec, values, gold, groups=groups, split=split)
    if spec.kind == "entity_ranking":
      return compute(spec, list(predictions), None, answers=list(targets), split=split)
    return compute(spec, list(predictions), list(targets), split=split)

  metric_fn.__name__ = f"{spec.name}_metrics"
  return metric_fn
