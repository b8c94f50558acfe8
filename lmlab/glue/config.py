"""``FinetuneConfig``: what is fine-tuning's own (the task, the start point, the head, seeds).

Batch size, steps, learning rate, schedule, evaluation cadence and the run
directory are not here: a fine-tune is a ``Trainer`` run, configured by
``TrainConfig`` and ``OptimizerConfig`` like any other, with per-task
overrides of any of the three configs in ``per_task``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import gin

from lmlab.glue import file_tasks as file_task_lib
from lmlab.glue import offline_tasks
from lmlab.glue import spec as glue_spec
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.training.config import TrainConfig
from lmlab.training.optimizers import OptimizerConfig

HEADS = ("auto", "classifier", "enct5", "text_to_text")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """What to fine-tune, from what, and how it is scored.

  Attributes:
    tasks: lmlab task names (``glue_rte``, ``super_glue_boolq``,
      ``offline_order``), or ``glue``/``super_glue``/``offline`` for every
      task with a training set (``offline``: the shipped offline suite,
      ``lmlab.glue.offline_tasks``, which needs no ``file_tasks`` entry).
      Diagnostics (AX, AX-b, AX-g) are predicted by their parent task's model
      (MNLI, RTE) when test predictions are written.
    network: The pretrained network's config (``@EncoderConfig()`` for
      BERT-style and BiGS, ``@T5Config()`` for T5/ByT5/MrT5); bind it with the
      model gin file used for pretraining. None with a Hugging Face folder or
      converted file as ``init_checkpoint_dir``: its own config is used (it
      also replaces a bound one).
    init_checkpoint_dir: Where the pretrained network comes from: an lmlab
      MODEL_DIR, a Hugging Face model folder (config.json + safetensors +
      tokenizer files) or a parameter file from ``python -m lmlab.convert
      import`` (``lmlab.convert.starting_point``). None: train from a random
      initialisation, logged as such; for baselines.
    init_checkpoint_step: Which checkpoint of an lmlab run (None: the newest).
    vocabulary: Tokenize every task with this vocabulary
      (``vocabularies.load_vocabulary``: a Hugging Face folder, a
      ``vocab.txt``, ``tokenizer.json`` or SentencePiece ``.model``, or
      ``embedded``/``bytes``/``byt5``). None: the init checkpoint's own
      tokenizer when it has one (a Hugging Face folder), else the tasks' own.
    head: ``auto`` (encoders: ``classifier``; T5: ``text_to_text``),
      ``classifier``, ``enct5`` or ``text_to_text``.
    byte_level: Use the byte vocabularies (ByT5/MrT5, byte-level encoders).
    sequence_length: Tokens per row (inputs for text-to-text); longer
      examples are truncated, longest sentence first, and counted in the log.
    target_length: Text-to-text target tokens (and decoding length).
    epochs: Passes over the training set, which sets ``TrainConfig.train_steps``;
      None: ``TrainConfig.train_steps`` as bound.
    seeds: One fine-tune per seed (``TrainConfig.seed``: head init, dropout;
      and the data order).
    pooling: Encoder pooling, ``mean``, ``cls`` (BERT's pooled first token) or
      ``auto``: ``cls`` when the vocabulary has a [CLS]-like token that starts
      every row (BERT, RoBERTa), else ``mean``.
    max_train_examples, max_eval_examples: Caps for quick runs and tests.
    write_test_predictions: Predict the test splits and write leaderboard files.
    keep_train_checkpoints: Keep a finished seed's train-state checkpoints
      (only needed to resume; ``best/`` is always kept).
    per_task: Overrides per task of fields of this config, ``TrainConfig`` or
      ``OptimizerConfig``, e.g.
      ``{"glue_rte": {"learning_rate": 1e-5, "epochs": 10, "batch_size": 16}}``.
    tfds_data_dir: Where the TFDS datasets are prepared (None: TFDS default).
    export_hugging_face: After each seed, write its best parameters as a
      Hugging Face folder (``<task>/seed_<n>/hugging_face``: config,
      safetensors, label names and the tokenizer files) that
      ``AutoModelForSequenceClassification`` (encoders) or
      ``T5ForConditionalGeneration`` (text to text) loads. Checked before
      training: the network must have a Hugging Face layout.
    file_tasks: Tasks of your own labelled CSV/TSV/JSONL files
      (``[@FileTask()]``, ``lmlab.glue.file_tasks.FileTask``); those that
      ``tasks`` names are fine-tuned like GLUE tasks.
  """
  tasks: Sequence[str] = gin.REQUIRED
  network: Optional[Union[EncoderConfig, T5Config]] = None
  init_checkpoint_dir: Optional[str] = None
  init_checkpoint_step: Optional[int] = None
  head: str = "auto"
  byte_level: bool = False
  sequence_length: int = 128
  target_length: int = 8
  epochs: Optional[float] = 3.0
  seeds: Sequence[int] = (0,)
  pooling: str = "auto"
  max_train_examples: Optional[int] = None
  max_eval_examples: Optional[int] = None
  write_test_predictions: bool = True
  keep_train_checkpoints: bool = False
  per_task: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  tfds_data_dir: Optional[str] = None
  vocabulary: Optional[str] = None
  export_hugging_face: bool = False
  file_tasks: Sequence[file_task_lib.FileTask] = ()

  def __post_init__(self):
    if isinstance(self.tasks, (str, list, tuple)):  # the offline suite's tasks join file_tasks
      object.__setattr__(self, "file_tasks",
                         offline_tasks.with_offline_tasks(self.tasks, self.file_tasks))

  def task_names(self) -> list[str]:
    names = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
    names = offline_tasks.expand(names)  # 'offline': every task of the offline suite
    file_task_lib.register_specs(self.file_tasks, names)  # the file tasks' specs join the table
    out = []
    for name in names:
      if name in (glue_spec.GLUE, glue_spec.SUPER_GLUE):
        members = glue_spec.GLUE_TASKS if name == glue_spec.GLUE else glue_spec.SUPER_GLUE_TASKS
        out += [t for t in members if not glue_spec.TASKS[t].is_diagnostic]
      else:
        spec = glue_spec.get_spec(name)
        if spec.is_diagnostic:
          raise ValueError(f"{name} is a diagnostic set with no training data; it is predicted by "
                           f"the {spec.diagnostic_of} model: fine-tune {spec.diagnostic_of}.")
        out.append(spec.name)
    return out

  def head_for(self) -> str:
    """The concrete head: ``auto`` resolved, and the head checked against the network."""
    if self.head not in HEADS:
      raise ValueError(f"FinetuneConfig.head={self.head!r} is not one of {HEADS}.")
    is_t5 = isinstance(self.network, T5Config)
    if self.head == "auto":
      return "text_to_text" if is_t5 else "classifier"
    if self.head in ("enct5", "text_to_text") and not is_t5:
      raise ValueError(f"head={self.head!r} needs a T5Config network; encoders use 'classifier'.")
    if self.head == "classifier" and is_t5:
      return "enct5"
    return self.head


def for_task(name: str, finetune: FinetuneConfig, train: TrainConfig,
             optimizer: OptimizerConfig) -> tuple[FinetuneConfig, TrainConfig, OptimizerConfig]:
  """The three configs with ``finetune.per_task[name]``'s overrides applied to whichever owns each."""
  overrides = dict(finetune.per_task.get(name, {}))
  configs = [finetune, train, optimizer]
  out = []
  for config in configs:
    fields = {f.name for f in dataclasses.fields(config)}
    mine = {k: v for k, v in overrides.items() if k in fields}
    out.append(dataclasses.replace(config, **mine))
  known = set().union(*({f.name for f in dataclasses.fields(c)} for c in configs))
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"FinetuneConfig.per_task[{name!r}] sets unknown fields {unknown}: use fields "
                     "of FinetuneConfig, TrainConfig or OptimizerConfig.")
  return out[0], out[1], out[2]
