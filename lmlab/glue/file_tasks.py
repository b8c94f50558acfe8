"""Fine-tuning tasks of a researcher's own labelled CSV, TSV or JSON-lines files.

A :class:`FileTask` describes the files (train, validation and optionally
test), which columns hold the text and the label, and how the task is
scored. It becomes a ``TaskSpec`` of benchmark ``file`` in the task table
(``lmlab.glue.spec``) and seqio tasks in every format
(``lmlab.glue.tasks.register_file_tasks``), so fine-tuning treats it exactly
like a GLUE task: the same heads, seeds, best checkpoint, summary, and
prediction files in the leaderboard folder (``<name>.tsv`` for the test
split, ``<name>.validation.tsv`` for the validation split).

Examples carry the text fields, the label (a class id, or a float for
regression; -1 / NaN where a test file has no label) and ``idx``: the
``id_field`` value when every id of the file is an integer, else the
0-based position of the record in its file.

Everything in the files is checked when a run starts, before any training,
and every problem names the file and the 1-based data row (CSV/TSV) or line
(JSON lines) to look at.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Iterable, Optional, Sequence

from lmlab.glue import file_examples, file_readers
from lmlab.glue import spec as glue_spec
from lmlab.glue.file_examples import FileExample

logger = logging.getLogger(__name__)

KINDS = ("classification", "regression")
# The metrics of lmlab.glue.metrics that score a single-label task, per kind.
KIND_METRICS = {"classification": ("accuracy", "f1", "macro_f1", "matthews_corrcoef"),
                "regression": ("pearson", "spearman")}
AVERAGE = "average"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class FileTaskError(ValueError):
  """A file task's configuration or files cannot be used; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class FileTask:
  """A fine-tuning task read from labelled CSV / TSV / JSON-lines files (gin: ``@FileTask()``).

  Fine-tune it by naming it in ``FinetuneConfig.tasks`` and defining it in
  ``FinetuneConfig.file_tasks`` (see ``gin/finetune/file_task_example.gin``)::

    FinetuneConfig.tasks = ['reviews']
    FinetuneConfig.file_tasks = [@FileTask()]
    FileTask.name = 'reviews'
    FileTask.train = '/data/reviews/train.csv'
    FileTask.validation = '/data/reviews/dev.csv'
    FileTask.test = '/data/reviews/test.csv'
    FileTask.label_names = ['neg', 'pos']

  Several file tasks use gin scopes: ``[@reviews/FileTask(), @nli/FileTask()]``.

  Attributes:
    name: The task's name (letters, digits, ``_``); seqio tasks
      ``lmlab.<name>``, ``lmlab.<name>_t2t``, ... and the run folder use it.
    train, validation: The labelled files (validation picks the best checkpoint).
    test: An optional file to predict; its labels may be absent.
    format: ``auto`` (each file by its extension: ``.csv``, ``.tsv``,
      ``.jsonl``) or ``csv``/``tsv``/``jsonl`` for every file.
    text_fields: One column (single sentence) or two (sentence A and B).
    label_field: The label column.
    kind: ``classification`` or ``regression`` (float labels).
    label_names: Classification: the classes, in class-id order. A label in
      a file is one of these names, or else an integer index into them. None:
      the sorted distinct labels of the training file (numerically sorted
      when all are integers; logged).
    metrics: Names from ``KIND_METRICS`` (as in ``lmlab.glue.metrics``). None:
      accuracy (and binary F1 of class 1 when there are two classes) for
      classification, Pearson and Spearman for regression.
    main_metric: The score that picks the best checkpoint (added to the
      default metrics when ``metrics`` is None). None: the metric when there
      is one, else ``average`` (their mean), as on GLUE.
    id_field: An optional id column. When every id of a file is an integer it
      is the example's index in prediction files; otherwise the index is the
      record's 0-based position and the id gets a column of its own.
    data_dir: Where relative ``train``/``validation``/``test`` paths are
      (None: relative to the working directory).
  """
  name: str
  train: str
  validation: str
  test: Optional[str] = None
  format: str = "auto"
  text_fields: Sequence[str] = ("sentence",)
  label_field: str = "label"
  kind: str = "classification"
  label_names: Optional[Sequence[str]] = None
  metrics: Optional[Sequence[str]] = None
  main_metric: Optional[str] = None
  id_field: Optional[str] = None
  data_dir: Optional[str] = None
  _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

  def __post_init__(self):
    for field in ("text_fields", "label_names", "metrics"):
      value = getattr(self, field)
      if isinstance(value, str):
        value = (value,)
      if value is not None:
        object.__setattr__(self, field, tuple(str(v) for v in value))
    self._check_config()

  def error(self, message: str) -> FileTaskError:
    """An error about this task, naming it."""
    return FileTaskError(f"FileTask {self.name!r}: {message}")

  def _check_config(self) -> None:
    """Refuses a configuration that cannot work, before any file is read."""
    if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
      raise FileTaskError(f"FileTask name {self.name!r} must start with a letter and hold only "
                          "letters, digits and '_'.")
    if self.name in glue_spec.BUILTIN_TASKS or self.name in (glue_spec.GLUE, glue_spec.SUPER_GLUE):
      raise self.error("that is a built-in GLUE/SuperGLUE name; give your task another name.")
    if self.name.endswith(("_t2t", "_bytes")):
      raise self.error("a name must not end in a format suffix ('_t2t', '_bytes').")
    if self.kind not in KINDS:
      raise self.error(f"kind {self.kind!r} is not one of {KINDS}.")
    for split, path in self.paths().items():
      if not isinstance(path, str) or not path:
        raise self.error(f"FileTask.{split} must be a file path, got {path!r}.")
    if self.format != "auto" and self.format not in file_readers.FORMATS:
      raise self.error(f"format {self.format!r} is not one of {('auto',) + file_readers.FORMATS}.")
    if not 1 <= len(self.text_fields) <= 2 or len(set(self.text_fields)) != len(self.text_fields):
      raise self.error(f"text_fields={self.text_fields} must name one column (a single sentence) "
                       "or two different ones (sentence A and B).")
    clash = {self.label_field, self.id_field} & set(self.text_fields)
    if clash or self.label_field == self.id_field:
      raise self.error(f"the text, label and id fields must be different columns; "
                       f"{sorted(clash) or [self.label_field]} is used twice.")
    if self.kind == "regression" and self.label_names:
      raise self.error(f"a regression task has float labels, not label_names={self.label_names}; "
                       "remove label_names or use kind='classification'.")
    if self.label_names is not None:
      self._check_label_names(self.label_names)
    valid = KIND_METRICS[self.kind]
    unknown = [m for m in self.metrics or () if m not in valid]
    if unknown:
      raise self.error(f"unknown {self.kind} metric(s) {unknown}; the valid ones are "
                       f"{list(valid)}.")
    if self.metrics == ():
      raise self.error("metrics is empty; leave it None for the defaults or name some of "
                       f"{list(valid)}.")
    if self.main_metric is not None and self.metrics is not None and (
        self.main_metric not in self.metrics + (AVERAGE,)):
      raise self.error(f"main_metric {self.main_metric!r} is not one of the metrics "
                       f"{list(self.metrics)} or {AVERAGE!r} (their mean).")
    if self.main_metric is not None and self.metrics is None and (
        self.main_metric not in valid + (AVERAGE,)):
      raise self.error(f"main_metric {self.main_metric!r} is not one of "
                       f"{list(valid + (AVERAGE,))}.")

  def _check_label_names(self, names: Sequence[str]) -> None:
    if len(names) < 2:
      raise self.error(f"a classification task needs at least two classes, got {list(names)}.")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
      raise self.error(f"label_names repeats {repeated}.")
    bad = [n for n in names if not n.strip() or n != n.strip() or any(c in n for c in "\t\r\n")]
    if bad:
      raise self.error(f"label names must be non-empty, with no surrounding spaces, tabs or line "
                       f"breaks: {bad}.")

  # -------------------------------------------------------------------------
  # Files

  def paths(self) -> dict[str, str]:
    """Split name -> file, for the splits this task has (train, validation, maybe test)."""
    out = {"train": self.train, "validation": self.validation}
    if self.test is not None:
      out["test"] = self.test
    if self.data_dir:
      out = {split: path if not isinstance(path, str) or os.path.isabs(path) or "://" in path
             else os.path.join(self.data_dir, path) for split, path in out.items()}
    return out

  def _table(self, split: str) -> file_readers.Table:
    key = ("table", split)
    if key not in self._cache:
      path = self.paths().get(split)
      if path is None:
        raise self.error(f"has no {split!r} split; it has {list(self.paths())}.")
      self._cache[key] = file_readers.read_table(
          path, self.format, what=f"FileTask {self.name!r}: the {split} file")
    return self._cache[key]

  def resolved_label_names(self) -> tuple[str, ...]:
    """``label_names``, or for classification without them the training file's sorted labels."""
    if self.kind == "regression":
      return ()
    if self.label_names is not None:
      return tuple(self.label_names)
    if "label_names" not in self._cache:
      names = file_examples.infer_label_names(self, self._table("train"))
      self._check_label_names(names)
      logger.info("FileTask %r: label names inferred from %s: %s (class ids in that order; set "
                  "FileTask.label_names to choose them).", self.name, self.paths()["train"],
                  list(names))
      self._cache["label_names"] = names
    return self._cache["label_names"]

  def examples(self, split: str) -> list[FileExample]:
    """Every example of a split, read and checked once (then kept: the files are small)."""
    key = ("examples", split)
    if key not in self._cache:
      rows, integer_ids = file_examples.read_examples(self, self._table(split), split,
                                                      self.resolved_label_names())
      self._cache[key], self._cache[("integer_ids", split)] = rows, integer_ids
    return self._cache[key]

  def integer_ids(self, split: str) -> bool:
    """Whether the examples of ``split`` are indexed by their ``id_field`` value."""
    self.examples(split)
    return self._cache[("integer_ids", split)]

  def check(self) -> dict[str, int]:
    """Reads and checks every file now (before any training); returns examples per split."""
    counts = {split: len(self.examples(split)) for split in self.paths()}
    logger.info("FileTask %r: %s examples%s.", self.name,
                ", ".join(f"{n} {split}" for split, n in counts.items()),
                f"; classes {list(self.resolved_label_names())}" if self.kind == "classification"
                else "")
    return counts

  # -------------------------------------------------------------------------
  # The task table

  def spec(self) -> glue_spec.TaskSpec:
    """The task's ``TaskSpec`` (benchmark ``file``); reads the training file to infer labels."""
    names = self.resolved_label_names()
    metrics = self.metrics
    if metrics is None:
      metrics = (("accuracy", "f1") if len(names) == 2 else ("accuracy",)) \
          if self.kind == "classification" else ("pearson", "spearman")
      if self.main_metric not in (None, AVERAGE) and self.main_metric not in metrics:
        metrics += (self.main_metric,)  # the default metrics, and the one asked to rank by
    if "f1" in metrics and len(names) != 2:
      raise self.error(f"'f1' is the binary F1 of class 1, but the task has {len(names)} classes "
                       f"{list(names)}; use 'macro_f1'.")
    main = self.main_metric or (metrics[0] if len(metrics) == 1 else AVERAGE)
    splits = ("test",) if self.test is not None else ()
    files = (f"{self.name}.tsv",) if self.test is not None else ()
    return glue_spec.TaskSpec(
        name=self.name, benchmark=glue_spec.FILE, tfds_name="", kind=self.kind,
        text_fields=tuple(self.text_fields), label_names=names, metrics=tuple(metrics),
        main_metric=main, leaderboard_files=files + (f"{self.name}.validation.tsv",),
        leaderboard_labels="name", train_split="train", validation_splits=("validation",),
        test_splits=splits + ("validation",))


