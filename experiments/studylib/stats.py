"""Means and 95% bootstrap intervals over pretraining seeds; paired differences; seed variance.

The unit of replication is the pretraining seed: each pretrained checkpoint's
fine-tuning score is first averaged over its fine-tuning seeds, then the arm's
mean and percentile-bootstrap interval are taken over pretraining seeds
(``lmlab.glue.seeds.bootstrap_ci``: 10,000 resamples, seeded, so the numbers
are reproducible).

An arm with a ``baseline`` is also compared with it seed by seed: the
difference (arm - baseline) of each shared pretraining seed, bootstrapped
over seeds (a paired comparison: the seed's data order and masking are the
same on both sides).

With several pretraining *and* fine-tuning seeds, each score's variance is
split into a pretraining part and a fine-tuning part (MultiBERTs' question:
how much of the spread comes from which seed) by the one-way random-effects
ANOVA estimator on the seeds x fine-tuning-seeds grid, with a bootstrap over
pretraining seeds (the top level of the nested design) for the interval.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from lmlab.glue.seeds import bootstrap_ci

AVERAGE = "task average"


def estimate(values: Sequence[Optional[float]]) -> Optional[dict]:
  """``{"mean", "low", "high", "n", "values"}`` over the values that are not None (None if none are)."""
  kept = [float(v) for v in values if v is not None]
  if not kept:
    return None
  mean, low, high = bootstrap_ci(kept)
  return {"mean": mean, "low": low, "high": high, "n": len(kept), "values": kept}


def task_names(results: Sequence[dict]) -> list[str]:
  """Fine-tuning tasks in first-seen order."""
  return list(dict.fromkeys(t for r in results if r.get("finetune")
                            for t in r["finetune"]["task_main"]))


def _finetune(run: dict, key: str, task: Optional[str] = None) -> Optional[float]:
  ft = run.get("finetune")
  if not ft:
    return None
  return ft["task_main"].get(task) if task is not None else ft.get(key)


def quantities(run: dict, tasks: Sequence[str], report_metrics: Sequence[str]) -> dict[str, Optional[float]]:
  """Every number of one run that is compared between arms, by name."""
  values = {"final_loss": run["pretrain"]["final_loss"], "average": _finetune(run, "average")}
  values.update({f"task/{t}": _finetune(run, "", t) for t in tasks})
  values.update({m: run.get("metrics", {}).get(m) for m in report_metrics})
  return values


def paired_differences(runs: Sequence[dict], baseline_runs: Sequence[dict], tasks: Sequence[str],
                       report_metrics: Sequence[str]) -> dict[str, Optional[dict]]:
  """Per compared quantity: estimate of (arm - baseline) over the pretraining seeds both ran."""
  base = {r["seed"]: quantities(r, tasks, report_metrics) for r in baseline_runs}
  diffs: dict[str, list[Optional[float]]] = {}
  for run in runs:
    if run["seed"] not in base:
      continue
    mine = quantities(run, tasks, report_metrics)
    for name, value in mine.items():
      other = base[run["seed"]].get(name)
      diffs.setdefault(name, []).append(
          None if value is None or other is None else value - other)
  return {name: estimate(values) for name, values in diffs.items()}


def _components(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(pretraining variance, fine-tuning variance) of ``[..., p, f]`` score grids."""
  f = grids.shape[-1]
  within = grids.var(axis=-1, ddof=1).mean(axis=-1)
  between_ms = f * grids.mean(axis=-1).var(axis=-1, ddof=1)
  return np.maximum((between_ms - within) / f, 0.0), within


def variance_components(grid: np.ndarray) -> dict[str, float]:
  """Pretraining vs fine-tuning variance of a (pretraining seeds x fine-tuning seeds) score grid.

  One-way random-effects ANOVA: the within-checkpoint mean square estimates
  the fine-tuning variance; the between-checkpoint mean square, less its
  share of that, divided by the fine-tuning seeds, the pretraining variance
  (clipped at 0).
  """
  grid = np.asarray(grid, np.float64)
  p, f = grid.shape
  pretrain, within = (float(v) for v in _components(grid))
  total = pretrain + within
  return {"pretrain_var": pretrain, "finetune_var": within, "total_var": total,
          "pretrain_fraction": pretrain / total if total > 0 else float("nan"),
          "pretrain_seeds": p, "finetune_seeds": f}


