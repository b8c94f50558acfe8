"""Means and 95% bootstrap intervals over pretraining seeds, per arm.

The unit of replication is the pretraining seed: each pretrained checkpoint's
fine-tuning score is first averaged over its fine-tuning seeds, then the arm's
mean and percentile-bootstrap interval are taken over pretraining seeds
(``lmlab.glue.seeds.bootstrap_ci``: 10,000 resamples, seeded, so the numbers
are reproducible).
"""

from __future__ import annotations

from typing import Optional, Sequence

from lmlab.glue.seeds import bootstrap_ci


def estimate(values: Sequence[Optional[float]]) -> Optional[dict]:
  """``{"mean", "low", "high", "n", "values"}`` over the values that are not None (None if none are)."""
  kept = [float(v) for v in values if v is not None]
  if not kept:
    return None
  mean, low, high = bootstrap_ci(kept)
  return {"mean": mean, "low": low, "high": high, "n": len(kept), "values": kept}


def task_names(results: Sequence[dict]) -> list[str]:
  """Fine-tuning tasks in first-seen order."""
  return list(dict.fromkeys(t for r in results for t in r["finetune"]["task_main"]))


def summarize(results: Sequence[dict], arm_order: Sequence[str]) -> dict[str, dict]:
  """Per arm (in ``arm_order``; arms without results are left out): estimates over seeds."""
  tasks = task_names(results)
  summary = {}
  for arm in arm_order:
    runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
    if not runs:
      continue
    summary[arm] = {
        "seeds": [r["seed"] for r in runs],
        "final_loss": estimate([r["pretrain"]["final_loss"] for r in runs]),
        "final_loss_split": runs[0]["pretrain"]["final_loss_split"],
        "tasks": {t: estimate([r["finetune"]["task_main"].get(t) for r in runs]) for t in tasks},
        "average": estimate([r["finetune"]["average"] for r in runs]),
        "tokens": estimate([r["pretrain"]["tokens"] for r in runs]),
        "pretrain_wall_seconds": estimate([r["pretrain"]["wall_seconds"] for r in runs]),
        "finetune_wall_seconds": estimate([r["finetune"]["wall_seconds"] for r in runs]),
        "wall_seconds": estimate([r["wall_seconds"] for r in runs]),
    }
  return summary
