"""``--run_mode=finetune``: GLUE/SuperGLUE fine-tuning from a pretraining checkpoint.

For each task and seed: build the task head on the pretrained network
(``lmlab.wrappers.classification`` for encoders, BiGS and EncT5; the T5 wrapper
itself for text-to-text), copy the pretrained parameters in
(``lmlab.training.pretrained``), train with the task's hyper-parameters, score the
validation split(s) with the official metrics every ``eval_every`` steps,
keep the best checkpoint by the task's main metric, then predict the test
split(s) with it and write leaderboard files. Several seeds give a mean and a
bootstrap confidence interval per task. Layout under ``model_dir``::

  <task>/seed_<n>/best/            orbax checkpoint of the best parameters
  <task>/seed_<n>/result.json      best step, validation scores, history
  <task>/seed_<n>/leaderboard/     this seed's submission files
  leaderboard/                     the best seed's files per task (zip and submit)
  summary.md, summary.json         validation scores, mean and CI over seeds

A seed whose ``result.json`` exists is not trained again, so a stopped run
picks up at the next unfinished seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lmlab.glue import leaderboard
from lmlab.glue import metrics as glue_metrics
from lmlab.glue import rows as finetune_data
from lmlab.training import pretrained
from lmlab.glue.evaluation import predict_split, resolve_predictions, validate
from lmlab.wrappers.classification import ClassificationModel
from lmlab.glue import spec as glue_spec
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lmlab.training.partitioning import Partitioner
from lmlab.training.trainer import TrainState, make_train_step, state_shardings

logger = logging.getLogger(__name__)
HEADS = ("auto", "classifier", "enct5", "text_to_text")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """What to fine-tune, from what, and how.

  Attributes:
    model_dir: Where results, checkpoints and leaderboard files go.
    tasks: lmlab task names (``glue_rte``, ``super_glue_boolq``), or
      ``glue``/``super_glue`` for every task with a training set.
      Diagnostics (AX, AX-b, AX-g) are predicted by their parent task's model
      (MNLI, RTE) when test predictions are written.
    network: The pretrained network's config (``@EncoderConfig()`` for
      BERT-style and BiGS, ``@T5Config()`` for T5/ByT5/MrT5); bind it with the
      model gin file used for pretraining.
    init_checkpoint_dir: The pretraining MODEL_DIR (None: train from a random
      initialisation, logged as such; for baselines).
    init_checkpoint_step: Which checkpoint there (None: the newest).
    head: ``auto`` (encoders: ``classifier``; T5: ``text_to_text``),
      ``classifier``, ``enct5`` or ``text_to_text``.
    byte_level: Use the byte vocabularies (ByT5/MrT5, byte-level encoders).
    sequence_length: Tokens per row (inputs for text-to-text); longer
      examples are truncated, longest sentence first, and counted in the log.
    target_length: Text-to-text target tokens (and decoding length).
    batch_size, eval_batch_size: Rows per training / evaluation batch.
    epochs: Passes over the training set (``train_steps`` overrides).
    train_steps: Optimizer steps; None: from ``epochs``.
    learning_rate, warmup_fraction, weight_decay: AdamW with linear warmup
      and linear decay (other optimizer settings from ``OptimizerConfig``).
    eval_every: Validate every this many steps (None: once per epoch and at
      the end; at least once).
    seeds: One fine-tune per seed (parameter init of the head, dropout, data
      order).
    pooling: Encoder pooling, ``mean`` or ``cls``.
    max_train_examples, max_eval_examples: Caps for quick runs and tests.
    write_test_predictions: Predict the test splits and write leaderboard files.
    per_task: Overrides of the fields above per task, e.g.
      ``{"glue_rte": {"learning_rate": 1e-5, "epochs": 10}}``.
    tfds_data_dir: Where the TFDS datasets are prepared (None: TFDS default).
  """
  model_dir: str = gin.REQUIRED
  tasks: Sequence[str] = gin.REQUIRED
  network: Optional[Union[EncoderConfig, T5Config]] = None
  init_checkpoint_dir: Optional[str] = None
  init_checkpoint_step: Optional[int] = None
  head: str = "auto"
  byte_level: bool = False
  sequence_length: int = 128
  target_length: int = 8
  batch_size: int = 32
  eval_batch_size: int = 64
  epochs: float = 3.0
  train_steps: Optional[int] = None
  learning_rate: float = 2e-5
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  eval_every: Optional[int] = None
  seeds: Sequence[int] = (0,)
  pooling: str = "mean"
  max_train_examples: Optional[int] = None
  max_eval_examples: Optional[int] = None
  write_test_predictions: bool = True
  per_task: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  tfds_data_dir: Optional[str] = None

  def for_task(self, name: str) -> "FinetuneConfig":
    overrides = dict(self.per_task.get(name, {}))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"FinetuneConfig.per_task[{name!r}] sets unknown fields {sorted(unknown)}.")
    return dataclasses.replace(self, **overrides)

  def task_names(self) -> list[str]:
    names = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
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


def _resolve_head(config: FinetuneConfig) -> str:
  if config.head not in HEADS:
    raise ValueError(f"FinetuneConfig.head={config.head!r} is not one of {HEADS}.")
  is_t5 = isinstance(config.network, T5Config)
  if config.head == "auto":
    return "text_to_text" if is_t5 else "classifier"
  if config.head in ("enct5", "text_to_text") and not is_t5:
    raise ValueError(f"head={config.head!r} needs a T5Config network; encoders use 'classifier'.")
  if config.head == "classifier" and is_t5:
    return "enct5"
  return config.head


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _glue_tasks():
  # Imported lazily: it pulls in TensorFlow and registers the tasks.
  from lmlab.glue import tasks as glue_tasks  # pylint: disable=g-import-not-at-top
  return glue_tasks


@dataclasses.dataclass
class TaskData:
  """The seqio task of one spec in one format, and how to turn its examples into batches."""
  spec: glue_spec.TaskSpec
  seqio_name: str
  text_to_text: bool
  vocabulary: Any
  config: FinetuneConfig
  single_sequence: bool = False  # EncT5: the text-to-text prompt as one encoder row

  @property
  def eos_id(self) -> int:
    return int(self.vocabulary.eos_id)

  def examples(self, split: str, *, shuffle: bool, seed: int, repeat: bool,
               limit: Optional[int]):
    import seqio  # pylint: disable=g-import-not-at-top
    task = seqio.get_mixture_or_task(self.seqio_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, seed=seed,
                               try_in_mem_cache=False)
    if limit:
      dataset = dataset.take(limit)
    if shuffle:
      dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      dataset = dataset.repeat()
    return dataset.as_numpy_iterator()

  def batches(self, split: str, batch_size: int, log: finetune_data.TruncationLog, **kwargs):
    cfg = self.config
    if self.text_to_text:
      make = lambda ex: finetune_data.t2t_row(ex, cfg.sequence_length, cfg.target_length,
                                              self.eos_id, log)
      consumed = finetune_data.T2T_INPUTS
    elif self.single_sequence:
      make = lambda ex: finetune_data.encoder_row({"inputs_a": ex["inputs"]}, cfg.sequence_length,
                                                  self.eos_id, log)
      consumed = finetune_data.T2T_INPUTS
    else:
      make = lambda ex: finetune_data.encoder_row(ex, cfg.sequence_length, self.eos_id, log)
      consumed = finetune_data.ENCODER_INPUTS
    label_dtype = np.float32 if self.spec.kind == "regression" else np.int32
    return finetune_data.batches(self.examples(split, **kwargs), make, batch_size, consumed,
                                 label_dtype=label_dtype)


def task_data(spec: glue_spec.TaskSpec, config: FinetuneConfig, head: str) -> TaskData:
  import seqio  # pylint: disable=g-import-not-at-top
  glue_tasks = _glue_tasks()
  # T5-family models (text to text and EncT5) read the prompt in the T5 vocabulary.
  t5_vocabulary = head in ("text_to_text", "enct5")
  key = ("byt5_t2t" if config.byte_level else "t2t") if t5_vocabulary else (
      "encoder_bytes" if config.byte_level else "encoder")
  name = glue_tasks.TASK_NAMES[spec.name][key]
  feature = "inputs" if t5_vocabulary else "inputs_a"
  vocabulary = seqio.get_mixture_or_task(name).output_features[feature].vocabulary
  return TaskData(spec, name, head == "text_to_text", vocabulary, config,
                  single_sequence=head == "enct5")


def count_examples(data: TaskData, split: str, limit: Optional[int]) -> int:
  """Rows in a split (after candidate expansion), counted once to size the schedule."""
  count = 0
  for _ in data.examples(split, shuffle=False, seed=0, repeat=False, limit=limit):
    count += 1
  return count


# ---------------------------------------------------------------------------
# Model, parameters, steps
# ---------------------------------------------------------------------------


def build_model(config: FinetuneConfig, spec: glue_spec.TaskSpec, head: str, vocab_size: int):
  network = config.network.with_vocab_size(vocab_size) if config.network.vocab_size is None \
      else config.network
  if head == "text_to_text":
    return EncoderDecoderModel(network)
  if isinstance(network, EncoderConfig) and network.position_scheme == "learned":
    finetune_data.check_sequence_length(config.sequence_length, network.max_positions,
                                        "EncoderConfig.max_positions")
  return ClassificationModel(network, spec, config.pooling)


def initial_params(model, config: FinetuneConfig, seed: int, sequence_length: int) -> dict:
  """Fresh parameters with the pretrained ones grafted in (host arrays)."""
  fresh = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, 1, sequence_length)))(
      jax.random.PRNGKey(seed))
  fresh = jax.device_get(fresh)
  if config.init_checkpoint_dir is None:
    logger.warning("FinetuneConfig.init_checkpoint_dir is None: fine-tuning from a random init.")
    return fresh
  _, old = pretrained.load_pretrained_params(config.init_checkpoint_dir, config.init_checkpoint_step)
  required = ("encoder",) if isinstance(model, ClassificationModel) and not model.is_t5 else (
      "token_embedder", "encoder", "decoder")
  params, _, _ = pretrained.graft_pretrained(fresh, old, required_prefixes=required,
                                             source=f"checkpoint in {config.init_checkpoint_dir}")
  return params


class Steps:
  """Jitted train and predict steps over the partitioner's mesh."""

  def __init__(self, model, config: FinetuneConfig, total_steps: int, sequence_length: int,
               partitioner: Optional[Partitioner] = None):
    self.model = model
    self.partitioner = p = partitioner or Partitioner()
    p.check_batch_size(config.batch_size, "FinetuneConfig.batch_size")
    p.check_batch_size(config.eval_batch_size, "FinetuneConfig.eval_batch_size")
    base = OptimizerConfig()
    optimizer_config = dataclasses.replace(
        base, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        schedule="linear", end_lr_fraction=0.0,
        warmup_steps=int(round(config.warmup_fraction * total_steps)))
    self.optimizer = make_optimizer(optimizer_config, total_steps)
    schedule = make_schedule(optimizer_config, total_steps)
    self.shardings = state_shardings(p, model, self.optimizer, 1, sequence_length)
    self._train = p.jit(make_train_step(model, self.optimizer, schedule),
                        in_shardings=(self.shardings, None),
                        out_shardings=(self.shardings, p.replicated()), donate_argnums=(0,))
    if isinstance(model, EncoderDecoderModel):
      predict = lambda params, batch: model.predict(
          params, batch["encoder_input_tokens"], max_decode_length=config.target_length).tokens
    else:
      predict = model.predict_batch
    self._predict = p.jit(predict, in_shardings=(self.shardings.params, None),
                          out_shardings=p.replicated())

  def initial_state(self, params: dict, seed: int) -> TrainState:
    def make(params):
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.optimizer.init(params),
                        rng=jax.random.PRNGKey(seed + 1), model_state=self.model.initial_model_state())
    return self.partitioner.jit(make, in_shardings=(self.shardings.params,),
                                out_shardings=self.shardings)(params)

  def train(self, state: TrainState, batch: dict):
    return self._train(state, self.partitioner.shard_batch(batch))

  def predict(self, params, batch: dict) -> np.ndarray:
    return np.asarray(jax.device_get(self._predict(params, self.partitioner.shard_batch(batch))))