_REGISTRY: dict[str, FileTask] = {}


def register(task: FileTask) -> glue_spec.TaskSpec:
  """Adds ``task``'s spec to the task table (replacing an earlier task of that name)."""
  spec = glue_spec.register_spec(task.spec())
  _REGISTRY[task.name] = task
  return spec


def registered(name: str) -> FileTask:
  """The registered file task ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f"No file task {name!r} is registered; known: {sorted(_REGISTRY)}.")
  return _REGISTRY[name]


def select(file_tasks: Sequence[FileTask], names: Optional[Iterable[str]]) -> list[FileTask]:
  """The file tasks that ``names`` lists (all of them when None), checked to be FileTasks."""
  by_name: dict[str, FileTask] = {}
  for task in file_tasks or ():
    if not isinstance(task, FileTask):
      raise ValueError(f"FinetuneConfig.file_tasks holds {task!r}, not a FileTask: use "
                       "[@FileTask()] (gin) or FileTask(...).")
    if task.name in by_name:
      raise ValueError(f"FinetuneConfig.file_tasks defines {task.name!r} twice; use gin scopes "
                       "for several tasks: [@a/FileTask(), @b/FileTask()].")
    by_name[task.name] = task
  if names is None:
    return list(by_name.values())
  return [by_name[n] for n in dict.fromkeys(names) if n in by_name]


def register_specs(file_tasks: Sequence[FileTask], names: Iterable[str]) -> list[str]:
  """Registers the specs of the file tasks that ``names`` lists; returns their names."""
  return [register(task).name for task in select(file_tasks, names)]
