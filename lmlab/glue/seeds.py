"""Scores over several seeds: the mean and a percentile-bootstrap interval (MultiBERTs style).

Small differences between fine-tuning runs are judged over seeds, not single
runs; these helpers turn per-seed scores into the summary tables that
fine-tuning writes (``summary.md``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, num_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float, float]:
  """Mean over seeds and a percentile-bootstrap interval of that mean (MultiBERTs style).

  Resamples the seeds with replacement ``num_resamples`` times and takes the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
  resampled means. The RNG is seeded, so the same inputs give the same
  interval. A single value has no spread: ``(v, v, v)``.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"bootstrap_ci needs a non-empty 1-D list of values, got shape "
                     f"{values.shape}.")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  mean = float(values.mean())
  if values.size == 1:
    return mean, mean, mean
  rng = np.random.default_rng(seed)
  resampled = values[rng.integers(0, values.size, size=(num_resamples, values.size))]
  tail = (1.0 - confidence) / 2
  low, high = np.quantile(resampled.mean(axis=1), [tail, 1.0 - tail])
  return mean, float(low), float(high)


def seed_table(results: Mapping[str, Sequence[Mapping[str, float]]], *,
               skip: Sequence[str] = ("main",)) -> list[str]:
  """Markdown lines: task | metric | n seeds | mean | 95% CI low | 95% CI high.

  ``results`` maps each task to its per-seed score dicts. Metrics are listed
  in first-seen order; a metric missing from some seeds is summarised over
  the seeds that have it. ``skip`` drops keys that only repeat another
  metric (``main``, which the fine-tuning loop adds).
  """
  lines = ["| task | metric | n seeds | mean | 95% CI low | 95% CI high |",
           "|---|---|---:|---:|---:|---:|"]
  for task, runs in results.items():
    names = list(dict.fromkeys(name for run in runs for name in run if name not in skip))
    for name in names:
      values = [float(run[name]) for run in runs if name in run]
      mean, low, high = bootstrap_ci(values)
      lines.append(f"| {task} | {name} | {len(values)} | {mean:.2f} | {low:.2f} | {high:.2f} |")
  return lines