# ---------------------------------------------------------------------------
# One seed
# ---------------------------------------------------------------------------


def _save_params(path: str, params) -> None:
  if os.path.exists(path):
    shutil.rmtree(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()


def _restore_params(path: str, like) -> Any:
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
  return ocp.StandardCheckpointer().restore(path, abstract)


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, default=float)
    f.write("\n")
  os.replace(tmp, path)


@dataclasses.dataclass
class TaskRun:
  """What every seed of one task shares: data, model, schedule and the compiled steps."""
  spec: glue_spec.TaskSpec
  config: FinetuneConfig
  head: str
  data: TaskData
  model: Any
  total_steps: int
  eval_every: int
  steps: Steps


def prepare_task(spec: glue_spec.TaskSpec, config: FinetuneConfig, head: str,
                 partitioner: Optional[Partitioner] = None) -> TaskRun:
  data = task_data(spec, config, head)
  model = build_model(config, spec, head, data.vocabulary.vocab_size)
  train_rows = count_examples(data, spec.train_split, config.max_train_examples)
  steps_per_epoch = max(1, math.ceil(train_rows / config.batch_size))
  total = config.train_steps or max(1, int(round(config.epochs * steps_per_epoch)))
  eval_every = config.eval_every or steps_per_epoch
  logger.info("%s: %d training rows, %d steps, validating every %d.", spec.name, train_rows,
              total, eval_every)
  steps = Steps(model, config, total, config.sequence_length, partitioner)
  return TaskRun(spec, config, head, data, model, total, eval_every, steps)


