"""Train state, jitted train/eval/predict steps and THE training loop of every run mode.

The loop is model-agnostic: it asks a model wrapper (``lmlab.wrappers.base``)
for summed loss statistics, normalises once per optimizer step by the total
loss weight (so gradient accumulation and data parallelism give the same
update as one big batch on one device), leaves placement on devices to a
``lmlab.training.partitioning.Partitioner`` and checkpoint mechanics to
``lmlab.training.checkpointing``.

Pretraining, fine-tuning and evaluation differ only in what they hand the
``Trainer``: an ``init_params`` function (a fine-tune grafts pretrained
parameters onto a fresh head), a ``validate`` function scoring the
parameters with a task's own metrics (the best score's parameters are kept),
and a data source that can start at any step (so a resumed run sees exactly
the batches an uninterrupted one would).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from lmlab.training import checkpointing, compilation_cache
from lmlab.training.preemption import PreemptedError, StopSignal
from lmlab.training.time_budget import TimeBudget
from lmlab.training.metric_logging import MetricLogger
from lmlab.training.mfu import Throughput
from lmlab.wrappers.base import metrics_from_sums
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lmlab.training.partitioning import Partitioner, with_shardings
from lmlab.training.config import TrainConfig

logger = logging.getLogger(__name__)
Batch = Mapping[str, np.ndarray]


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss."""


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position."""

  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray  # raw uint32[2] key data: portable across checkpoints
  model_state: Any = flax.struct.field(default_factory=dict)  # e.g. MrT5's controller


def create_train_state(model, optimizer: optax.GradientTransformation, seed: int,
                       batch_size: int, sequence_length: int) -> TrainState:
  """Freshly initialised state (parameters unboxed from their axis metadata).

  Call it under ``jax.jit`` with ``out_shardings`` to create every array
  directly in its shards.
  """
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = nn.meta.unbox(model.init(init_rng, batch_size, sequence_length))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=train_rng,
                    model_state=model.initial_model_state())


def state_shardings(partitioner: Partitioner, model, optimizer: optax.GradientTransformation,
                    batch_size: int, sequence_length: int) -> TrainState:
  """Where each array of the train state lives, from the model's logical axis names."""
  with partitioner.context():
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch_size, sequence_length))
  params = partitioner.param_shardings(boxed)
  abstract_params = nn.meta.unbox(boxed)
  opt_state = partitioner.optimizer_state_shardings(
      optimizer, jax.eval_shape(optimizer.init, abstract_params), params, abstract_params)
  replicated = partitioner.replicated()
  model_state = jax.tree_util.tree_map(lambda _: replicated, model.initial_model_state())
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated,
                    model_state=model_state)


def _split_microbatches(batch: Batch, accum_steps: int) -> Batch:
  """``[accum_steps, rows // accum_steps, ...]``; micro-batch ``i`` takes rows ``i::accum_steps``.

  Strided rows keep every micro-batch spread over all data-parallel shards
  (each device holds a contiguous block of the global batch), so splitting
  moves no data between devices.
  """
  def split(x):
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree_util.tree_map(split, batch)


# Train-step metrics that are a current value, not a sum over steps.
STATE_METRIC_PREFIX = "state/"
LAST_VALUE_METRICS = ("learning_rate", "grad_norm")


def make_train_step(model, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accum_steps: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """One optimizer step over a global batch, split into ``accum_steps`` micro-batches."""

  def grads_and_sums(params, batch, rng, model_state):
    def loss_fn(p):
      sums = model.loss_sums(p, batch, dropout_rng=rng, model_state=model_state)
      return sums["loss_sum"] + sums.get("aux_loss_sum", 0.0), sums
    return jax.grad(loss_fn, has_aux=True)(params)

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    if accum_steps == 1:
      grads, sums = grads_and_sums(state.params, batch, step_rng, state.model_state)
    else:
      def accumulate(carry, micro):
        index, microbatch = micro
        g, s = grads_and_sums(state.params, microbatch, jax.random.fold_in(step_rng, index),
                              state.model_state)
        return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None
      zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
      zero_sums = jax.tree_util.tree_map(
          jnp.zeros_like, jax.eval_shape(lambda: grads_and_sums(
              state.params, jax.tree_util.tree_map(lambda x: x[0], _split_microbatches(batch, accum_steps)),
              step_rng, state.model_state)[1]))
      (grads, sums), _ = jax.lax.scan(
          accumulate, (zero_grads, zero_sums),
          (jnp.arange(accum_steps), _split_microbatches(batch, accum_steps)))
    grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(sums["weight_sum"], 1.0), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
    metrics.update({f"{STATE_METRIC_PREFIX}{k}": v for k, v in state.model_state.items()})
    model_state = model.update_model_state(state.model_state, sums)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         model_state=model_state), metrics

  return train_step


