"""What each GLUE and SuperGLUE task is: data, labels, metrics and leaderboard file.

Pure Python (no TensorFlow), the single table that the seqio task
registrations (``lmlab.glue.tasks``), the metrics
(``lmlab.glue.metrics``) and the fine-tuning run (``lmlab.glue.finetune``) all
read. Facts follow the benchmarks' own definitions: the TFDS builder configs
``glue/*`` and ``super_glue/*`` (label order = TFDS ``ClassLabel`` order, so
label ids round-trip through TFDS), the official metrics per task, and the
submission files the two leaderboards expect (GLUE: ``<Name>.tsv`` with
columns ``index``/``prediction``; SuperGLUE: ``<Name>.jsonl`` with ``idx`` and
``label``).

Researchers' own labelled files join the table as ``file`` tasks
(``lmlab.glue.file_tasks.FileTask``, added with :func:`register_spec`); the
built-in GLUE and SuperGLUE entries cannot be replaced.

Task kinds:

* ``classification``: one label per example (``label_names``).
* ``regression``: a float score (STS-B, 0 to 5).
* ``multiple_choice``: COPA; the encoder scores each (premise, choice) pair
  and the higher score wins; text-to-text generates "choice1" or "choice2".
* ``answer_scoring``: MultiRC; each (paragraph, question, answer) row is a
  true/false label, scored per answer (F1a) and per question (exact match).
* ``entity_ranking``: ReCoRD; the encoder scores each candidate entity in the
  placeholder and the best one is the prediction (F1/EM, max over gold answers);
  text-to-text generates the entity.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

GLUE = "glue"
SUPER_GLUE = "super_glue"
FILE = "file"  # a user task read from CSV/TSV/JSONL files (lmlab.glue.file_tasks)
KINDS = ("classification", "regression", "multiple_choice", "answer_scoring", "entity_ranking")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One benchmark task.

  Attributes:
    name: Short lmlab name, ``<benchmark>_<task>`` (``glue_cola``,
      ``super_glue_boolq``); the seqio task names derive from it.
    benchmark: ``glue``, ``super_glue``, or ``file`` for a task read from the
      researcher's own files (``lmlab.glue.file_tasks``).
    tfds_name: TFDS dataset ``builder/config:version`` (empty for ``file`` tasks).
    kind: One of ``KINDS``.
    text_fields: TFDS text features, in the order the encoder format packs
      them (first = sentence A, second = sentence B).
    label_names: Class names in TFDS label-id order; empty for regression and
      ReCoRD.
    metrics: Official metric names (see ``lmlab.glue.metrics.METRICS``).
    main_metric: The one used to keep the best checkpoint; for tasks with two
      metrics it is their mean, named ``"average"`` as on the leaderboards.
    train_split, validation_splits, test_splits: TFDS split names. Diagnostic
      sets (AX, AX-b, AX-g) only have ``test`` and are predicted by the model
      of ``diagnostic_of``. ``test_splits`` are the splits predicted into
      ``leaderboard_files``; a ``file`` task lists its validation split there
      too, so that its validation predictions are written beside the test ones.
    leaderboard_files: One submission file name per test split, same order.
    leaderboard_labels: How a predicted label is written in the submission
      file: ``"index"`` (the integer id), ``"name"`` (the class name), or
      ``"bool_lower"``/``"bool_title"`` (``"true"``/``"True"``).
    diagnostic_of: For diagnostics, the task whose fine-tuned model predicts it.
    train_examples: Size of the TFDS train split (the "proportional" mixing
      rate); 0 for diagnostics.
  """
  name: str
  benchmark: str
  tfds_name: str
  kind: str
  text_fields: tuple[str, ...]
  label_names: tuple[str, ...]
  metrics: tuple[str, ...]
  main_metric: str
  leaderboard_files: tuple[str, ...]
  leaderboard_labels: str = "index"
  train_split: Optional[str] = "train"
  validation_splits: tuple[str, ...] = ("validation",)
  test_splits: tuple[str, ...] = ("test",)
  diagnostic_of: Optional[str] = None
  train_examples: int = 0

  @property
  def num_classes(self) -> int:
    """Output width of an encoder head: 1 for regression and candidate scoring."""
    if self.kind == "classification":
      return len(self.label_names)
    return 1

  @property
  def is_diagnostic(self) -> bool:
    return self.diagnostic_of is not None


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")

