"""One study end to end: load, plan, run what is missing, summarise, write tables and plots."""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
from typing import Callable, Optional, Sequence

from studylib import config as study_config
from studylib import execute, plan, plots, stats, table

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent
REPO_ROOT = EXPERIMENTS_DIR.parent


@dataclasses.dataclass
class StudyReport:
  """What one invocation did (returned to tests; the CLI prints it)."""
  study: study_config.Study
  out_dir: pathlib.Path
  jobs: list[plan.Job]
  outcomes: list[execute.JobOutcome]
  files: dict[str, pathlib.Path]

  @property
  def failed(self) -> list[execute.JobOutcome]:
    return [o for o in self.outcomes if o.status == "failed"]

  @property
  def skipped(self) -> list[str]:
    return [o.key for o in self.outcomes if o.status == "skipped"]


def default_out_dir(study_file: pathlib.Path, quick: bool) -> pathlib.Path:
  """``experiments/<study>/`` (``.../quick/`` for --quick, so smoke runs never mix with real ones)."""
  return study_file.parent / "quick" if quick else study_file.parent


def run_study(study_name: str, *, quick: bool = False, out_dir: Optional[pathlib.Path] = None,
              only: Sequence[str] = (), dry_run: bool = False, bindings: Sequence[str] = (),
              parallel: int = 1, executor: Optional[execute.Executor] = None,
              log: Callable[[str], None] = print) -> StudyReport:
  """Runs (or, ``dry_run``, prints) a study's missing jobs, then writes its results from every finished job.

  ``executor`` runs one command (default: a subprocess, logging to the job's
  folder); tests inject a fake one.
  """
  study_file = study_config.find_study_file(study_name, EXPERIMENTS_DIR)
  study = study_config.load_study(study_file, bindings)
  if quick:
    study = study.quick_version()
  out_dir = (out_dir or default_out_dir(study_file, quick)).resolve()
  jobs = plan.build_plan(study, out_dir, study_dir=study_file.parent, only=only or None)
  finetuning = (f"fine-tuning seeds {list(study.finetune_seeds)} on {list(study.finetune_tasks)}"
                if study.finetunes else "no fine-tuning")
  log(f"Study {study.name}{' (--quick)' if quick else ''}: {len(jobs)} jobs "
      f"({len(study.arms) if not only else len(only)} arms x {len(study.pretrain_seeds)} "
      f"pretraining seeds; {finetuning}) in {out_dir}")
  if dry_run:
    outcomes = []
    for job in jobs:
      state = "done, skipped" if job.result_path.exists() else "to run"
      log(f"# {job.key} ({state})")
      if job.calibration is not None:
        log("# equal wall-clock: TRAIN_STEPS and TrainConfig.time_budget_seconds are added after "
            f"the arm's calibration run:\n{shlex.join(job.calibration.command)}")
      for command in (job.pretrain_command, job.measure_command, job.finetune_command):
        if command is not None:
          log(shlex.join(command))
      outcomes.append(execute.JobOutcome(job.key, "skipped" if state != "to run" else "planned"))
    return StudyReport(study, out_dir, jobs, outcomes, {})
  if executor is None:
    executor = execute.SubprocessExecutor(out_dir / "compilation_cache")
  outcomes = execute.run_plan(jobs, executor, REPO_ROOT, parallel=parallel, log=log)
  # The table covers every finished job of the whole study, not only those of --only.
  all_jobs = plan.build_plan(study, out_dir, study_dir=study_file.parent)
  results = execute.load_results(all_jobs)
  files: dict[str, pathlib.Path] = {}
  if results:
    arm_order = [arm.name for arm in study.arms]
    summary = stats.summarize(results, arm_order, study.report_metrics,
                              {arm.name: arm.baseline for arm in study.arms if arm.baseline})
    results_dir = out_dir / "results"
    plot_names = plots.write_plots(results_dir, results, summary, study.report_metrics)
    files = table.write_results(results_dir, study.to_json(), summary, results, quick=quick,
                                plots=plot_names, env=table.environment())
    files.update({name: results_dir / name for name in plot_names})
    if not quick and out_dir == study_file.parent.resolve():
      # A full run in the study's own folder: its README shows these results.
      table.update_readme(study_file.parent / "README.md", files["md"].read_text(encoding="utf-8"))
      files["readme"] = study_file.parent / "README.md"
    log(f"Results of {len(results)}/{len(all_jobs)} jobs: {files['md']}")
  else:
    log("No finished jobs yet: no results written.")
  return StudyReport(study, out_dir, jobs, outcomes, files)
