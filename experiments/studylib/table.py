"""results.json (every number) and results.md (the tables a reader checks the claim against)."""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import re
from typing import Optional, Sequence

from studylib.stats import task_names


def number(value: float, digits: Optional[int] = None) -> str:
  """``digits`` decimals if given; otherwise thousands separators for big values, 4 significant digits else."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if digits is not None:
    return f"{value:.{digits}f}"
  if abs(value) >= 1000:
    return f"{value:,.0f}"
  return f"{value:.4g}"


README_START = "<!-- results:start (written by experiments/run.py; edits here are replaced) -->"
README_END = "<!-- results:end -->"


def environment() -> dict:
  """The machine the results came from (CPU model, cores, library versions, date)."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import jax  # pylint: disable=import-outside-toplevel
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"cpu": cpu, "cores": cores, "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "date": datetime.date.today().isoformat()}


def cell(est: Optional[dict], digits: Optional[int] = 2) -> str:
  """``mean [low, high]``; ``-`` when there is no value."""
  if est is None:
    return "-"
  return f"{number(est['mean'], digits)} [{number(est['low'], digits)}, {number(est['high'], digits)}]"


def _row(values: Sequence[str]) -> str:
  return "| " + " | ".join(values) + " |"


def _header(names: Sequence[str], text_columns: int = 1) -> list[str]:
  return [_row(names), "|" + "---|" * text_columns + "---:|" * (len(names) - text_columns)]


def _quantity_columns(study: dict, tasks: Sequence[str],
                      split: str) -> list[tuple[str, str, Optional[int]]]:
  """(key in stats.quantities, column name, digits) of every compared quantity, in table order."""
  columns = [("final_loss", f"final {split} loss", 4)]
  columns += [(m, m, None) for m in study.get("report_metrics", ())]
  columns += [(f"task/{t}", f"{t} (main)", 2) for t in tasks]
  if tasks:
    columns.append(("average", "task average", 2))
  return columns


