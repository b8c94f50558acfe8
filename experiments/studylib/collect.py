"""Reading what lmlab wrote into one result per arm x pretraining seed.

Sources (all written by the lmlab CLI):
  pretrain/metrics.jsonl        ``{"step", "train/loss", ...}`` and ``{"step", "eval/loss", ...}`` lines
  pretrain/config.operative.gin  batch size and sequence length (for tokens seen)
  finetune/summary.json         ``tasks: {task: [{seed, validation: {..., main}}, ...]}``
  measures.json                 the study's measure script's numbers (if it has one)
  attempts.jsonl                the runner's own wall time per command run
"""

from __future__ import annotations

import ast
import json
import math
import pathlib
from typing import Any, Optional

from studylib.jsonl import read_jsonl
from studylib.plan import Job


class CollectError(RuntimeError):
  """A finished run's files are missing or not in the expected format."""


def loss_curves(metrics_path: pathlib.Path) -> dict[str, list[list[float]]]:
  """``{"train": [[step, loss], ...], "eval": [...]}``, by step; a resumed run's repeated step keeps its last value."""
  curves: dict[str, dict[int, float]] = {"train": {}, "eval": {}}
  for record in read_jsonl(metrics_path):
    for kind in curves:
      value = record.get(f"{kind}/loss")
      if value is not None and "step" in record and math.isfinite(float(value)):
        curves[kind][int(record["step"])] = float(value)
  return {kind: [[step, loss] for step, loss in sorted(points.items())]
          for kind, points in curves.items()}


def final_eval_metrics(metrics_path: pathlib.Path) -> dict[str, float]:
  """``{"eval/<name>": value}`` of the last evaluation record (the highest step)."""
  last: dict[str, float] = {}
  last_step = -1
  for record in read_jsonl(metrics_path):
    values = {k: float(v) for k, v in record.items()
              if k.startswith("eval/") and isinstance(v, (int, float))}
    if values and int(record.get("step", -1)) >= last_step:
      last_step, last = int(record.get("step", -1)), values
  return last


def measures(path: pathlib.Path) -> dict[str, float]:
  """``{"measure/<name>": value}`` from a measure script's JSON object of numbers."""
  data = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(data, dict):
    raise CollectError(f"{path} must hold a JSON object of numbers, found {type(data).__name__}.")
  return {f"measure/{k}": float(v) for k, v in data.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def operative_values(path: pathlib.Path) -> dict[str, Any]:
  """Single-line ``NAME = literal`` bindings of a config.operative.gin, with %MACROs resolved."""
  raw: dict[str, str] = {}
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      if line.startswith((" ", "#", "\t")) or " = " not in line:
        continue
      name, _, value = line.partition(" = ")
      raw[name.strip()] = value.strip()
  values: dict[str, Any] = {}
  for name, text in raw.items():
    for _ in range(5):  # macro chains are short
      if text.startswith("%") and text[1:] in raw:
        text = raw[text[1:]]
    try:
      values[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      values[name] = text
  return values


def pretrain_tokens(config: dict[str, Any], final_step: int) -> Optional[int]:
  """Tokens seen (nominal: steps x global batch size x sequence length, padding included).

  Encoder-decoder runs count input plus target length (``task_feature_lengths``).
  """
  batch = config.get("TrainConfig.batch_size")
  length = config.get("DataConfig.sequence_length")
  lengths = config.get("DataConfig.task_feature_lengths")
  if isinstance(lengths, dict) and lengths:
    length = sum(int(v) for v in lengths.values())
  if not isinstance(batch, int) or not isinstance(length, int):
    return None
  return int(final_step) * batch * length


def stage_seconds(job: Job) -> dict[str, float]:
  """Wall seconds per stage, summed over every attempt (an interrupted attempt counts too)."""
  seconds = {"pretrain": 0.0, "measure": 0.0, "finetune": 0.0}
  for attempt in read_jsonl(job.directory / "attempts.jsonl"):
    if attempt.get("stage") in seconds:
      seconds[attempt["stage"]] += float(attempt.get("seconds", 0.0))
  return seconds


def finetune_scores(summary_path: pathlib.Path) -> dict[str, list[dict]]:
  """Per task, per fine-tuning seed: ``{"seed", "main", "metrics": {...}}`` from summary.json."""
  if not summary_path.exists():
    raise CollectError(f"{summary_path} is missing: the fine-tuning run did not finish.")
  summary = json.loads(summary_path.read_text(encoding="utf-8"))
  tasks = summary.get("tasks")
  if not isinstance(tasks, dict) or not tasks:
    raise CollectError(f"{summary_path} has no 'tasks' with results.")
  scores = {}
  for task, runs in tasks.items():
    scores[task] = []
    for run in runs:
      validation = run.get("validation") or {}
      if "main" not in validation:
        raise CollectError(f"{summary_path}: task {task} seed {run.get('seed')} has no "
                           "validation 'main' score.")
      scores[task].append({"seed": run.get("seed"), "main": float(validation["main"]),
                           "metrics": {k: float(v) for k, v in validation.items() if k != "main"}})
  return scores


def collect_job(job: Job) -> dict:
  """The result of a finished job (what result.json holds)."""
  metrics_path = job.pretrain_dir / "metrics.jsonl"
  curves = loss_curves(metrics_path)
  if not curves["train"] and not curves["eval"]:
    raise CollectError(f"{metrics_path} has no train/loss or eval/loss records.")
  final_kind = "eval" if curves["eval"] else "train"
  final_step = max(point[0] for kind in curves.values() for point in kind)
  config = operative_values(job.pretrain_dir / "config.operative.gin")
  metrics = final_eval_metrics(metrics_path)
  if job.measure_command is not None:
    metrics.update(measures(job.measures_path))
  finetune = None
  seconds = stage_seconds(job)
  if job.finetune_command is not None:
    scores = finetune_scores(job.finetune_dir / "summary.json")
    task_main = {task: sum(r["main"] for r in runs) / len(runs) for task, runs in scores.items()}
    finetune = {"scores": scores, "task_main": task_main,
                "average": sum(task_main.values()) / len(task_main),
                "wall_seconds": seconds["finetune"]}
  calibration = None
  if job.calibration is not None and job.calibration.result_path.exists():
    calibration = json.loads(job.calibration.result_path.read_text(encoding="utf-8"))
  return {
      "arm": job.arm,
      "seed": job.seed,
      "pretrain": {
          "final_step": int(final_step),
          "tokens": pretrain_tokens(config, final_step),
          "final_loss": curves[final_kind][-1][1],
          "final_loss_split": final_kind,
          "curves": curves,
          "wall_seconds": seconds["pretrain"],
          "calibration": calibration,
      },
      "metrics": metrics,
      "finetune": finetune,
      "wall_seconds": sum(seconds.values()),
      "commands": {"pretrain": job.pretrain_command, "measure": job.measure_command,
                   "finetune": job.finetune_command},
  }
