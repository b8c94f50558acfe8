"""Run modes: train, eval and infer, assembled from gin-bound configs.

Each mode wires data (seqio), a model wrapper and the trainer together; none
of them contains training or model logic of its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from lmlab.wrappers.base import MASKED_LM, SEQ2SEQ, ModelWrapper
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.config import DataConfig, TrainConfig
from lmlab.inference import run_seq2seq_infer
from lmlab.training import pretrained
from lmlab.convert.starting_point import StartingPoint, check_vocabulary_fits, load_starting_point
from lmlab.training.trainer import Trainer, TrainSummary, ensure_writable, evaluate

logger = logging.getLogger(__name__)
RUN_MODES = ("train", "eval", "infer", "finetune")


def _data_api(data: Optional[DataConfig] = None):
  """The data pipeline module, with ``data.corpus`` (if any) registered: every path that reads data comes here.

  Imported lazily: it pulls in TensorFlow and registers the lmlab tasks.
  Registering a corpus is idempotent (its files are checked once).
  """
  from lmlab.data import pipeline  # pylint: disable=g-import-not-at-top
  if data is not None and data.corpus is not None:
    data.corpus.register()
  return pipeline


def _numpy_batches(dataset):
  return ({k: v._numpy() for k, v in batch.items()} for batch in dataset)  # pylint: disable=protected-access


def per_process_rows(global_batch_size: int, what: str = "TrainConfig.batch_size") -> int:
  """This process's share of a global batch (each process reads its own data shard)."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"{what}={global_batch_size} is not divisible by the {jax.process_count()} "
                     "processes; use a multiple of the process count.")
  return global_batch_size // jax.process_count()


def _eval_batches(data: DataConfig, batch_size: int):
  """Evaluation batches of ``batch_size`` rows in all, this process's rows only."""
  pipeline = _data_api(data)
  dataset = pipeline.get_dataset(
      data.mixture_or_task_name, data.eval_split, data.feature_lengths,
      per_process_rows(batch_size, "TrainConfig.eval_batch_size"),
      shuffle=False, seed=data.seed, repeat=False, shard_id=jax.process_index(),
      num_shards=jax.process_count(), tfds_data_dir=data.tfds_data_dir)
  return lambda: dataset.as_numpy_iterator()


def _write_config(model_dir: str, filename: str, text: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, filename), "w", encoding="utf-8") as f:
      f.write(text)


def resolve_task_name(name: str, vocabulary: Optional[str]) -> str:
  """The seqio name to read: ``name`` itself, or its copy tokenized with ``vocabulary``."""
  if not vocabulary:
    return name
  from lmlab.data import task_vocabulary, vocabularies  # pylint: disable=g-import-not-at-top
  _data_api().get_task_or_mixture(name)  # unknown names fail here, with suggestions
  vocab = vocabularies.load_vocabulary(vocabulary)
  return task_vocabulary.with_vocabulary(name, vocab, vocabularies.vocabulary_name(vocab))


def model_for_start(model: Optional[ModelWrapper], start: StartingPoint) -> ModelWrapper:
  """The run's wrapper with the network of the checkpoint it starts from.

  A Hugging Face folder or converted file brings its own network config; it
  replaces the gin-bound one (same wrapper and wrapper options). Without a
  wrapper, the family picks it: encoders are pretrained with masked LM, T5
  models with span corruption.
  """
  if start.network is None:
    return model or MaskedLMModel()
  if model is None:
    if start.family == "t5":
      from lmlab.wrappers.encoder_decoder import EncoderDecoderModel  # pylint: disable=g-import-not-at-top
      return EncoderDecoderModel(start.network)
    return MaskedLMModel(start.network)
  if type(model.config) is not type(start.network):
    raise ValueError(
        f"The init checkpoint {start.source} holds a {type(start.network).__name__} network but "
        f"run.model is a {type(model).__name__} of a {type(model.config).__name__}: use "
        f"{'EncoderDecoderModel' if start.family == 't5' else 'MaskedLMModel'} (or leave run.model "
        "unset to pick it from the checkpoint).")
  logger.info("Network config taken from %s (the gin-bound one is replaced).", start.source)
  return model.with_network(start.network)