def make_eval_step(model) -> Callable[[Any, Batch], dict]:
  return lambda params, batch: model.loss_sums(params, batch)


def _all_processes_have_batch(has_batch: bool) -> bool:
  """Whether every process still has an eval batch (a collective; trivially local on one)."""
  if jax.process_count() == 1:
    return has_batch
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray(has_batch))))


def evaluate(eval_step, params, batches: Iterator[Batch], max_batches: int = 0,
             metrics_fn: Callable[[Mapping[str, float]], dict] = metrics_from_sums) -> dict[str, float]:
  """Loss/accuracy/perplexity over ``max_batches`` batches (0: all).

  With several processes each reads its own shard, and shards may hold
  different numbers of batches; evaluation stops when any process runs out,
  so every process takes part in every step.
  """
  totals: dict[str, float] = {}
  iterator = iter(batches)
  count = 0
  while not max_batches or count < max_batches:
    batch = next(iterator, None)
    if not _all_processes_have_batch(batch is not None):
      break
    for k, v in jax.device_get(eval_step(params, batch)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
    count += 1
  if not totals:
    raise ValueError("The evaluation split yielded no batch: use a smaller eval_batch_size.")
  return metrics_fn(totals)


def ensure_writable(model_dir: str) -> None:
  """Creates MODEL_DIR and proves a file can be written there."""
  if "://" in model_dir:
    return  # remote filesystems are checked by the first write
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = os.path.join(model_dir, f".write_probe_{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(
        f"MODEL_DIR {model_dir!r} is not writable ({e.strerror or e}). Choose a directory you can "
        "write to with --gin.MODEL_DIR=...") from e


@dataclasses.dataclass
class TrainSummary:
  """What a finished (or resumed-and-finished) training run reports."""

  start_step: int
  final_step: int
  seconds: float
  first_train_loss: Optional[float]
  final_train_loss: Optional[float]
  initial_eval: Optional[dict]
  final_eval: Optional[dict]
  checkpoint_step: Optional[int]
  tokens_per_second: float
  validation_history: list = dataclasses.field(default_factory=list)
  best: Optional[dict] = None


# A data source: an iterator of batches, or a function giving the batches from a step on.
BatchSource = Union[Iterator[Batch], Callable[[int], Iterator[Batch]]]


class Trainer:
  """Runs any mode's training: init or resume, step, log, evaluate, keep the best, checkpoint.

  Arrays live where ``partitioner`` says (default: ``Partitioner()``, the gin-bound
  ``MeshConfig``). The state is created directly in its shards, steps are jitted
  with explicit input and output shardings, and batches arrive as this
  process's rows and are assembled into global arrays.

  Args:
    model: A ``ModelWrapper``.
    optimizer_config: Optimizer and schedule.
    config: Loop, evaluation and checkpoint settings; ``config.model_dir`` is
      this run's directory.
    partitioner: Device mesh and sharding rules.
    init_params: Where a run without a checkpoint starts (T5X's "restore
      config"): called with freshly initialised parameters as host numpy
      arrays, returns the parameters to start from (e.g. pretrained ones
      grafted in). None: the fresh initialisation.
  """

  def __init__(self, model, optimizer_config: OptimizerConfig, config: TrainConfig,
               partitioner: Optional[Partitioner] = None,
               init_params: Optional[Callable[[Any], Any]] = None):
    self.model = model
    self.config = config
    self.partitioner = partitioner or Partitioner()
    self.init_params = init_params
    self.partitioner.check_batch_size(
        config.batch_size // config.grad_accum_steps,
        "TrainConfig.batch_size // grad_accum_steps" if config.grad_accum_steps > 1
        else "TrainConfig.batch_size")
    if config.eval_batch_size:
      self.partitioner.check_batch_size(config.eval_batch_size, "TrainConfig.eval_batch_size")
    compilation_cache.enable(config.model_dir, config.compilation_cache_dir,
                             config.compilation_cache_min_compile_secs)
    self.schedule = make_schedule(optimizer_config, config.train_steps)
    self.optimizer = make_optimizer(optimizer_config, config.train_steps)
    self.checkpointer = checkpointing.Checkpointer(
        checkpointing.checkpoint_dir(config.model_dir), keep=config.keep_checkpoints,
        async_save=config.async_checkpointing)
    self.state_shardings = None
    self._steps_for = None  # the sequence length the steps were built for
    self._predict_steps: dict[Any, Callable] = {}

  def for_run(self, config: TrainConfig) -> "Trainer":
    """A trainer for another run directory or seed that reuses this one's compiled steps.

    ``config`` may differ from this trainer's only in ``model_dir`` and ``seed``
    (e.g. the seeds of one fine-tuning task).
    """
    same = dataclasses.replace(config, model_dir=self.config.model_dir, seed=self.config.seed)
    if same != self.config:
      raise ValueError("Trainer.for_run: only model_dir and seed may change between runs.")
    other = copy.copy(self)
    other.config = config
    other.checkpointer = checkpointing.Checkpointer(
        checkpointing.checkpoint_dir(config.model_dir), keep=config.keep_checkpoints,
        async_save=config.async_checkpointing)
    return other

  def _build_steps(self, sequence_length: Any) -> None:
    """Shardings of the state, and the train/eval steps jitted with them."""
    if self._steps_for == sequence_length:
      return
    self._steps_for = sequence_length
    p, cfg = self.partitioner, self.config
    self.state_shardings = state_shardings(p, self.model, self.optimizer, p.data_parallel_size,
                                           sequence_length)
    # Batches arrive already placed (Partitioner.shard_batch shards every
    # feature's leading axis, whatever its rank): their shardings (None) are left as given.
    train_step = p.jit(make_train_step(self.model, self.optimizer, self.schedule,
                                       cfg.grad_accum_steps),
                       in_shardings=(self.state_shardings, None),
                       out_shardings=(self.state_shardings, p.replicated()), donate_argnums=(0,))
    eval_step = p.jit(make_eval_step(self.model),
                      in_shardings=(self.state_shardings.params, None),
                      out_shardings=p.replicated())
    self.train_step = lambda state, batch: train_step(state, p.shard_batch(batch))
    self.eval_step = lambda params, batch: eval_step(params, p.shard_batch(batch))

  def predict(self, params, batch: Batch, **options) -> np.ndarray:
    """``model.predict_batch(params, batch, **options)`` over the mesh, as a host array.

    ``batch`` holds this process's rows; the result holds every process's
    rows (the global batch), in order.
    """
    key = tuple(sorted(options.items()))
    if key not in self._predict_steps:
      p = self.partitioner
      fn = lambda params, batch: self.model.predict_batch(params, batch, **options)
      self._predict_steps[key] = p.jit(fn, in_shardings=(self.state_shardings.params, None),
                                       out_shardings=p.replicated())
    out = self._predict_steps[key](params, self.partitioner.shard_batch(batch))
    return np.asarray(jax.device_get(out))

  def _fresh_state(self, make: Callable[[], TrainState]) -> TrainState:
    p = self.partitioner
    if self.init_params is None:
      return p.jit(make, out_shardings=self.state_shardings)()
    # Initialise on the host (every process alike), let init_params change the
    # parameters, then place them in their shards and build the optimizer state there.
    host = jax.device_get(jax.jit(lambda: make().params)())
    start = self.init_params(host)
    params = jax.tree_util.tree_map(
        lambda value, sharding: jax.make_array_from_callback(
            np.shape(value), sharding, lambda index, value=value: np.asarray(value)[index]),
        start, self.state_shardings.params)
    return p.jit(lambda params: make().replace(params=params, opt_state=self.optimizer.init(params)),
                 in_shardings=(self.state_shardings.params,),
                 out_shardings=self.state_shardings)(params)

  def initial_state(self, sequence_length: Any, data_iterator=None) -> tuple[TrainState, bool]:
    """Restores the newest good checkpoint, else initialises; returns (state, resumed).

    A checkpoint is restored straight into this run's shardings, whatever
    mesh it was written under.
    """
    self._build_steps(sequence_length)
    p = self.partitioner
    make = lambda: create_train_state(self.model, self.optimizer, self.config.seed,
                                      p.data_parallel_size, sequence_length)
    with p.context():
      abstract = jax.eval_shape(make)
    abstract = with_shardings(abstract, self.state_shardings)
    step, restored = self.checkpointer.restore_latest(abstract, data_iterator)
    if step is not None:
      logger.info("Resumed from checkpoint step %d in %s", step, self.checkpointer.directory)
      return restored, True
    return self._fresh_state(make), False

  def train(self, train_batches: BatchSource, data_iterator=None,
            eval_batches: Optional[Callable[[], Iterator[Batch]]] = None,
            sequence_length: Any = 128,
            validate: Optional[Callable[[Any], Mapping[str, float]]] = None,
            best_metric: Optional[str] = None) -> TrainSummary:
    """Trains to ``config.train_steps``, resuming from MODEL_DIR if possible.

    Args:
      train_batches: This process's training batches: an iterator (positioned
        by ``data_iterator``'s checkpoint on resume) or a function of the
        first step to run that returns the batches from that step on.
      data_iterator: A tf.data iterator saved with each checkpoint.
      eval_batches: Held-out batches scored with the model's loss metrics
        every ``config.eval_every`` steps and at the end.
      sequence_length: Row length (or per-feature lengths) for initialisation.
      validate: Scores parameters with a task's own metrics (e.g. GLUE's),
        run on the same cadence; logged as ``validation/*``.
      best_metric: With ``validate``: keep the parameters of the best value of
        this score (higher is better) in ``MODEL_DIR/best``.
    """
    cfg = self.config
    state, _ = self.initial_state(sequence_length, data_iterator)
    start_step = int(state.step)
    metric_log = MetricLogger(cfg.model_dir)
    run_eval = lambda params: evaluate(self.eval_step, params, eval_batches(), cfg.eval_steps,
                                       self.model.metrics)
    best = checkpointing.read_best(cfg.model_dir) if best_metric else None
    history: list[dict] = []

    def run_validation(step: int, params) -> None:
      nonlocal best
      if validate is None:
        return
      # Let a background checkpoint write finish first: validation reads data
      # files, and under TFDS's mocked file system (tests) the two collided.
      self.checkpointer.wait()
      scores = dict(validate(params))
      history.append({"step": step, **scores})
      metric_log.write(step, "validation", scores)
      logger.info("step %d validation: %s", step, {k: round(v, 4) for k, v in scores.items()})
      if best_metric and (best is None or scores[best_metric] > best["score"]):
        checkpointing.save_best(cfg.model_dir, step, best_metric, scores[best_metric], params)
        best = {"step": step, "metric": best_metric, "score": float(scores[best_metric])}

    initial_eval = final_eval = None
    if eval_batches is not None and start_step == 0:
      initial_eval = run_eval(state.params)
      metric_log.write(0, "eval", initial_eval)
    bar = tqdm.tqdm(total=cfg.train_steps, initial=start_step, desc="train", unit="step",
                    disable=not cfg.progress_bar or jax.process_index() != 0, dynamic_ncols=True)
    pending: list[tuple[int, dict]] = []  # per-step device metrics since the last host sync
    first_loss = last_loss = None
    last_saved = start_step if start_step else None
    tokens = 0.0
    throughput = Throughput(self.model, cfg.peak_tflops_per_device)
    t_start = t_window = time.perf_counter()

    def flush_metrics(step: int) -> None:
      nonlocal first_loss, last_loss, t_window, tokens
      if not pending:
        return
      host = jax.device_get([m for _, m in pending])
      for (s, _), m in zip(pending, host):
        if not math.isfinite(float(m["loss_sum"])):
          good = self.checkpointer.latest_step()
          raise NonFiniteLossError(
              f"Training loss became {float(m['loss_sum'])} at step {s + 1}. The last good checkpoint "
              f"(step {good}) is kept in {self.checkpointer.directory}. Lower the learning rate, "
              "lengthen warmup, enable gradient clipping, or train in float32.")
      last = {k: float(v) for k, v in host[-1].items()
              if k in LAST_VALUE_METRICS or k.startswith(STATE_METRIC_PREFIX)}
      sums = {k: sum(float(m[k]) for m in host) for k in host[-1] if k not in last}
      window_tokens_now = sums["token_count"]
      now = time.perf_counter()
      scalars = self.model.metrics(sums)
      scalars.update(last, tokens_per_second=window_tokens_now / max(now - t_window, 1e-9),
                     **throughput.scalars(len(host), now - t_window))
      tokens += window_tokens_now
      t_window = now
      first_loss = scalars["loss"] if first_loss is None else first_loss
      last_loss = scalars["loss"]
      metric_log.write(step, "train", scalars)
      bar.set_postfix(loss=f"{scalars['loss']:.3f}", tok_s=f"{scalars['tokens_per_second']:.0f}")
      pending.clear()

    def save(step: int) -> None:
      nonlocal last_saved
      flush_metrics(step)  # never checkpoint a state that went non-finite
      self.checkpointer.save(step, state, data_iterator)
      last_saved = step

    end_step = min(cfg.train_steps, cfg.stop_after_step or cfg.train_steps)
    batches = train_batches(start_step) if callable(train_batches) else train_batches
    stop = StopSignal()
    budget = TimeBudget(cfg.time_budget_seconds)
    try:
      with stop.installed():
        for step in range(start_step, end_step):
          batch = next(batches)
          throughput.observe_batch(batch)
          state, metrics = self.train_step(state, batch)
          pending.append((step, metrics))
          done = step + 1
          bar.update(1)
          at_log = done % cfg.log_every == 0 or done == end_step
          if at_log:
            flush_metrics(done)
          evaluate_now = cfg.eval_every and done % cfg.eval_every == 0 and done != end_step
          if evaluate_now and eval_batches is not None:
            metric_log.write(done, "eval", run_eval(state.params))
          if evaluate_now:
            run_validation(done, state.params)
          if done % cfg.checkpoint_every == 0 or done == end_step:
            save(done)
          # One process polls every step; several agree (a collective) at logging steps.
          if done != end_step and budget.spent(metrics, at_log):
            if last_saved != done:
              save(done)
            logging.warning("Time budget of %.0f s spent at step %d of %d: training ends here.",
                            cfg.time_budget_seconds, done, cfg.train_steps)
            break
          if done != end_step and (at_log or jax.process_count() == 1) and stop.agreed():
            if last_saved != done:
              save(done)
            self.checkpointer.wait()
            raise PreemptedError(done, str(self.checkpointer.directory))
      if end_step > start_step:
        if eval_batches is not None:
          final_eval = run_eval(state.params)
          metric_log.write(int(state.step), "eval", final_eval)
        run_validation(int(state.step), state.params)
    finally:
      bar.close()
      self.checkpointer.close()
      metric_log.close()
    seconds = time.perf_counter() - t_start
    self.state = state
    return TrainSummary(start_step=start_step, final_step=int(state.step), seconds=seconds,
                        first_train_loss=first_loss, final_train_loss=last_loss,
                        initial_eval=initial_eval, final_eval=final_eval,
                        checkpoint_step=last_saved, tokens_per_second=tokens / max(seconds, 1e-9),
                        validation_history=history, best=best)
