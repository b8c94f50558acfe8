"""The study definition: gin-bound ``Study``, ``Arm`` and ``Quick`` configs.

A study file (``experiments/<study>/study.gin``) binds these, e.g.::

  Study.name = 'bigs_vs_bert'
  Study.arms = [@bert/Arm(), @bigs/Arm()]
  bert/Arm.name = 'bert'
  bert/Arm.gin_files = ['models/tiny.gin', 'runs/quickstart.gin']

Gin is used here only to *describe* the study; the runs themselves are lmlab
CLI subprocesses, which parse their own gin files. Bindings are dicts of
gin name -> value and become ``--gin.NAME=VALUE`` flags (``render_value``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Optional, Sequence

import gin

# A binding value that is a string starting with one of these is a gin
# expression (reference, macro or list of references), written verbatim.
GIN_EXPRESSION_PREFIXES = ("@", "%", "[@", "(@")
# Pretraining bindings with these prefixes configure the network, so the
# fine-tuning run (which rebuilds the network) gets them too.
NETWORK_PREFIXES = ("EncoderConfig.", "T5Config.")
ARM_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class StudyError(ValueError):
  """A study definition cannot be used; the message says what to fix."""


def render_value(value: Any) -> str:
  """A binding value as gin text: gin expressions verbatim, anything else as its repr.

  ``300`` -> ``300``, ``'bigs'`` -> ``'bigs'``, ``['a']`` -> ``['a']``,
  ``'@FileTask()'`` -> ``@FileTask()`` (a reference, not a string).
  """
  if isinstance(value, str) and value.lstrip().startswith(GIN_EXPRESSION_PREFIXES):
    return value.strip()
  return repr(value)


def as_flags(bindings: Mapping[str, Any]) -> list[str]:
  """``{'TRAIN_STEPS': 300}`` -> ``['--gin.TRAIN_STEPS=300']`` (in dict order)."""
  return [f"--gin.{name}={render_value(value)}" for name, value in bindings.items()]


@gin.configurable(module="studies")
@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm of a study: a pretraining recipe.

  Attributes:
    name: Folder-safe name (letters, digits, ``_-.``); runs go to ``runs/<name>/``.
    gin_files: The pretraining run's gin files (lmlab search path, or the
      study folder for study-local files), in order.
    bindings: The pretraining run's gin bindings (over the study's shared
      ``pretrain_bindings``).
    finetune_gin_files: Gin files that rebuild this arm's network for
      fine-tuning. None: the ``models/...`` files of ``gin_files``.
    finetune_bindings: Extra fine-tuning bindings of this arm (over the study's).
    baseline: Another arm this one is compared with seed by seed (paired
      differences of loss, score and reported metrics, with bootstrap
      intervals), e.g. BitNet against the float model of the same size.
  """
  name: str = gin.REQUIRED
  gin_files: Sequence[str] = gin.REQUIRED
  bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune_gin_files: Optional[Sequence[str]] = None
  finetune_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  baseline: Optional[str] = None

  def model_gin_files(self) -> list[str]:
    """The gin files fine-tuning includes to rebuild the pretrained network."""
    if self.finetune_gin_files is not None:
      return list(self.finetune_gin_files)
    return [f for f in self.gin_files if f.startswith("models/")]


@gin.configurable(module="studies")
@dataclasses.dataclass(frozen=True)
class Quick:
  """What ``--quick`` changes: tiny steps and sizes, fewer seeds (a smoke run).

  Bindings are merged over the study's (quick wins); a field left None keeps
  the study's value.
  """
  pretrain_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  pretrain_seeds: Optional[Sequence[int]] = None
  finetune_seeds: Optional[Sequence[int]] = None
  finetune_tasks: Optional[Sequence[str]] = None
  finetune_gin_files: Optional[Sequence[str]] = None
  wall_clock_seconds: Optional[float] = None
  calibration_steps: Optional[int] = None