def prepare(model: Optional[ModelWrapper], data: DataConfig, model_dir: str,
            start: Optional[StartingPoint] = None) -> tuple[ModelWrapper, DataConfig]:
  """Validates the task, its fit with the model and MODEL_DIR; sizes the model's vocabulary.

  The task is read with ``data.vocabulary`` if set, else with the vocabulary
  of the checkpoint the run starts from (a Hugging Face folder's tokenizer),
  else with its own. Returns the model and the data config naming the task
  actually read.
  """
  pipeline = _data_api(data)  # registers a configured corpus
  vocabulary = data.vocabulary or (start.vocabulary if start else None)
  name = resolve_task_name(data.mixture_or_task_name, vocabulary)
  if name != data.mixture_or_task_name:  # the corpus is registered; read its vocabulary copy
    data = dataclasses.replace(data, mixture_or_task_name=name, corpus=None)
  pipeline.get_task_or_mixture(name)  # unknown names fail here, early
  ensure_writable(model_dir)
  model = model_for_start(model, start) if start is not None else (model or MaskedLMModel())
  task_kind = SEQ2SEQ if pipeline.is_encoder_decoder_task(name) else MASKED_LM
  if model.task_kind != task_kind:
    raise ValueError(
        f"Task {name!r} yields {task_kind} examples but run.model is a {type(model).__name__}, "
        f"which consumes {model.task_kind} examples. Pair EncoderDecoderModel with the "
        "*_span_corruption/*_denoising tasks and MaskedLMModel with the *_mlm tasks.")
  if task_kind == SEQ2SEQ and not data.task_feature_lengths:
    raise ValueError(f"Task {name!r} needs DataConfig.task_feature_lengths, e.g. "
                     "{'inputs': 512, 'targets': 114}.")
  model.check_run()
  vocab_size = pipeline.vocabulary_for(name).vocab_size
  if start is not None and start.network is not None:
    check_vocabulary_fits(vocab_size, model.config, vocabulary or name)
  return model.with_vocab_size(vocab_size), data


def graft_start(model: ModelWrapper, start: StartingPoint):
  """``Trainer.init_params``: fresh parameters with the starting point's grafted in."""
  def graft(fresh):
    params, new, _ = pretrained.graft_pretrained(
        fresh, start.params, required_prefixes=start.required_prefixes(model.inherited_prefixes),
        source=f"checkpoint {start.source}")
    if new:
      logger.warning("Not in %s, initialised fresh: %s.", start.source, ", ".join(new[:8]))
    return params
  return graft


def train_dataset(data: DataConfig, rows: int, shard_id: Optional[int] = None,
                  num_shards: Optional[int] = None):
  """Endless training batches of ``rows`` rows from data shard ``shard_id`` (default: this process's)."""
  return _data_api(data).get_dataset(
      data.mixture_or_task_name, data.train_split, data.feature_lengths, rows,
      shuffle=data.shuffle, seed=data.seed, repeat=True,
      shard_id=jax.process_index() if shard_id is None else shard_id,
      num_shards=jax.process_count() if num_shards is None else num_shards,
      tfds_data_dir=data.tfds_data_dir)


def train(model: MaskedLMModel, data: DataConfig, config: TrainConfig,
          optimizer: OptimizerConfig, start: Optional[StartingPoint] = None) -> TrainSummary:
  """Pretrains ``model`` on ``data``, resuming from ``config.model_dir`` if it holds checkpoints.

  A run without checkpoints starts from ``start`` when given (continued
  pretraining), else from a fresh initialisation.
  """
  init = graft_start(model, start) if start is not None else None
  trainer = Trainer(model, optimizer, config, init_params=init)
  iterator = iter(train_dataset(data, per_process_rows(config.batch_size)))
  eval_batches = None
  if data.eval_split:
    eval_batches = _eval_batches(data, config.eval_batch_size or config.batch_size)
  summary = trainer.train(_numpy_batches(iterator), data_iterator=iterator,
                          eval_batches=eval_batches, sequence_length=data.sequence_length)
  _write_config(config.model_dir, "config.operative.gin", gin.operative_config_str())
  return summary


def restore_params(model: MaskedLMModel, config: TrainConfig, sequence_length: int):
  """Trainer, step and parameters of the newest checkpoint in MODEL_DIR (error if none).

  The optimizer config comes from gin, as in training, so the restored state
  has the structure the checkpoint was written with; the mesh may differ
  from the one it was written under.
  """
  trainer = Trainer(model, OptimizerConfig(), config)
  if trainer.checkpointer.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint in {trainer.checkpointer.directory}: train first (--run_mode=train) or "
        "point --gin.MODEL_DIR at a directory holding a trained run.")
  state, _ = trainer.initial_state(sequence_length)
  trainer.checkpointer.close()
  return trainer, int(state.step), state.params


