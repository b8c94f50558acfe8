"""``--run_mode=finetune``: GLUE/SuperGLUE fine-tuning, as ``Trainer`` runs.

For each task and seed, a fine-tune is an ordinary ``Trainer`` run (sharded,
multi-process, NaN guard, gradient accumulation, clu/TensorBoard metrics,
exact resume, SIGTERM checkpointing) that adds only:

* where it starts: the task head's fresh parameters with the pretrained
  network grafted in (``lmlab.training.pretrained``);
* its data: the task's training split, shuffled by the seed;
* how it is scored: the official metrics on the validation split(s) every
  ``TrainConfig.eval_every`` steps (default: once per epoch) and at the end,
  keeping the parameters of the best main metric (``MODEL_DIR/.../best``);
* what it leaves: test predictions from the best parameters as leaderboard
  files, and a mean with a bootstrap interval over seeds.

Layout under ``TrainConfig.model_dir``::

  <task>/seed_<n>/checkpoints/     train state while the seed runs (resume)
  <task>/seed_<n>/best/, best.json the best parameters and their score
  <task>/seed_<n>/metrics.jsonl    train/* and validation/* scalars (+ tensorboard/)
  <task>/seed_<n>/result.json      best step, validation scores, history
  <task>/seed_<n>/leaderboard/     this seed's submission files
  leaderboard/                     the best seed's files per task (zip and submit)
  summary.md, summary.json         validation scores, mean and CI over seeds

A seed whose ``result.json`` exists is done; a stopped seed resumes from its
last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np

from lmlab.glue import evaluation, leaderboard, seeds
from lmlab.glue import rows as finetune_data
from lmlab.glue import spec as glue_spec
from lmlab.glue.config import FinetuneConfig, for_task
from lmlab.glue.task_data import TaskData, load_glue_tasks, task_data
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.training import checkpointing, pretrained
from lmlab.convert.starting_point import StartingPoint, check_vocabulary_fits, load_starting_point
from lmlab.training.config import TrainConfig
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.partitioning import Partitioner
from lmlab.training.trainer import Trainer
from lmlab.wrappers.classification import ClassificationModel
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel

logger = logging.getLogger(__name__)
HF_EXPORT_DIR = "hugging_face"


def build_model(config: FinetuneConfig, spec: glue_spec.TaskSpec, head: str, vocab_size: int,
                pooling: str = "mean"):
  """The wrapper a head needs: the T5 wrapper itself (text to text) or a classification head."""
  network = config.network.with_vocab_size(vocab_size) if config.network.vocab_size is None \
      else config.network
  if head == "text_to_text":
    return EncoderDecoderModel(network)
  if isinstance(network, EncoderConfig) and network.position_scheme == "learned":
    finetune_data.check_sequence_length(config.sequence_length, network.max_positions,
                                        "EncoderConfig.max_positions")
  return ClassificationModel(network, spec, pooling)


def resolve_pooling(config: FinetuneConfig, data: TaskData,
                    start: Optional[StartingPoint] = None) -> str:
  """``auto``: the checkpoint's own pooling if it declares ``cls`` or ``mean``; else BERT's
  pooled first token when rows start with [CLS]/<s>, else the mean."""
  if config.pooling != "auto":
    return config.pooling
  if start is not None and start.pooling in ("cls", "mean"):
    return start.pooling
  return "cls" if data.framing is not None and data.framing.prefix else "mean"


def _match_classifier(params: dict, spec: glue_spec.TaskSpec,
                      label_names: Optional[tuple[str, ...]], source: str) -> dict:
  """A checkpoint's classifier head, kept when it fits the task, reordered to the task's labels.

  An imported ``*ForSequenceClassification`` head is the starting point only
  if it has the task's width; when the checkpoint names its classes
  (``id2label``) and they are the task's in another order, its rows are
  permuted to the task's order. Otherwise the head is initialised fresh.
  """
  if "classifier" not in params:
    return params
  kernel = np.asarray(params["classifier"]["kernel"])
  if kernel.shape[-1] != spec.num_classes:
    logger.warning("%s has a %d-class classifier; %s has %d classes: the classifier starts fresh.",
                   source, kernel.shape[-1], spec.name, spec.num_classes)
    return {k: v for k, v in params.items() if k != "classifier"}
  if label_names and spec.label_names and tuple(label_names) != tuple(spec.label_names):
    if sorted(label_names) != sorted(spec.label_names):
      logger.warning("%s's classes %s are not %s's %s: the classifier starts fresh.", source,
                     list(label_names), spec.name, list(spec.label_names))
      return {k: v for k, v in params.items() if k != "classifier"}
    order = [list(label_names).index(name) for name in spec.label_names]
    head = dict(params["classifier"])
    head["kernel"] = kernel[..., order]
    head["bias"] = np.asarray(head["bias"])[order]
    logger.info("Classifier rows of %s reordered to %s's labels %s.", source, spec.name,
                list(spec.label_names))
    return {**params, "classifier": head}
  return params


def pretrained_init(model, start: Optional[StartingPoint], spec: glue_spec.TaskSpec):
  """``Trainer.init_params``: fresh parameters with the pretrained network grafted in."""
  if start is None:
    logger.warning("FinetuneConfig.init_checkpoint_dir is None: fine-tuning from a random init.")
    return None
  old = start.params
  if isinstance(model, ClassificationModel):
    old = _match_classifier(old, spec, start.label_names, start.source)

  def graft(fresh):
    params, _, _ = pretrained.graft_pretrained(
        fresh, old, required_prefixes=start.required_prefixes(model.inherited_prefixes),
        source=f"checkpoint {start.source}")
    return params
  return graft


@dataclasses.dataclass
class TaskRun:
  """What every seed of one task shares: data, model, configs and the compiled steps."""
  spec: glue_spec.TaskSpec
  config: FinetuneConfig
  train: TrainConfig
  optimizer: OptimizerConfig
  head: str
  data: TaskData
  model: Any
  partitioner: Optional[Partitioner]
  init_params: Any
  start: Optional[StartingPoint] = None
  trainer: Optional[Trainer] = None

  @property
  def predict_options(self) -> dict:
    return {"max_decode_length": self.config.target_length} if self.head == "text_to_text" else {}

  @property
  def eval_batch_size(self) -> int:
    return self.train.eval_batch_size or self.train.batch_size

  def trainer_for(self, seed: int, run_dir: str) -> Trainer:
    """A Trainer for one seed; seeds after the first reuse the first one's compiled steps."""
    train = dataclasses.replace(self.train, model_dir=run_dir, seed=seed)
    if self.trainer is None:
      self.trainer = Trainer(self.model, self.optimizer, train, self.partitioner,
                             init_params=self.init_params)
      return self.trainer
    return self.trainer.for_run(train)


