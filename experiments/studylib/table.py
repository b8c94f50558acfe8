"""results.json (every number) and results.md (the table a reader checks the claim against)."""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

from studylib.stats import task_names


def cell(est: Optional[dict], digits: int = 2) -> str:
  """``mean [low, high]`` with ``digits`` decimals; ``-`` when there is no value."""
  if est is None:
    return "-"
  f = f"{{:.{digits}f}}"
  return f"{f.format(est['mean'])} [{f.format(est['low'])}, {f.format(est['high'])}]"


def markdown(study: dict, summary: dict[str, dict], results: Sequence[dict], *, quick: bool,
             plots: Sequence[str]) -> str:
  """The results.md text: claim, setup, the per-arm table, per-seed rows, plots."""
  tasks = task_names(results)
  split = next(iter(summary.values()))["final_loss_split"] if summary else "eval"
  lines = [f"# Study: {study['name']}" + (" (--quick)" if quick else ""), ""]
  if study.get("claim"):
    lines += [f"**Claim.** {study['claim']}", ""]
  lines += [f"Arms: {', '.join(a['name'] for a in study['arms'])}; pretraining seeds "
            f"{list(study['pretrain_seeds'])}; fine-tuning seeds {list(study['finetune_seeds'])} "
            f"on {list(study['finetune_tasks'])}.", "",
            "Mean over pretraining seeds and 95% percentile-bootstrap interval "
            "(each pretraining seed's fine-tuning score is the mean over its fine-tuning seeds; "
            "tasks: validation main metric). Tokens: steps x batch x sequence length.", ""]
  header = ["arm", "n", f"final {split} loss", *[f"{t} (main)" for t in tasks], "task average",
            "pretrain tokens", "wall time (s)"]
  lines += ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
  for arm, s in summary.items():
    tokens = s["tokens"]
    row = [arm, str(len(s["seeds"])), cell(s["final_loss"], 4), *[cell(s["tasks"][t]) for t in tasks],
           cell(s["average"]), "-" if tokens is None else f"{tokens['mean']:,.0f}",
           cell(s["wall_seconds"], 1)]
    lines.append("| " + " | ".join(row) + " |")
  lines += ["", "## Per seed", "",
            "| arm | seed | final loss | " + " | ".join(tasks) + " | average | pretrain s | finetune s |",
            "|---|---:|---:|" + "---:|" * (len(tasks) + 3)]
  for r in sorted(results, key=lambda r: (list(summary).index(r["arm"]) if r["arm"] in summary
                                           else len(summary), r["seed"])):
    scores = [f"{r['finetune']['task_main'][t]:.2f}" if t in r["finetune"]["task_main"] else "-"
              for t in tasks]
    lines.append(f"| {r['arm']} | {r['seed']} | {r['pretrain']['final_loss']:.4f} | "
                 + " | ".join(scores) + f" | {r['finetune']['average']:.2f} | "
                 f"{r['pretrain']['wall_seconds']:.1f} | {r['finetune']['wall_seconds']:.1f} |")
  if plots:
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
  return "\n".join(lines) + "\n"


def write_results(results_dir: pathlib.Path, study: dict, summary: dict[str, dict],
                  results: Sequence[dict], *, quick: bool, plots: Sequence[str]) -> dict[str, pathlib.Path]:
  """Writes results.json and results.md into ``results_dir``; returns their paths."""
  results_dir.mkdir(parents=True, exist_ok=True)
  paths = {"json": results_dir / "results.json", "md": results_dir / "results.md"}
  paths["json"].write_text(json.dumps({"study": study, "quick": quick, "summary": summary,
                                       "runs": list(results)}, indent=1), encoding="utf-8")
  paths["md"].write_text(markdown(study, summary, results, quick=quick, plots=plots),
                         encoding="utf-8")
  return paths