def run_eval(model: MaskedLMModel, data: DataConfig, config: TrainConfig) -> dict:
  """Scores the newest checkpoint on the eval split and writes eval_results.json."""
  trainer, step, params = restore_params(model, config, data.sequence_length)
  metrics = evaluate(trainer.eval_step, params,
                     _eval_batches(data, config.eval_batch_size or config.batch_size)(), 0,
                     model.metrics)
  result = {"step": step, "task": data.mixture_or_task_name, "split": data.eval_split, **metrics}
  _write_config(config.model_dir, "eval_results.json", json.dumps(result, indent=2) + "\n")
  return result


@gin.configurable
def fill_mask_inputs(texts: Sequence[str] = ("In the beginning God created the <mask> and the earth.",)):
  """Texts for ``--run_mode=infer``; each ``<mask>`` marks a token to predict."""
  return list(texts)


def run_infer(model: MaskedLMModel, data: DataConfig, config: TrainConfig, top_k: int = 5) -> list[dict]:
  """Fills ``<mask>`` slots with the newest checkpoint; writes inference/fill_mask.jsonl."""
  from lmlab.data import vocabularies  # pylint: disable=g-import-not-at-top
  pipeline = _data_api(data)
  vocab = pipeline.vocabulary_for(data.mixture_or_task_name)
  mask = vocabularies.mask_id(vocab)
  _, step, params = restore_params(model, config, data.sequence_length)
  results = []
  for text in fill_mask_inputs():
    ids: list[int] = []
    for i, piece in enumerate(text.split("<mask>")):
      if i:
        ids.append(mask)
      ids.extend(vocab.encode(piece.strip()) if piece.strip() else [])
    if len(ids) > data.sequence_length:
      raise ValueError(f"Inference text has {len(ids)} tokens, more than sequence_length="
                       f"{data.sequence_length}: shorten it or raise DataConfig.sequence_length.")
    row = np.zeros((1, data.sequence_length), np.int32)
    row[0, :len(ids)] = ids
    batch = {"input_ids": row, "segment_ids": (row > 0).astype(np.int32),
             "positions": np.arange(data.sequence_length, dtype=np.int32)[None]}
    top_ids, top_probs = jax.device_get(model.predict(params, batch, top_k))
    filled = list(ids)
    candidates = []
    for pos in [p for p, t in enumerate(ids) if t == mask]:
      filled[pos] = int(top_ids[0, pos, 0])
      candidates.append([[vocab.decode([int(t)]), float(p)] for t, p in zip(top_ids[0, pos], top_probs[0, pos])])
    results.append({"input": text, "filled": vocab.decode(filled), "candidates": candidates, "step": step})
  if jax.process_index() == 0:
    out_dir = os.path.join(config.model_dir, "inference")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "fill_mask.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in results)
  return results


@gin.configurable
def run(run_mode: str = "train", model: Optional[ModelWrapper] = None,
        init_checkpoint: Optional[str] = None, init_checkpoint_step: Optional[int] = None):
  """Runs one mode with the gin-bound DataConfig, TrainConfig and OptimizerConfig (finetune: FinetuneConfig).

  Args:
    run_mode: One of ``RUN_MODES``.
    model: The model wrapper (None: masked LM, or what ``init_checkpoint`` holds).
    init_checkpoint: Train mode: where a run without checkpoints starts
      (continued pretraining): an lmlab MODEL_DIR, a Hugging Face folder
      (its network and tokenizer are used) or a converted parameter file.
      Fine-tuning reads ``FinetuneConfig.init_checkpoint_dir`` instead (the
      CLI's ``--init_checkpoint`` sets both).
    init_checkpoint_step: The step of an lmlab ``init_checkpoint`` (None: newest).
  """
  if run_mode not in RUN_MODES:
    raise ValueError(f"Unknown run_mode {run_mode!r}; choose one of {RUN_MODES}.")
  if run_mode == "finetune":  # FinetuneConfig + TrainConfig + OptimizerConfig
    from lmlab.glue import finetune  # pylint: disable=g-import-not-at-top
    return finetune.run_finetune()
  data, config = DataConfig(), TrainConfig()
  start = None
  if init_checkpoint:  # eval/infer take its network and vocabulary (the run was trained with them)
    start = load_starting_point(init_checkpoint, init_checkpoint_step, what="run.init_checkpoint")
  model, data = prepare(model, data, config.model_dir, start)
  _write_config(config.model_dir, "config.gin", gin.config_str())
  if run_mode == "train":
    return train(model, data, config, OptimizerConfig(), start)
  if run_mode == "eval":
    return run_eval(model, data, config)
  if model.task_kind == SEQ2SEQ:
    _, step, params = restore_params(model, config, data.sequence_length)
    return run_seq2seq_infer(model, params, step, data.mixture_or_task_name, data.eval_split,
                             data.feature_lengths, config.model_dir)
  return run_infer(model, data, config)