@gin.configurable(module="studies")
@dataclasses.dataclass(frozen=True)
class Study:
  """A claim, tested by pretraining every arm with every pretraining seed, then fine-tuning.

  Attributes:
    name: The study's name (its folder under ``experiments/``).
    claim: The claim being tested, in words (copied into results.md).
    arms: The pretraining recipes compared.
    pretrain_seeds: One pretraining run per arm and seed (``TrainConfig.seed``
      and ``DataConfig.seed``: init, dropout, data order, masking).
    pretrain_bindings: Bindings shared by every arm (e.g. the token budget:
      ``TRAIN_STEPS``, ``BATCH_SIZE``, ``SEQUENCE_LENGTH``); an arm's own win.
    finetune_gin_files: The fine-tuning recipe (after the arm's model files).
    finetune_bindings: Fine-tuning bindings shared by every arm.
    finetune_tasks: ``FinetuneConfig.tasks`` of every fine-tuning run.
    finetune_seeds: ``FinetuneConfig.seeds``: fine-tunes per pretrained checkpoint.
    quick: The ``--quick`` override (None: ``--quick`` is refused).
    measure_script: A Python file in the study folder run after each
      pretraining as ``python <script> --model_dir=<pretrain dir> --out=<json>``;
      it writes a JSON object of numbers (e.g. packed weight bytes, encoder
      speed-up), reported as ``measure/<name>``. None: no measure stage.
    report_metrics: Extra columns of the table, each a final evaluation metric
      of pretraining (``eval/<name>``, e.g. ``eval/deletion_rate``) or a
      measure (``measure/<name>``); mean and bootstrap interval over seeds.
    wall_clock_seconds: Equal wall-clock instead of equal steps: each arm first
      runs ``calibration_steps`` steps to measure its step rate, then every
      seed trains ``TRAIN_STEPS = rate x wall_clock_seconds`` steps (so its
      learning-rate schedule completes) with ``TrainConfig.time_budget_seconds``
      as a hard cap. None: the bound ``TRAIN_STEPS``.
    calibration_steps: Steps of the calibration run (its first quarter, with
      compilation, is not timed).
  """
  name: str = gin.REQUIRED
  claim: str = ""
  arms: Sequence[Arm] = gin.REQUIRED
  pretrain_seeds: Sequence[int] = (0,)
  pretrain_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune_gin_files: Sequence[str] = ("finetune/glue.gin",)
  finetune_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune_tasks: Sequence[str] = ("offline",)
  finetune_seeds: Sequence[int] = (0,)
  quick: Optional[Quick] = None
  measure_script: Optional[str] = None
  report_metrics: Sequence[str] = ()
  wall_clock_seconds: Optional[float] = None
  calibration_steps: int = 40

  def __post_init__(self):
    if not self.arms:
      raise StudyError(f"Study {self.name!r} has no arms: bind Study.arms = [@name/Arm(), ...].")
    names = [arm.name for arm in self.arms]
    for name in names:
      if not name or not set(name) <= ARM_NAME_CHARS:
        raise StudyError(f"Arm name {name!r} must be letters, digits, '_', '-' or '.' "
                         "(it names a folder).")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise StudyError(f"Study {self.name!r} has arms with the same name: {duplicates}; give "
                       "each scoped Arm its own name (e.g. bert/Arm.name = 'bert').")
    for field in ("pretrain_seeds", "finetune_seeds"):
      if not list(getattr(self, field)):
        raise StudyError(f"Study.{field} is empty.")
    for arm in self.arms:
      if arm.baseline is not None and arm.baseline not in names:
        raise StudyError(f"Arm {arm.name!r} has baseline {arm.baseline!r}, which is not an arm of "
                         f"the study; its arms: {names}.")
    for metric in self.report_metrics:
      if not metric.startswith(("eval/", "measure/")):
        raise StudyError(f"Study.report_metrics entry {metric!r} must be 'eval/<name>' (a final "
                         "pretraining evaluation metric) or 'measure/<name>' (from the measure "
                         "script).")
      if metric.startswith("measure/") and not self.measure_script:
        raise StudyError(f"Study.report_metrics names {metric!r} but Study.measure_script is not "
                         "set.")
    if self.wall_clock_seconds is not None and not self.wall_clock_seconds > 0:
      raise StudyError(f"Study.wall_clock_seconds={self.wall_clock_seconds} must be positive.")
    if self.calibration_steps < 8:
      raise StudyError(f"Study.calibration_steps={self.calibration_steps} is too few to time "
                       "(use at least 8).")

  @property
  def finetunes(self) -> bool:
    """Whether checkpoints are fine-tuned (a pretraining-only study has no tasks)."""
    return bool(list(self.finetune_tasks))

  def arm(self, name: str) -> Arm:
    for arm in self.arms:
      if arm.name == name:
        return arm
    raise StudyError(f"Study {self.name!r} has no arm {name!r}; its arms: "
                     f"{[a.name for a in self.arms]}.")

  def quick_version(self) -> "Study":
    """This study with its ``quick`` override applied (for ``--quick``)."""
    q = self.quick
    if q is None:
      raise StudyError(f"Study {self.name!r} has no quick override: bind Study.quick = @Quick() "
                       "and Quick.pretrain_bindings etc. to use --quick.")
    keep = lambda new, old: old if new is None else new
    return dataclasses.replace(
        self,
        pretrain_bindings={**self.pretrain_bindings, **q.pretrain_bindings},
        finetune_bindings={**self.finetune_bindings, **q.finetune_bindings},
        pretrain_seeds=tuple(keep(q.pretrain_seeds, self.pretrain_seeds)),
        finetune_seeds=tuple(keep(q.finetune_seeds, self.finetune_seeds)),
        finetune_tasks=tuple(keep(q.finetune_tasks, self.finetune_tasks)),
        finetune_gin_files=tuple(keep(q.finetune_gin_files, self.finetune_gin_files)),
        wall_clock_seconds=keep(q.wall_clock_seconds, self.wall_clock_seconds),
        calibration_steps=keep(q.calibration_steps, self.calibration_steps),
        quick=None)

  def pretrain_bindings_for(self, arm: Arm) -> dict[str, Any]:
    """Shared pretraining bindings, then the arm's own (later wins)."""
    return {**self.pretrain_bindings, **arm.bindings}

  def to_json(self) -> dict:
    """Plain data (for results.json)."""
    return dataclasses.asdict(self)