def markdown(study: dict, summary: dict[str, dict], results: Sequence[dict], *, quick: bool,
             plots: Sequence[str], env: Optional[dict] = None) -> str:
  """The results.md text: claim, setup, the per-arm table, comparisons, seed variance, per-seed rows, plots."""
  tasks = task_names(results)
  split = next(iter(summary.values()))["final_loss_split"] if summary else "eval"
  lines = [f"# Study: {study['name']}" + (" (--quick)" if quick else ""), ""]
  if study.get("claim"):
    lines += [f"**Claim.** {study['claim']}", ""]
  setup = (f"Arms: {', '.join(a['name'] for a in study['arms'])}; pretraining seeds "
           f"{list(study['pretrain_seeds'])}")
  if tasks:
    setup += (f"; fine-tuning seeds {list(study['finetune_seeds'])} on "
              f"{list(study['finetune_tasks'])}")
  if study.get("wall_clock_seconds"):
    setup += (f"; equal wall-clock: {study['wall_clock_seconds']:.0f} s of training per run "
              "(steps from each arm's calibrated step rate, the budget as a hard cap)")
  lines += [setup + ".", "",
            f"Mean over pretraining seeds and 95% percentile-bootstrap interval. Loss: final "
            f"pretraining {split} loss." + (
                " Tasks: validation main metric; each pretraining seed's score is the mean over "
                "its fine-tuning seeds." if tasks else "") +
            " Tokens: steps x batch x sequence length.", ""]
  columns = _quantity_columns(study, tasks, split)
  lines += _header(["arm", "n", *[name for _, name, _ in columns], "steps", "pretrain tokens",
                    "wall time (s)"])
  for arm, s in summary.items():
    values = {"final_loss": s["final_loss"], "average": s["average"], **s["metrics"],
              **{f"task/{t}": s["tasks"][t] for t in tasks}}
    tokens, steps = s["tokens"], s["final_step"]
    lines.append(_row([arm, str(len(s["seeds"])),
                       *[cell(values.get(key), digits) for key, _, digits in columns],
                       "-" if steps is None else number(steps["mean"], 0),
                       "-" if tokens is None else f"{tokens['mean']:,.0f}",
                       cell(s["wall_seconds"], 1)]))
  compared = {arm: s for arm, s in summary.items() if "vs_baseline" in s}
  if compared:
    lines += ["", "## Against each arm's baseline (paired by pretraining seed: arm - baseline)", ""]
    lines += _header(["arm", "baseline", "n", *[f"Δ {name}" for _, name, _ in columns]], 2)
    for arm, s in compared.items():
      diffs = s["vs_baseline"]
      n = diffs["final_loss"]["n"] if diffs.get("final_loss") else 0
      lines.append(_row([arm, s["baseline"], str(n),
                         *[cell(diffs.get(key), digits) for key, _, digits in columns]]))
  varied = {arm: s["seed_variance"] for arm, s in summary.items() if s.get("seed_variance")}
  if varied:
    lines += ["", "## Seed variance: pretraining vs fine-tuning", "",
              "Standard deviations from the one-way random-effects ANOVA on the pretraining x "
              "fine-tuning seed grid; the pretraining share of the variance with a 95% bootstrap "
              "interval over pretraining seeds.", ""]
    lines += _header(["arm", "task", "pretraining seeds x fine-tuning seeds", "sd (pretraining)",
                      "sd (fine-tuning)", "sd (total)", "pretraining share of variance"], 2)
    for arm, per_task in varied.items():
      for task, v in per_task.items():
        share = (f"{v['pretrain_fraction']:.2f} [{v['pretrain_fraction_low']:.2f}, "
                 f"{v['pretrain_fraction_high']:.2f}]")
        lines.append(_row([arm, task, f"{v['pretrain_seeds']} x {v['finetune_seeds']}",
                           f"{math.sqrt(v['pretrain_var']):.2f}",
                           f"{math.sqrt(v['finetune_var']):.2f}",
                           f"{math.sqrt(v['total_var']):.2f}", share]))
  lines += ["", "## Per seed", ""]
  metric_names = list(study.get("report_metrics", ()))
  lines += _header(["arm", "seed", "steps", "final loss", *metric_names, *tasks,
                    *(["average"] if tasks else []), "pretrain s", "finetune s"], 1)
  arm_rank = {arm: i for i, arm in enumerate(summary)}
  for r in sorted(results, key=lambda r: (arm_rank.get(r["arm"], len(arm_rank)), r["seed"])):
    ft = r.get("finetune")
    scores = [number(ft["task_main"][t], 2) if ft and t in ft["task_main"] else "-" for t in tasks]
    lines.append(_row([r["arm"], str(r["seed"]), str(r["pretrain"]["final_step"]),
                       number(r["pretrain"]["final_loss"], 4),
                       *[number(r.get("metrics", {}).get(m)) for m in metric_names], *scores,
                       *([number(ft["average"], 2) if ft else "-"] if tasks else []),
                       number(r["pretrain"]["wall_seconds"], 1),
                       number(ft["wall_seconds"], 1) if ft else "-"]))
  if plots:
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
  if env:
    compute = sum(r["wall_seconds"] for r in results)
    compute += sum({r["arm"]: (r["pretrain"].get("calibration") or {}).get("seconds", 0.0)
                    for r in results}.values())  # one calibration per arm
    lines += ["", "## Machine and time", "",
              f"{env['cpu']}, {env['cores']} cores available; {env['platform']}; Python "
              f"{env['python']}, JAX {env['jax']}; {env['date']}. Wall time of every run "
              f"(pretraining, measuring, fine-tuning; interrupted attempts included): "
              f"{compute / 60:.1f} min."]
  return "\n".join(lines) + "\n"


def update_readme(readme: pathlib.Path, results_md: str, results_dir_name: str = "results") -> None:
  """Puts ``results_md`` into the study's README.md between the results markers.

  Headings move down one level and image links point into the results
  folder. A README without the markers gets the section appended, so the
  hand-written text above it (discussion, the paper's claim) is kept.
  """
  body = re.sub(r"^(#+) ", r"#\1 ", results_md, flags=re.MULTILINE)
  body = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", rf"![\1]({results_dir_name}/\2)", body)
  section = f"{README_START}\n{body.rstrip()}\n{README_END}"
  text = readme.read_text(encoding="utf-8") if readme.exists() else ""
  if README_START in text and README_END in text:
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    text = head + section + tail
  else:
    text = (text.rstrip() + "\n\n" if text else "") + section + "\n"
  readme.write_text(text, encoding="utf-8")


def write_results(results_dir: pathlib.Path, study: dict, summary: dict[str, dict],
                  results: Sequence[dict], *, quick: bool, plots: Sequence[str],
                  env: Optional[dict] = None) -> dict[str, pathlib.Path]:
  """Writes results.json and results.md into ``results_dir``; returns their paths."""
  results_dir.mkdir(parents=True, exist_ok=True)
  paths = {"json": results_dir / "results.json", "md": results_dir / "results.md"}
  paths["json"].write_text(json.dumps({"study": study, "quick": quick, "environment": env,
                                       "summary": summary, "runs": list(results)}, indent=1),
                           encoding="utf-8")
  paths["md"].write_text(markdown(study, summary, results, quick=quick, plots=plots, env=env),
                         encoding="utf-8")
  return paths