def prepare_task(spec: glue_spec.TaskSpec, config: FinetuneConfig, train: TrainConfig,
                 optimizer: OptimizerConfig, partitioner: Optional[Partitioner] = None,
                 start: Optional[StartingPoint] = None) -> TaskRun:
  """Data, model and the per-task schedule: epochs -> steps, validation once per epoch."""
  head = config.head_for()
  data = task_data(spec, config, head)
  if start is not None and start.network is not None:
    check_vocabulary_fits(data.vocabulary.vocab_size, config.network,
                          config.vocabulary or data.seqio_name)
  model = build_model(config, spec, head, data.vocabulary.vocab_size, resolve_pooling(config, data, start))
  train_rows = data.count(spec.train_split, config.max_train_examples)
  steps_per_epoch = max(1, math.ceil(train_rows / train.batch_size))
  total = train.train_steps if config.epochs is None else max(1, round(config.epochs * steps_per_epoch))
  if total <= 0:
    raise ValueError("Fine-tuning needs FinetuneConfig.epochs or TrainConfig.train_steps > 0.")
  train = dataclasses.replace(train, train_steps=total, eval_every=train.eval_every or steps_per_epoch)
  logger.info("%s: %d training rows, %d steps, validating every %d.", spec.name, train_rows,
              total, train.eval_every)
  return TaskRun(spec, config, train, optimizer, head, data, model, partitioner,
                 pretrained_init(model, start, spec), start)