def finetune_seed(task: TaskRun, seed: int) -> dict:
  """Trains one seed, keeps its best checkpoint, writes its test predictions; returns its result."""
  spec, config, head, data, model = task.spec, task.config, task.head, task.data, task.model
  steps, total, eval_every = task.steps, task.total_steps, task.eval_every
  run_dir = os.path.join(config.model_dir, spec.name, f"seed_{seed}")
  os.makedirs(run_dir, exist_ok=True)
  state = steps.initial_state(initial_params(model, config, seed, config.sequence_length), seed)
  log = finetune_data.TruncationLog(f"{spec.name}/{spec.train_split}")
  train_batches = data.batches(spec.train_split, config.batch_size, log, shuffle=True, seed=seed,
                               repeat=True, limit=config.max_train_examples)
  history, best = [], None
  best_path = os.path.join(run_dir, "best")
  losses = []
  for step in range(1, total + 1):
    batch, _ = next(train_batches)
    state, metrics = steps.train(state, batch)
    losses.append(metrics)
    if step % eval_every == 0 or step == total:
      sums = jax.device_get(losses)
      train_loss = sum(float(m["loss_sum"]) for m in sums) / max(
          sum(float(m["weight_sum"]) for m in sums), 1e-9)
      losses = []
      scores = validate(steps, state.params, data)
      history.append({"step": step, "train_loss": train_loss, **scores})
      logger.info("%s seed %d step %d: train loss %.4f, validation %s", spec.name, seed, step,
                  train_loss, {k: round(v, 2) for k, v in scores.items()})
      if best is None or scores["main"] > best["main"]:
        best = {"step": step, **scores}
        _save_params(best_path, state.params)
  log.report()
  result = {"task": spec.name, "seed": seed, "head": head, "train_steps": total,
            "best_step": best["step"], "validation": {k: v for k, v in best.items() if k != "step"},
            "history": history}
  if config.write_test_predictions:
    params = _restore_params(best_path, state.params)
    result["leaderboard_files"] = write_test_predictions(steps, params, data, config, head,
                                                         os.path.join(run_dir, "leaderboard"))
  _write_json(os.path.join(run_dir, "result.json"), result)
  return result