_SPECS = [
    # ---- GLUE ------------------------------------------------------------------
    TaskSpec("glue_cola", GLUE, "glue/cola:2.0.0", "classification", ("sentence",),
             ("unacceptable", "acceptable"), ("matthews_corrcoef",), "matthews_corrcoef",
             ("CoLA.tsv",), train_examples=8551),
    TaskSpec("glue_sst2", GLUE, "glue/sst2:2.0.0", "classification", ("sentence",),
             ("negative", "positive"), ("accuracy",), "accuracy", ("SST-2.tsv",), train_examples=67349),
    TaskSpec("glue_mrpc", GLUE, "glue/mrpc:2.0.0", "classification", ("sentence1", "sentence2"),
             ("not_equivalent", "equivalent"), ("f1", "accuracy"), "average", ("MRPC.tsv",), train_examples=3668),
    TaskSpec("glue_qqp", GLUE, "glue/qqp:2.0.0", "classification", ("question1", "question2"),
             ("not_duplicate", "duplicate"), ("accuracy", "f1"), "average", ("QQP.tsv",), train_examples=363846),
    TaskSpec("glue_stsb", GLUE, "glue/stsb:2.0.0", "regression", ("sentence1", "sentence2"),
             (), ("pearson", "spearman"), "average", ("STS-B.tsv",), train_examples=5749),
    TaskSpec("glue_mnli", GLUE, "glue/mnli:2.0.0", "classification", ("premise", "hypothesis"),
             _NLI3, ("accuracy_matched", "accuracy_mismatched"), "accuracy_matched",
             ("MNLI-m.tsv", "MNLI-mm.tsv"), leaderboard_labels="name",
             validation_splits=("validation_matched", "validation_mismatched"),
             test_splits=("test_matched", "test_mismatched"), train_examples=392702),
    TaskSpec("glue_qnli", GLUE, "glue/qnli:2.0.0", "classification", ("question", "sentence"),
             _NLI2, ("accuracy",), "accuracy", ("QNLI.tsv",), leaderboard_labels="name", train_examples=104743),
    TaskSpec("glue_rte", GLUE, "glue/rte:2.0.0", "classification", ("sentence1", "sentence2"),
             _NLI2, ("accuracy",), "accuracy", ("RTE.tsv",), leaderboard_labels="name", train_examples=2490),
    TaskSpec("glue_wnli", GLUE, "glue/wnli:2.0.0", "classification", ("sentence1", "sentence2"),
             ("not_entailment", "entailment"), ("accuracy",), "accuracy", ("WNLI.tsv",), train_examples=635),
    TaskSpec("glue_ax", GLUE, "glue/ax:2.0.0", "classification", ("premise", "hypothesis"),
             _NLI3, ("matthews_corrcoef",), "matthews_corrcoef", ("AX.tsv",),
             leaderboard_labels="name", train_split=None, validation_splits=(),
             diagnostic_of="glue_mnli"),
    # ---- SuperGLUE -------------------------------------------------------------
    TaskSpec("super_glue_boolq", SUPER_GLUE, "super_glue/boolq:1.0.2", "classification",
             ("question", "passage"), _BOOL, ("accuracy",), "accuracy", ("BoolQ.jsonl",),
             leaderboard_labels="bool_lower", train_examples=9427),
    TaskSpec("super_glue_cb", SUPER_GLUE, "super_glue/cb:1.0.2", "classification",
             ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"),
             ("accuracy", "macro_f1"), "average", ("CB.jsonl",), leaderboard_labels="name", train_examples=250),
    TaskSpec("super_glue_copa", SUPER_GLUE, "super_glue/copa:1.0.2", "multiple_choice",
             ("premise", "question", "choice1", "choice2"), ("choice1", "choice2"),
             ("accuracy",), "accuracy", ("COPA.jsonl",), train_examples=400),
    TaskSpec("super_glue_multirc", SUPER_GLUE, "super_glue/multirc:1.0.2", "answer_scoring",
             ("paragraph", "question", "answer"), _BOOL, ("f1a", "exact_match"), "average",
             ("MultiRC.jsonl",), train_examples=27243),
    TaskSpec("super_glue_record", SUPER_GLUE, "super_glue/record:1.0.2", "entity_ranking",
             ("passage", "query"), (), ("record_f1", "record_exact_match"), "average",
             ("ReCoRD.jsonl",), train_examples=100730),
    TaskSpec("super_glue_rte", SUPER_GLUE, "super_glue/rte:1.0.2", "classification",
             ("premise", "hypothesis"), _NLI2, ("accuracy",), "accuracy", ("RTE.jsonl",),
             leaderboard_labels="name", train_examples=2490),
    TaskSpec("super_glue_wic", SUPER_GLUE, "super_glue/wic:1.0.2", "classification",
             ("word", "sentence1", "sentence2"), _BOOL, ("accuracy",), "accuracy",
             ("WiC.jsonl",), leaderboard_labels="bool_lower", train_examples=5428),
    TaskSpec("super_glue_wsc", SUPER_GLUE, "super_glue/wsc.fixed:1.0.2", "classification",
             ("text", "span1_text", "span2_text"), _BOOL, ("accuracy",), "accuracy",
             ("WSC.jsonl",), leaderboard_labels="bool_title", train_examples=554),
    TaskSpec("super_glue_axb", SUPER_GLUE, "super_glue/axb:1.0.2", "classification",
             ("sentence1", "sentence2"), _NLI2, ("matthews_corrcoef",), "matthews_corrcoef",
             ("AX-b.jsonl",), leaderboard_labels="name", train_split=None, validation_splits=(),
             diagnostic_of="super_glue_rte"),
    TaskSpec("super_glue_axg", SUPER_GLUE, "super_glue/axg:1.0.2", "classification",
             ("premise", "hypothesis"), _NLI2, ("gender_parity", "accuracy"), "gender_parity",
             ("AX-g.jsonl",), leaderboard_labels="name", train_split=None, validation_splits=(),
             diagnostic_of="super_glue_rte"),
]

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
BUILTIN_TASKS = frozenset(TASKS)
GLUE_TASKS = tuple(s.name for s in _SPECS if s.benchmark == GLUE)
SUPER_GLUE_TASKS = tuple(s.name for s in _SPECS if s.benchmark == SUPER_GLUE)


