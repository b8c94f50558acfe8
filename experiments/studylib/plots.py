"""PNG plots: loss curves per arm (mean and 95% CI band over seeds), score vs compute, loss vs reported metrics."""

from __future__ import annotations

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from lmlab.glue.seeds import bootstrap_ci  # pylint: disable=wrong-import-position

LOSS_PLOT = "loss_curves.png"
COMPUTE_PLOT = "score_vs_compute.png"
METRICS_PLOT = "loss_vs_metrics.png"


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
  """One colour per arm, the same in every panel and plot of a study."""
  return {arm: f"C{i % 10}" for i, arm in enumerate(arms)}


def band(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
  """Steps every seed logged, with the mean and bootstrap interval over seeds at each."""
  if not curves:
    return [], [], [], []
  by_seed = [{int(step): loss for step, loss in curve} for curve in curves]
  steps = sorted(set.intersection(*(set(c) for c in by_seed)))
  means, lows, highs = [], [], []
  for step in steps:
    mean, low, high = bootstrap_ci([c[step] for c in by_seed], num_resamples=2000)
    means.append(mean)
    lows.append(low)
    highs.append(high)
  return steps, means, lows, highs


def plot_loss_curves(results: Sequence[dict], arm_order: Sequence[str], path: pathlib.Path) -> None:
  """One panel per split (train, eval when logged): each arm's mean curve and CI band."""
  splits = [s for s in ("train", "eval") if any(r["pretrain"]["curves"][s] for r in results)]
  colors = arm_colors(arm_order)
  fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(6 * max(len(splits), 1), 4),
                           squeeze=False)
  for ax, split in zip(axes[0], splits):
    for arm in arm_order:
      curves = [r["pretrain"]["curves"][split] for r in results
                if r["arm"] == arm and r["pretrain"]["curves"][split]]
      steps, means, lows, highs = band(curves)
      if not steps:
        continue
      ax.plot(steps, means, marker="." if len(steps) < 30 else None, color=colors[arm],
              label=f"{arm} (n={len(curves)})")
      ax.fill_between(steps, lows, highs, color=colors[arm], alpha=0.25)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} loss")
    ax.set_title(f"Pretraining {split} loss (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_score_vs_compute(results: Sequence[dict], summary: dict[str, dict],
                          path: pathlib.Path) -> None:
  """Task average vs pretraining tokens and vs pretraining wall time: seeds as dots, mean +- CI."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
  colors = arm_colors(list(summary))
  panels = [("tokens", lambda r: r["pretrain"]["tokens"], "pretraining tokens"),
            ("pretrain_wall_seconds", lambda r: r["pretrain"]["wall_seconds"],
             "pretraining wall time (s)")]
  for ax, (key, x_of, label) in zip(axes[0], panels):
    for arm, s in summary.items():
      runs = [r for r in results if r["arm"] == arm and x_of(r) is not None and r.get("finetune")]
      if not runs or s[key] is None or s["average"] is None:
        continue
      ax.scatter([x_of(r) for r in runs], [r["finetune"]["average"] for r in runs],
                 alpha=0.35, s=18, color=colors[arm])
      avg = s["average"]
      ax.errorbar([s[key]["mean"]], [avg["mean"]],
                  yerr=[[avg["mean"] - avg["low"]], [avg["high"] - avg["mean"]]],
                  fmt="o", capsize=4, markersize=8, color=colors[arm],
                  label=f"{arm} (n={len(runs)})")
    ax.set_xlabel(label)
    ax.set_ylabel("fine-tuning task average (main)")
    ax.set_title(f"Score vs {label}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_loss_vs_metrics(results: Sequence[dict], summary: dict[str, dict],
                         metrics: Sequence[str], path: pathlib.Path) -> None:
  """One panel per reported metric: final loss against it, seeds as dots, arm means with CIs."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
  colors = arm_colors(list(summary))
  for ax, metric in zip(axes[0], metrics):
    for arm, s in summary.items():
      runs = [r for r in results if r["arm"] == arm and r.get("metrics", {}).get(metric) is not None]
      est = s["metrics"].get(metric)
      if not runs or est is None:
        continue
      ax.scatter([r["metrics"][metric] for r in runs], [r["pretrain"]["final_loss"] for r in runs],
                 alpha=0.35, s=18, color=colors[arm])
      loss = s["final_loss"]
      ax.errorbar([est["mean"]], [loss["mean"]],
                  xerr=[[est["mean"] - est["low"]], [est["high"] - est["mean"]]],
                  yerr=[[loss["mean"] - loss["low"]], [loss["high"] - loss["mean"]]],
                  fmt="o", capsize=4, markersize=8, color=colors[arm],
                  label=f"{arm} (n={len(runs)})")
    ax.set_xlabel(metric)
    ax.set_ylabel(f"final {next(iter(summary.values()))['final_loss_split']} loss")
    ax.set_title(f"Loss vs {metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_plots(results_dir: pathlib.Path, results: Sequence[dict], summary: dict[str, dict],
                metrics: Sequence[str] = ()) -> list[str]:
  """Writes the PNGs that apply into ``results_dir``; returns their file names.

  Loss curves always; score vs compute when checkpoints were fine-tuned;
  loss vs reported metrics when the study reports any.
  """
  results_dir.mkdir(parents=True, exist_ok=True)
  names = [LOSS_PLOT]
  plot_loss_curves(results, list(summary), results_dir / LOSS_PLOT)
  if any(r.get("finetune") for r in results):
    plot_score_vs_compute(results, summary, results_dir / COMPUTE_PLOT)
    names.append(COMPUTE_PLOT)
  if metrics:
    plot_loss_vs_metrics(results, summary, list(metrics), results_dir / METRICS_PLOT)
    names.append(METRICS_PLOT)
  return names
