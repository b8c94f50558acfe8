"""Typed, gin-bound configuration of a run: data, training loop, checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import gin



@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which seqio task or mixture feeds the run, and how.

  Attributes:
    mixture_or_task_name: Registered seqio name, e.g. ``lmlab.embedded_mlm``
      (None with ``corpus``: the corpus's name).
    sequence_length: Tokens per packed row (masked-LM tasks).
    task_feature_lengths: Encoder–decoder tasks: tokens per packed row of
      each side, e.g. ``{"inputs": 512, "targets": 114}`` (T5X's standard
      span-corruption lengths).
    train_split: Split used for training.
    eval_split: Split used for evaluation.
    shuffle: Shuffle training data (evaluation data is never shuffled).
    seed: Seed of shuffling and of dynamic masking.
    tfds_data_dir: Where TFDS-backed tasks find prepared data (None: the TFDS
      default, ``~/tensorflow_datasets``).
    vocabulary: Tokenize the task with this vocabulary instead of its own
      (``lmlab.data.vocabularies.load_vocabulary``: ``embedded``, ``bytes``,
      ``byt5``, a SentencePiece ``.model``, a ``vocab.txt``, a
      ``tokenizer.json`` or a Hugging Face model folder). None: the
      vocabulary of the checkpoint the run starts from
      (``run.init_checkpoint``) if it has one, else the task's own.
    corpus: Your own text files as the task (``@CorpusTask()``, see
      ``lmlab/data/corpus.py``): the run registers it before reading data.
  """

  mixture_or_task_name: Optional[str] = None
  sequence_length: int = 128
  task_feature_lengths: Optional[Mapping[str, int]] = None
  train_split: str = "train"
  eval_split: str = "validation"
  shuffle: bool = True
  seed: int = 0
  tfds_data_dir: Optional[str] = None
  vocabulary: Optional[str] = None
  corpus: Optional[Any] = None  # a lmlab.data.corpus.CorpusTask (training does not import data)

  def __post_init__(self):
    if self.corpus is None:
      if not self.mixture_or_task_name:
        raise ValueError("DataConfig needs a task: bind DataConfig.mixture_or_task_name (e.g. "
                         "MIXTURE_OR_TASK_NAME = 'lmlab.embedded_mlm') or read your own files with "
                         "DataConfig.corpus = @CorpusTask() (see gin/runs/corpus_pretrain.gin).")
      return
    name = self.corpus.name
    if not self.mixture_or_task_name:
      object.__setattr__(self, "mixture_or_task_name", name)
    elif self.mixture_or_task_name != name:
      raise ValueError(
          f"DataConfig.corpus registers the task {name!r} but DataConfig.mixture_or_task_name is "
          f"{self.mixture_or_task_name!r}. Read the corpus by giving both the same name (e.g. "
          f"MIXTURE_OR_TASK_NAME = {name!r}, or CorpusTask.name = %MIXTURE_OR_TASK_NAME), or drop "
          "DataConfig.corpus to read the named task.")
    splits = list(self.corpus.splits)
    if self.train_split not in splits:
      raise ValueError(f"DataConfig.train_split is {self.train_split!r} but the corpus {name!r} has only the "
                       f"splits {splits} (CorpusTask.train_files make 'train', validation_files 'validation').")
    if self.eval_split and self.eval_split not in splits:
      raise ValueError(
          f"DataConfig.eval_split is {self.eval_split!r} but the corpus {name!r} has only the splits {splits}: "
          "give CorpusTask.validation_files to evaluate on held-out files, or set DataConfig.eval_split = '' "
          "to train without evaluation.")

  @property
  def feature_lengths(self) -> Union[int, dict[str, int]]:
    """What the data pipeline is asked for: per-feature lengths, else one row length."""
    if self.task_feature_lengths:
      return {k: int(v) for k, v in dict(self.task_feature_lengths).items()}
    return self.sequence_length


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop, evaluation cadence and checkpoint policy.

  Attributes:
    model_dir: Where checkpoints, metrics, the resolved config and
      predictions go. A run started again on the same directory resumes.
    train_steps: Total optimizer steps (including steps already done before a
      resume).
    batch_size: Global batch (rows per optimizer step, all devices and
      micro-batches together).
    grad_accum_steps: Micro-batches per step; must divide batch_size.
    eval_every: Evaluate every this many steps (0: only at the end).
    eval_steps: Batches per evaluation (0: the whole eval split).
    eval_batch_size: Rows per evaluation batch (None: batch_size).
    checkpoint_every: Save every this many steps (the last step is always
      saved).
    keep_checkpoints: Keep only the newest N checkpoints.
    async_checkpointing: Write checkpoints in the background.
    log_every: Write training metrics every this many steps.
    seed: Seed of parameter init and dropout.
    progress_bar: Show a tqdm bar with throughput and ETA.
    stop_after_step: End this process after this step (saving a checkpoint)
      while keeping the learning-rate schedule of ``train_steps``; a later run
      on the same MODEL_DIR continues. For time-limited jobs (SLURM, queued
      TPU slices). None: run to ``train_steps``.
    time_budget_seconds: Stop training once this many wall seconds have passed
      since the first step finished (compilation is not counted; periodic
      evaluations are), then save, evaluate and end as at ``train_steps``.
      For equal-wall-clock comparisons of recipes (cramming's budget); set
      ``train_steps`` to what fits so the learning-rate schedule completes.
      The budget is per process: a resumed run starts a fresh one. None: no
      budget.
    compilation_cache_dir: JAX's persistent compilation cache: ``""`` uses
      JAX's own setting if given, else ``MODEL_DIR/compilation_cache``; a path
      uses that folder; None leaves it off (``training/compilation_cache.py``).
    compilation_cache_min_compile_secs: Cache only compilations slower than this.
    peak_tflops_per_device: Peak TFLOP/s of one device for ``train/mfu``;
      None: looked up from the device kind (``training/mfu.py``; CPUs have
      none and log ``train/tflops_per_device`` only).
  """

  model_dir: str = gin.REQUIRED
  train_steps: int = gin.REQUIRED
  batch_size: int = 32
  grad_accum_steps: int = 1
  eval_every: int = 0
  eval_steps: int = 20
  eval_batch_size: Optional[int] = None
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  log_every: int = 50
  seed: int = 0
  progress_bar: bool = True
  stop_after_step: Optional[int] = None
  time_budget_seconds: Optional[float] = None
  compilation_cache_dir: Optional[str] = ""
  compilation_cache_min_compile_secs: float = 1.0
  peak_tflops_per_device: Optional[float] = None

  def __post_init__(self):
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(
          f"TrainConfig.batch_size={self.batch_size} is not divisible by "
          f"grad_accum_steps={self.grad_accum_steps}.")
    if self.train_steps < 0 or self.log_every <= 0 or self.checkpoint_every <= 0:
      raise ValueError("TrainConfig needs train_steps >= 0, log_every > 0 and checkpoint_every > 0.")
    if self.time_budget_seconds is not None and not self.time_budget_seconds > 0:
      raise ValueError(f"TrainConfig.time_budget_seconds={self.time_budget_seconds} must be a "
                       "positive number of seconds (or None for no budget).")