def variance_decomposition(grid: np.ndarray, num_resamples: int = 10000,
                           seed: int = 0) -> dict[str, float]:
  """``variance_components`` plus 95% bootstrap intervals (pretraining seeds resampled)."""
  grid = np.asarray(grid, np.float64)
  point = variance_components(grid)
  rng = np.random.default_rng(seed)
  grids = grid[rng.integers(0, grid.shape[0], size=(num_resamples, grid.shape[0]))]
  pretrain, within = _components(grids)
  total = pretrain + within
  keep = total > 0
  samples = {"pretrain_fraction": pretrain[keep] / total[keep], "pretrain_var": pretrain[keep],
             "finetune_var": within[keep]}
  for key, values in samples.items():
    low, high = np.quantile(values, [0.025, 0.975]) if values.size else (float("nan"),) * 2
    point[f"{key}_low"], point[f"{key}_high"] = float(low), float(high)
  return point


def score_grid(runs: Sequence[dict], task: Optional[str]) -> Optional[np.ndarray]:
  """Pretraining seeds x fine-tuning seeds of one task's main score (None: the task average).

  None when there are fewer than two of either, or a seed is missing.
  """
  rows = []
  for run in sorted(runs, key=lambda r: r["seed"]):
    ft = run.get("finetune")
    if not ft:
      return None
    tasks = [task] if task is not None else list(ft["scores"])
    by_seed: dict = {}
    for t in tasks:
      for entry in ft["scores"].get(t, []):
        by_seed.setdefault(entry["seed"], []).append(entry["main"])
    rows.append([float(np.mean(by_seed[s])) for s in sorted(by_seed)
                 if len(by_seed[s]) == len(tasks)])
  if len(rows) < 2 or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
    return None
  return np.asarray(rows)


def seed_variance(runs: Sequence[dict], tasks: Sequence[str]) -> dict[str, dict]:
  """Per task (and the task average): the variance decomposition, where the design allows it."""
  out = {}
  for task in [*tasks, None]:
    grid = score_grid(runs, task)
    if grid is not None:
      out[task or AVERAGE] = variance_decomposition(grid)
  return out


def summarize(results: Sequence[dict], arm_order: Sequence[str],
              report_metrics: Sequence[str] = (),
              baselines: Optional[Mapping[str, str]] = None) -> dict[str, dict]:
  """Per arm (in ``arm_order``; arms without results are left out): estimates over seeds."""
  tasks = task_names(results)
  baselines = baselines or {}
  by_arm = {arm: sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
            for arm in arm_order}
  summary = {}
  for arm in arm_order:
    runs = by_arm[arm]
    if not runs:
      continue
    summary[arm] = {
        "seeds": [r["seed"] for r in runs],
        "final_loss": estimate([r["pretrain"]["final_loss"] for r in runs]),
        "final_loss_split": runs[0]["pretrain"]["final_loss_split"],
        "tasks": {t: estimate([_finetune(r, "", t) for r in runs]) for t in tasks},
        "average": estimate([_finetune(r, "average") for r in runs]),
        "metrics": {m: estimate([r.get("metrics", {}).get(m) for r in runs])
                    for m in report_metrics},
        "tokens": estimate([r["pretrain"]["tokens"] for r in runs]),
        "final_step": estimate([r["pretrain"]["final_step"] for r in runs]),
        "pretrain_wall_seconds": estimate([r["pretrain"]["wall_seconds"] for r in runs]),
        "finetune_wall_seconds": estimate([_finetune(r, "wall_seconds") for r in runs]),
        "wall_seconds": estimate([r["wall_seconds"] for r in runs]),
        "seed_variance": seed_variance(runs, tasks),
    }
    baseline = baselines.get(arm)
    if baseline and by_arm.get(baseline):
      summary[arm]["baseline"] = baseline
      summary[arm]["vs_baseline"] = paired_differences(runs, by_arm[baseline], tasks,
                                                        report_metrics)
  return summary
