"""Running a plan resumably.

A job whose ``result.json`` exists is skipped. Otherwise each stage runs
unless an earlier attempt of it exited 0 (``attempts.jsonl``); a stage that
was interrupted is simply run again with the same command: lmlab resumes
pretraining from the newest checkpoint in its MODEL_DIR and fine-tuning from
each seed's checkpoint, skipping finished seeds. The executor is injectable
so the resume logic can be tested without running lmlab.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import threading
import time
from typing import Callable, Optional, Sequence

from studylib.calibrate import calibrate
from studylib.collect import collect_job
from studylib.config import StudyError
from studylib.jsonl import read_jsonl
from studylib.plan import Job

# (command, log file, working directory) -> exit status.
Executor = Callable[[list[str], pathlib.Path, pathlib.Path], int]
STAGES = ("pretrain", "measure", "finetune")
# One calibration per arm even when its seeds run in parallel.
_CALIBRATION_LOCKS: dict[pathlib.Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class SubprocessExecutor:
  """Runs a command in ``cwd`` with the repo on PYTHONPATH, appending its output to the log file.

  ``compilation_cache``: JAX's persistent compilation cache shared by every
  run of the study (unless JAX_COMPILATION_CACHE_DIR is already set), so
  the second seed of an arm reuses the first seed's compiled steps.
  """
  compilation_cache: Optional[pathlib.Path] = None

  def __call__(self, command: list[str], log_path: pathlib.Path, cwd: pathlib.Path) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    if self.compilation_cache is not None:
      env.setdefault("JAX_COMPILATION_CACHE_DIR", str(self.compilation_cache))
    with open(log_path, "a", encoding="utf-8") as log:
      log.write(f"\n$ {shlex.join(command)}\n")
      log.flush()
      return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode


@dataclasses.dataclass
class JobOutcome:
  """What happened to one job in this invocation."""
  key: str
  status: str  # "skipped" (had a result), "done" (finished now) or "failed"
  ran: list[str] = dataclasses.field(default_factory=list)  # stages run now
  error: Optional[str] = None


def stage_done(job: Job, stage: str) -> bool:
  """Whether an earlier attempt of ``stage`` exited 0."""
  return any(a.get("stage") == stage and a.get("returncode") == 0
             for a in read_jsonl(job.directory / "attempts.jsonl"))


def pretrain_command(job: Job, executor: Executor, repo_root: pathlib.Path,
                     log: Callable[[str], None] = print) -> list[str]:
  """The job's pretraining command; in equal-wall-clock studies with the calibrated step count."""
  cal = job.calibration
  if cal is None:
    return list(job.pretrain_command)
  with _LOCKS_LOCK:
    lock = _CALIBRATION_LOCKS.setdefault(cal.directory, threading.Lock())
  with lock:
    measured = calibrate(cal, lambda command, log_path: executor(command, log_path, repo_root), log)
  return [*job.pretrain_command, *cal.flags(measured["steps_per_second"])]


def run_job(job: Job, executor: Executor, repo_root: pathlib.Path,
            log: Callable[[str], None] = print) -> JobOutcome:
  """Runs the stages of ``job`` that are not done, then writes its result.json."""
  if job.result_path.exists():
    log(f"[skip] {job.key}: {job.result_path} exists")
    return JobOutcome(job.key, "skipped")
  job.directory.mkdir(parents=True, exist_ok=True)
  outcome = JobOutcome(job.key, "done")
  try:
    pretrain = pretrain_command(job, executor, repo_root, log)
  except StudyError as e:
    outcome.status, outcome.error = "failed", str(e)
    log(f"[fail] {job.key}: {outcome.error}")
    return outcome
  commands = {"pretrain": pretrain, "measure": job.measure_command,
              "finetune": job.finetune_command}
  for stage in STAGES:
    if commands[stage] is None:
      continue
    if stage_done(job, stage):
      log(f"[done] {job.key} {stage} (earlier attempt)")
      continue
    log_path = job.directory / f"{stage}.log"
    log(f"[run]  {job.key} {stage} -> {log_path}")
    start = time.perf_counter()
    returncode = executor(commands[stage], log_path, repo_root)
    seconds = time.perf_counter() - start
    with open(job.directory / "attempts.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps({"stage": stage, "seconds": seconds, "returncode": returncode,
                          "time": time.time()}) + "\n")
    outcome.ran.append(stage)
    if returncode != 0:
      outcome.status = "failed"
      outcome.error = f"{stage} exited {returncode}; see {log_path}"
      log(f"[fail] {job.key}: {outcome.error}")
      return outcome
    log(f"[ok]   {job.key} {stage} in {seconds:.1f} s")
  try:
    result = collect_job(job)
  except (RuntimeError, ValueError, OSError) as e:
    outcome.status, outcome.error = "failed", f"cannot collect results: {e}"
    log(f"[fail] {job.key}: {outcome.error}")
    return outcome
  tmp = job.result_path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
  tmp.replace(job.result_path)  # atomic: a result file is always complete
  return outcome


def run_plan(jobs: Sequence[Job], executor: Executor, repo_root: pathlib.Path, *,
             parallel: int = 1, log: Callable[[str], None] = print) -> list[JobOutcome]:
  """Runs every job (``parallel`` at a time); failures are reported, not raised."""
  if parallel <= 1:
    return [run_job(job, executor, repo_root, log) for job in jobs]
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    return list(pool.map(lambda job: run_job(job, executor, repo_root, log), jobs))


def load_results(jobs: Sequence[Job]) -> list[dict]:
  """The result of every finished job of the plan, in plan order.

  Read again from the run folders when they are still there (so a newer
  collector, e.g. one reporting more metrics, applies to old runs too), else
  from the job's result.json.
  """
  results = []
  for job in jobs:
    if not job.result_path.exists():
      continue
    try:
      results.append(collect_job(job))
    except (RuntimeError, ValueError, OSError):
      results.append(json.loads(job.result_path.read_text(encoding="utf-8")))
  return results