def _validation_history(run_dir: str) -> list[dict]:
  """Every validation of a seed, from its metric log (one entry per step, the latest wins)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  by_step: dict[int, dict] = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        record = json.loads(line)
        scores = {k[len("validation/"):]: v for k, v in record.items() if k.startswith("validation/")}
        if scores:
          by_step[int(record["step"])] = {"step": int(record["step"]), **scores}
  return [by_step[s] for s in sorted(by_step)]


def finetune_seed(task: TaskRun, seed: int, model_dir: str) -> dict:
  """Trains one seed (resuming if it was stopped), writes its test predictions; returns its result."""
  spec, config, data = task.spec, task.config, task.data
  run_dir = os.path.join(model_dir, spec.name, f"seed_{seed}")
  os.makedirs(run_dir, exist_ok=True)
  trainer = task.trainer_for(seed, run_dir)
  log = finetune_data.TruncationLog(f"{spec.name}/{spec.train_split}")
  predict = lambda params, batch: trainer.predict(params, batch, **task.predict_options)
  summary = trainer.train(
      data.train_batches(task.train.batch_size, seed, log),
      sequence_length=config.sequence_length,
      validate=lambda params: evaluation.validate(predict, params, data, task.eval_batch_size),
      best_metric="main")
  log.report()
  best = checkpointing.read_best(run_dir)
  history = _validation_history(run_dir)
  best_scores = next(h for h in history if h["step"] == best["step"])
  result = {"task": spec.name, "seed": seed, "head": task.head,
            "train_steps": task.train.train_steps, "best_step": best["step"],
            "validation": {k: v for k, v in best_scores.items() if k != "step"},
            "history": history, "final_train_loss": summary.final_train_loss}
  if config.write_test_predictions or config.export_hugging_face:
    params = checkpointing.restore_best(run_dir, trainer.state.params)
  if config.write_test_predictions:
    result["leaderboard_files"] = write_test_predictions(task, predict, params,
                                                         os.path.join(run_dir, "leaderboard"))
  if config.export_hugging_face:
    result["hugging_face_dir"] = export_seed(task, params, os.path.join(run_dir, HF_EXPORT_DIR))
  if jax.process_index() == 0:
    checkpointing.write_json(os.path.join(run_dir, "result.json"), result)
    if not config.keep_train_checkpoints:
      shutil.rmtree(checkpointing.checkpoint_dir(run_dir), ignore_errors=True)
  return result


def _export_args(config: FinetuneConfig, start: Optional[StartingPoint]) -> dict:
  """Model type, base config and tokenizer folder of a Hugging Face export."""
  is_t5 = isinstance(config.network, T5Config)
  model_type = (start.model_type if start is not None and start.model_type else
                ("t5" if is_t5 else "bert"))
  tokenizer_dir = None
  for candidate in (config.vocabulary, start.vocabulary if start is not None else None):
    if candidate and os.path.isdir(candidate):
      tokenizer_dir = candidate
      break
  return {"model_type": model_type,
          "hf_config": dict(start.hf_config) if start is not None and start.hf_config else None,
          "tokenizer_dir": tokenizer_dir}


def check_exportable(config: FinetuneConfig, head: str, start: Optional[StartingPoint]) -> None:
  """Refuses ``export_hugging_face`` before training when the result would have no HF form."""
  from lmlab.convert import common, hf_bert, hf_t5  # pylint: disable=g-import-not-at-top
  if head == "enct5":
    raise ValueError("FinetuneConfig.export_hugging_face: an EncT5 classifier has no Hugging Face "
                     "class; use head='text_to_text' for T5 or turn the export off.")
  args = _export_args(config, start)
  try:
    if isinstance(config.network, T5Config):
      hf_t5.t5_config_to_hf(config.network)
    else:
      hf_bert.bert_config_to_hf(config.network, args["model_type"])
  except common.ConversionError as e:
    raise ValueError(f"FinetuneConfig.export_hugging_face is on but the network cannot be written "
                     f"as a Hugging Face model: {e}") from e


def export_seed(task: TaskRun, params, directory: str) -> str:
  """The seed's best parameters as a Hugging Face folder (with label names and tokenizer files)."""
  from lmlab.convert import auto  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
    label_names = task.spec.label_names if task.head != "text_to_text" else None
    auto.export_hf_checkpoint(directory, task.model.config, host, label_names=label_names or None,
                              **_export_args(task.config, task.start))
  return directory


def write_test_predictions(task: TaskRun, predict, params, directory: str) -> list[str]:
  """Leaderboard files of the task's test split(s) and of the diagnostics it predicts.

  Every process predicts (a collective); process 0 writes the files.
  """
  written = []
  data = task.data
  specs = [data.spec] + [s for s in glue_spec.TASKS.values() if s.diagnostic_of == data.spec.name]
  for spec in specs:
    spec_data = data if spec is data.spec else task_data(spec, task.config, task.head)
    for index, split in enumerate(spec.test_splits):
      outputs, meta = evaluation.predict_split(predict, params, spec_data, split,
                                               task.eval_batch_size, task.config.max_eval_examples)
      resolved = evaluation.resolve_predictions(spec, outputs, meta, spec_data.text_to_text)
      if jax.process_index() == 0:
        written.append(leaderboard.write_submission(directory, spec, index, resolved["ids"],
                                                    resolved["predictions"]))
  return written


# ---------------------------------------------------------------------------
# Many tasks and seeds
# ---------------------------------------------------------------------------