def find_study_file(study: str, experiments_dir: pathlib.Path) -> pathlib.Path:
  """``bigs_vs_bert`` -> ``experiments/bigs_vs_bert/study.gin``; a .gin path or folder as is."""
  candidates = []
  path = pathlib.Path(study)
  if path.suffix == ".gin":
    candidates.append(path)
  else:
    candidates += [path / "study.gin", experiments_dir / study / "study.gin"]
  for candidate in candidates:
    if candidate.is_file():
      return candidate.resolve()
  raise StudyError(f"No study file for {study!r}; looked at {[str(c) for c in candidates]}. "
                   "A study is experiments/<name>/study.gin.")


def load_study(path: pathlib.Path, bindings: Sequence[str] = ()) -> Study:
  """Parses a study gin file (plus extra bindings such as ``Study.finetune_seeds = [0]``).

  Gin's global config is cleared before and after, so loading a study never
  leaks into (or picks up) other gin state of the process.
  """
  gin.clear_config()
  gin.add_config_file_search_path(str(path.parent))
  try:
    gin.parse_config_files_and_bindings([str(path)], list(bindings), finalize_config=False,
                                        skip_unknown=False)
    study = Study()
  except (ValueError, TypeError, SyntaxError, KeyError) as e:
    if isinstance(e, StudyError):
      raise
    raise StudyError(f"Cannot read study {path}: {e}") from e
  finally:
    gin.clear_config()
  return study
