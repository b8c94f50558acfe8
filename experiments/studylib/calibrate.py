"""Equal wall-clock: measuring each arm's step rate, then the steps its budget buys.

A recipe compared at a fixed wall-clock budget should still finish its
learning-rate schedule inside that budget, as cramming's time-based schedule
does. So each arm first trains ``calibration_steps`` steps (same command as
its real runs, throwaway MODEL_DIR); its step rate is read from the times of
the logged training windows after the first one (which holds compilation).
Every seed of the arm then trains ``floor(rate x budget)`` steps, with
``TrainConfig.time_budget_seconds = budget`` as a hard cap in case the
machine gets slower. The measurement is kept in ``calibration.json``, so a
resumed study reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import time
from typing import Callable, Sequence

from studylib.jsonl import read_jsonl
from studylib.config import StudyError, as_flags


@dataclasses.dataclass(frozen=True)
class Calibration:
  """One arm's calibration run and the budget it converts into steps."""
  directory: pathlib.Path
  command: list[str]
  budget_seconds: float
  steps: int

  @classmethod
  def for_arm(cls, pretrain_command: Sequence[str], directory: pathlib.Path,
              budget_seconds: float, steps: int) -> "Calibration":
    log_every = max(steps // 4, 1)
    command = [*pretrain_command, *as_flags({
        "TRAIN_STEPS": steps, "TrainConfig.log_every": log_every,
        "TrainConfig.eval_every": 0, "TrainConfig.eval_steps": 1,
        "TrainConfig.checkpoint_every": steps, "TrainConfig.progress_bar": False}),
               f"--gin.MODEL_DIR={str(directory / 'run')!r}"]
    return cls(directory, command, float(budget_seconds), int(steps))

  @property
  def result_path(self) -> pathlib.Path:
    return self.directory / "calibration.json"

  def train_steps(self, steps_per_second: float) -> int:
    return max(int(steps_per_second * self.budget_seconds), 1)

  def flags(self, steps_per_second: float) -> list[str]:
    """What the arm's pretraining commands get: the step count and the hard cap."""
    return as_flags({"TRAIN_STEPS": self.train_steps(steps_per_second),
                     "TrainConfig.time_budget_seconds": self.budget_seconds})


def steps_per_second(metrics_path: pathlib.Path) -> float:
  """The median step rate of the logged training windows after the first (compilation) window."""
  points = [(int(r["step"]), float(r["time"])) for r in read_jsonl(metrics_path)
            if "train/loss" in r and "time" in r]
  points.sort()
  rates = [(s1 - s0) / (t1 - t0) for (s0, t0), (s1, t1) in zip(points[1:], points[2:]) if t1 > t0]
  if not rates:
    raise StudyError(f"{metrics_path} has too few timed training windows to measure a step rate; "
                     "raise Study.calibration_steps.")
  return statistics.median(rates)


def calibrate(calibration: Calibration, run: Callable[[list[str], pathlib.Path], int],
              log: Callable[[str], None] = print) -> dict:
  """The arm's calibration (from calibration.json, or measured now with ``run``)."""
  if calibration.result_path.exists():
    return json.loads(calibration.result_path.read_text(encoding="utf-8"))
  calibration.directory.mkdir(parents=True, exist_ok=True)
  log_path = calibration.directory / "calibration.log"
  log(f"[run]  calibration -> {log_path}")
  start = time.perf_counter()
  returncode = run(calibration.command, log_path)
  if returncode != 0:
    raise StudyError(f"The calibration run exited {returncode}; see {log_path}.")
  rate = steps_per_second(calibration.directory / "run" / "metrics.jsonl")
  result = {"steps_per_second": rate, "budget_seconds": calibration.budget_seconds,
            "train_steps": calibration.train_steps(rate), "calibration_steps": calibration.steps,
            "seconds": time.perf_counter() - start}
  calibration.result_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
  log(f"[ok]   calibration: {rate:.2f} steps/s -> {result['train_steps']} steps in "
      f"{calibration.budget_seconds:.0f} s")
  return result