def run_finetune(config: Optional[FinetuneConfig] = None, train: Optional[TrainConfig] = None,
                 optimizer: Optional[OptimizerConfig] = None,
                 partitioner: Optional[Partitioner] = None) -> dict:
  """Fine-tunes every task and seed; writes the summary and leaderboard folder.

  ``train`` and ``optimizer`` default to the gin-bound ``TrainConfig`` and
  ``OptimizerConfig``; ``train.model_dir`` is the root of all tasks' runs.
  """
  config = config or FinetuneConfig()
  train = train or TrainConfig()
  optimizer = optimizer or OptimizerConfig()
  start = None
  if config.init_checkpoint_dir is not None:
    start = load_starting_point(config.init_checkpoint_dir, config.init_checkpoint_step,
                                what="FinetuneConfig.init_checkpoint_dir")
  config = resolve_start(config, start)
  names = config.task_names()
  glue_tasks = load_glue_tasks()
  if config.tfds_data_dir:  # read the data from where it was checked to be prepared
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(config.tfds_data_dir)
  # Tasks of the researcher's own files: every file is read and checked now, before training.
  file_task_names = glue_tasks.register_file_tasks(config.file_tasks, names)
  for name in names:  # fail fast, before any training, on data that is not prepared
    if name not in file_task_names:
      glue_tasks.check_prepared(name, config.tfds_data_dir)
  os.makedirs(train.model_dir, exist_ok=True)
  results: dict[str, list[dict]] = {}
  for name in names:
    task_config, task_train, task_optimizer = for_task(name, config, train, optimizer)
    results[name] = []
    task = None  # built on the first seed that needs training, then shared
    for seed in task_config.seeds:
      done = _finished_result(train.model_dir, name, seed)
      if done is None:
        task = task or prepare_task(glue_spec.TASKS[name], task_config, task_train,
                                    task_optimizer, partitioner, start)
        done = finetune_seed(task, seed, train.model_dir)
      results[name].append(done)
    if task_config.write_test_predictions and jax.process_index() == 0:
      _publish_best_seed(train.model_dir, results[name])
  return write_summary(train.model_dir, results)


def resolve_start(config: FinetuneConfig, start: Optional[StartingPoint]) -> FinetuneConfig:
  """The config with the network and vocabulary an imported checkpoint brings filled in.

  A Hugging Face folder (or converted file) carries its network config,
  which replaces a bound one, and its tokenizer, used unless
  ``FinetuneConfig.vocabulary`` names another. Export is checked here,
  before any training.
  """
  network, vocabulary = config.network, config.vocabulary
  if start is not None and start.network is not None:
    if network is not None and network != start.network:
      logger.info("FinetuneConfig.network replaced by the network of %s.", start.source)
    network = start.network
  if network is None:
    raise ValueError("FinetuneConfig.network is unset: bind it to the pretrained network, e.g. "
                     "FinetuneConfig.network = @EncoderConfig() after including the model gin file, "
                     "or start from a Hugging Face folder (FinetuneConfig.init_checkpoint_dir), "
                     "which brings its own.")
  if vocabulary is None and start is not None:
    vocabulary = start.vocabulary
  config = dataclasses.replace(config, network=network, vocabulary=vocabulary)
  if config.export_hugging_face:
    check_exportable(config, config.head_for(), start)
  return config


def _finished_result(model_dir: str, name: str, seed: int) -> Optional[dict]:
  path = os.path.join(model_dir, name, f"seed_{seed}", "result.json")
  if not os.path.exists(path):
    return None
  logger.info("%s seed %d already done (%s); skipping.", name, seed, path)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _publish_best_seed(model_dir: str, seed_results: list[dict]) -> None:
  best = max(seed_results, key=lambda r: r["validation"]["main"])
  target = os.path.join(model_dir, "leaderboard")
  os.makedirs(target, exist_ok=True)
  for path in best.get("leaderboard_files", []):
    shutil.copy(path, os.path.join(target, os.path.basename(path)))


def write_summary(model_dir: str, results: dict[str, list[dict]]) -> dict:
  """``summary.md`` / ``summary.json``: validation scores per task and seed, mean and 95% CI."""
  per_task = {name: [r["validation"] for r in runs] for name, runs in results.items()}
  lines = ["# Fine-tuning summary", "", "| task | seed | best step | " + "validation scores |",
           "|---|---|---|---|"]
  for name, runs in results.items():
    for r in runs:
      scores = ", ".join(f"{k} {v:.2f}" for k, v in r["validation"].items())
      lines.append(f"| {name} | {r['seed']} | {r['best_step']} | {scores} |")
  lines += ["", "## Mean over seeds (95% bootstrap interval)", ""]
  lines += seeds.seed_table(per_task)
  text = "\n".join(lines) + "\n"
  summary = {"tasks": results, "table": text}
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "summary.md"), "w", encoding="utf-8") as f:
      f.write(text)
    checkpointing.write_json(os.path.join(model_dir, "summary.json"), summary)
  return summary

