"""The plan: for every arm x pretraining seed, its folders and lmlab CLI commands.

Layout under the output folder::

  runs/<arm>/calibration/           equal-wall-clock studies: the arm's step-rate run
  runs/<arm>/seed_<s>/pretrain/     MODEL_DIR of the pretraining run
  runs/<arm>/seed_<s>/measures.json what the study's measure script wrote (if any)
  runs/<arm>/seed_<s>/finetune/     MODEL_DIR of the fine-tuning run (all tasks, all seeds)
  runs/<arm>/seed_<s>/attempts.jsonl  one line per command run: stage, seconds, exit status
  runs/<arm>/seed_<s>/*.log         each stage's stdout/stderr
  runs/<arm>/seed_<s>/result.json   written when both stages are done: the job is finished
  results/                          results.json, results.md, *.png
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any, Optional, Sequence

from studylib.calibrate import Calibration
from studylib.config import NETWORK_PREFIXES, Study, StudyError, as_flags

RESULT_FILE = "result.json"


@dataclasses.dataclass(frozen=True)
class Job:
  """One arm x pretraining seed: pretrain, measure, then fine-tune with every fine-tuning seed.

  ``measure_command`` and ``finetune_command`` are None when the study has no
  measure script or no fine-tuning tasks; ``calibration`` is set in
  equal-wall-clock studies (the step count is added to the pretraining
  command once the arm's calibration has run).
  """
  arm: str
  seed: int
  directory: pathlib.Path
  pretrain_command: list[str]
  finetune_command: Optional[list[str]]
  measure_command: Optional[list[str]] = None
  calibration: Optional[Calibration] = None

  @property
  def pretrain_dir(self) -> pathlib.Path:
    return self.directory / "pretrain"

  @property
  def finetune_dir(self) -> pathlib.Path:
    return self.directory / "finetune"

  @property
  def measures_path(self) -> pathlib.Path:
    return self.directory / "measures.json"

  @property
  def result_path(self) -> pathlib.Path:
    return self.directory / RESULT_FILE

  @property
  def key(self) -> str:
    return f"{self.arm}/seed_{self.seed}"


def _gin_string(value: str) -> str:
  return repr(str(value))


def build_plan(study: Study, out_dir: pathlib.Path, *, study_dir: pathlib.Path,
               only: Optional[Sequence[str]] = None, python: str = sys.executable) -> list[Job]:
  """Every job of the study (or of the arms in ``only``), in arm then seed order.

  ``study_dir`` joins lmlab's gin search path, so a study can ship gin files
  of its own next to study.gin.
  """
  arms = [study.arm(name) for name in only] if only else list(study.arms)
  base = [python, "-m", "lmlab.main", f"--gin_search_paths={study_dir}"]
  jobs = []
  for arm in arms:
    pretrain_bindings: dict[str, Any] = study.pretrain_bindings_for(arm)
    network = {k: v for k, v in pretrain_bindings.items() if k.startswith(NETWORK_PREFIXES)}
    arm_pretrain = [*base, "--run_mode=train", *[f"--gin_file={f}" for f in arm.gin_files],
                    *as_flags(pretrain_bindings)]
    calibration = None
    if study.wall_clock_seconds is not None:
      calibration = Calibration.for_arm(arm_pretrain, out_dir / "runs" / arm.name / "calibration",
                                        study.wall_clock_seconds, study.calibration_steps)
    for seed in study.pretrain_seeds:
      directory = out_dir / "runs" / arm.name / f"seed_{seed}"
      pretrain_dir, finetune_dir = directory / "pretrain", directory / "finetune"
      pretrain = [*arm_pretrain,
                  *as_flags({"TrainConfig.seed": seed, "DataConfig.seed": seed}),
                  f"--gin.MODEL_DIR={_gin_string(pretrain_dir)}"]
      finetune = None
      if study.finetunes:
        finetune_files = [*arm.model_gin_files(), *study.finetune_gin_files]
        finetune = [*base, "--run_mode=finetune", *[f"--gin_file={f}" for f in finetune_files],
                    *as_flags(network), *as_flags(study.finetune_bindings),
                    *as_flags(arm.finetune_bindings),
                    *as_flags({"FinetuneConfig.tasks": list(study.finetune_tasks),
                               "FinetuneConfig.seeds": list(study.finetune_seeds)}),
                    f"--gin.PRETRAINED_DIR={_gin_string(pretrain_dir)}",
                    f"--gin.MODEL_DIR={_gin_string(finetune_dir)}",
                    f"--init_checkpoint={pretrain_dir}"]
      measure = None
      if study.measure_script:
        script = (study_dir / study.measure_script).resolve()
        if not script.is_file():
          raise StudyError(f"Study.measure_script {study.measure_script!r} is not a file in "
                           f"{study_dir}.")
        measure = [python, str(script), f"--model_dir={pretrain_dir}",
                   f"--out={directory / 'measures.json'}"]
      jobs.append(Job(arm.name, seed, directory, pretrain, finetune, measure, calibration))
  return jobs