def write_test_predictions(steps: Steps, params, data: TaskData, config: FinetuneConfig,
                           head: str, directory: str) -> list[str]:
  """Leaderboard files of the task's test split(s) and of the diagnostics it predicts."""
  written = []
  specs = [data.spec] + [s for s in glue_spec.TASKS.values() if s.diagnostic_of == data.spec.name]
  for spec in specs:
    spec_data = data if spec is data.spec else task_data(spec, config, head)
    for index, split in enumerate(spec.test_splits):
      outputs, meta = predict_split(steps, params, spec_data, split, config.max_eval_examples)
      resolved = resolve_predictions(spec, outputs, meta, spec_data.text_to_text)
      written.append(leaderboard.write_submission(directory, spec, index, resolved["ids"],
                                                  resolved["predictions"]))
  return written


# ---------------------------------------------------------------------------
# Many tasks and seeds
# ---------------------------------------------------------------------------


def run_finetune(config: Optional[FinetuneConfig] = None,
                 partitioner: Optional[Partitioner] = None) -> dict:
  """Fine-tunes every task and seed of ``config``; writes the summary and leaderboard folder."""
  config = config or FinetuneConfig()
  if config.network is None:
    raise ValueError("FinetuneConfig.network is unset: bind it to the pretrained network, e.g. "
                     "FinetuneConfig.network = @EncoderConfig() after including the model gin file.")
  if jax.process_count() > 1:
    raise ValueError("--run_mode=finetune runs in one process (GLUE-sized data); use the devices "
                     "of one host, or run one task per host.")
  names = config.task_names()
  glue_tasks = _glue_tasks()
  if config.tfds_data_dir:  # read the data from where it was checked to be prepared
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(config.tfds_data_dir)
  for name in names:  # fail fast, before any training, on data that is not prepared
    glue_tasks.check_prepared(name, config.tfds_data_dir)
  os.makedirs(config.model_dir, exist_ok=True)
  results: dict[str, list[dict]] = {}
  for name in names:
    task_config = config.for_task(name)
    head = _resolve_head(task_config)
    spec = glue_spec.TASKS[name]
    results[name] = []
    task = None  # built on the first seed that needs training, then shared
    for seed in task_config.seeds:
      done = _finished_result(task_config.model_dir, name, seed)
      if done is None:
        task = task or prepare_task(spec, task_config, head, partitioner)
        done = finetune_seed(task, seed)
      results[name].append(done)
    if task_config.write_test_predictions:
      _publish_best_seed(config.model_dir, results[name])
  return write_summary(config.model_dir, results)


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
  lines += glue_metrics.seed_table(per_task)
  text = "\n".join(lines) + "\n"
  with open(os.path.join(model_dir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(text)
  summary = {"tasks": results, "table": text}
  _write_json(os.path.join(model_dir, "summary.json"), summary)
  return summary