def get_spec(name: str) -> TaskSpec:
  """The spec of ``name`` (``glue_cola``; a seqio task name with a format suffix works too)."""
  base = name.removeprefix("lmlab.")
  for suffix in ("_byt5_t2t", "_t2t", "_bytes"):  # the format suffixes of glue_tasks
    if base.endswith(suffix) and base.removesuffix(suffix) in TASKS:
      base = base.removesuffix(suffix)
      break
  if base not in TASKS:
    raise ValueError(f"Unknown GLUE/SuperGLUE task {name!r}; known: {', '.join(TASKS)}. A task of "
                     "your own files is defined with FinetuneConfig.file_tasks = [@FileTask()].")
  return TASKS[base]


def register_spec(spec: TaskSpec) -> TaskSpec:
  """Adds a task that is not part of GLUE or SuperGLUE (a ``file`` task) to ``TASKS``.

  Registering the same name again replaces the earlier entry (a run that is
  configured twice in one process); the built-in GLUE and SuperGLUE tasks,
  and the benchmark names themselves, cannot be replaced. Returns ``spec``.

  Raises:
    ValueError: A built-in name, a GLUE/SuperGLUE benchmark, or an unknown kind.
  """
  if spec.name in BUILTIN_TASKS or spec.name in (GLUE, SUPER_GLUE):
    raise ValueError(f"Task name {spec.name!r} is a built-in GLUE/SuperGLUE name; give your task "
                     "another name.")
  if spec.benchmark in (GLUE, SUPER_GLUE):
    raise ValueError(f"Task {spec.name!r}: only the built-in table belongs to benchmark "
                     f"{spec.benchmark!r}; use benchmark {FILE!r}.")
  if spec.kind not in KINDS:
    raise ValueError(f"Task {spec.name!r}: kind {spec.kind!r} is not one of {KINDS}.")
  if len(spec.leaderboard_files) != len(spec.test_splits):
    raise ValueError(f"Task {spec.name!r}: {len(spec.test_splits)} test splits but "
                     f"{len(spec.leaderboard_files)} leaderboard files.")
  TASKS[spec.name] = spec
  return spec


def label_to_submission(spec: TaskSpec, label) -> object:
  """A predicted label id (or score) as the leaderboard file writes it."""
  if spec.kind == "regression":
    return float(label)
  if spec.kind == "entity_ranking":
    return str(label)
  index = int(label)
  if spec.leaderboard_labels == "index":
    return index
  if spec.leaderboard_labels == "name":
    return spec.label_names[index]
  if spec.leaderboard_labels == "bool_lower":
    return "true" if index else "false"
  if spec.leaderboard_labels == "bool_title":
    return "True" if index else "False"
  raise ValueError(f"Unknown leaderboard_labels {spec.leaderboard_labels!r} for {spec.name}.")
