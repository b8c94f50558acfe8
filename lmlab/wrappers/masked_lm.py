"""Masked-language-model pretraining wrapper (BERT, MosaicBERT, crammed BERT, BiGS)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from lmlab.models import EncoderConfig, EncoderForMaskedLM, flops
from lmlab.wrappers.base import (MASKED_LM, Batch, ModelWrapper, Params, metrics_from_sums,
                                 weighted_cross_entropy)

MLM_FEATURES = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


@gin.configurable
class MaskedLMModel(ModelWrapper):
  """BERT-style masked-language-model pretraining around ``EncoderForMaskedLM``."""

  features = MLM_FEATURES
  task_kind = MASKED_LM
  inherited_prefixes = ("encoder",)

  def __init__(self, config: EncoderConfig = gin.REQUIRED,
               max_prediction_fraction: Optional[float] = None):
    """Wraps an encoder config.

    Args:
      config: The encoder's hyper-parameters.
      max_prediction_fraction: If set, the MLM head runs only on
        ``ceil(fraction * length)`` positions per row, those with loss weight
        (the original BERT's ``max_predictions_per_seq``). Must be at least the
        masking rate; positions beyond it would be dropped and are counted in
        the ``dropped_predictions`` metric. None: the head runs everywhere.
    """
    self.config = config
    self.max_prediction_fraction = max_prediction_fraction

  def with_vocab_size(self, vocab_size: int) -> "MaskedLMModel":
    """Fills in ``config.vocab_size`` from the task's vocabulary if unset."""
    if self.config.vocab_size is None:
      return type(self)(self.config.with_vocab_size(vocab_size), self.max_prediction_fraction)
    if self.config.vocab_size < vocab_size:
      raise ValueError(
          f"EncoderConfig.vocab_size={self.config.vocab_size} is smaller than the task's vocabulary "
          f"({vocab_size} ids); leave vocab_size unset to take it from the task.")
    return self

  @property
  def module(self) -> nn.Module:
    return EncoderForMaskedLM(self.config)

  def init(self, rng: jax.Array, batch_size: int, sequence_length: int) -> Params:
    """Parameters (boxed with logical axis names) for inputs of the given shape."""
    ids = jnp.ones((batch_size, sequence_length), jnp.int32)
    variables = self.module.init({"params": rng, "dropout": rng}, ids, deterministic=True)
    return variables["params"]

  def apply(self, params: Params, batch: Batch, *, dropout_rng: Optional[jax.Array] = None,
            prediction_positions: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """MLM logits for a batch; dropout is active when ``dropout_rng`` is given."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    return self.module.apply(
        {"params": params}, batch["input_ids"], segment_ids=batch["segment_ids"],
        positions=batch["positions"], deterministic=dropout_rng is None, rngs=rngs,
        prediction_positions=prediction_positions)

  def prediction_positions(self, loss_weights: jnp.ndarray) -> Optional[jnp.ndarray]:
    """Per row, the ``k`` positions with loss weight (first ones first), or None."""
    if self.max_prediction_fraction is None:
      return None
    length = loss_weights.shape[-1]
    k = min(length, math.ceil(self.max_prediction_fraction * length))
    score = (loss_weights > 0).astype(jnp.float32) * 2.0 - jnp.arange(length) / length
    return jax.lax.top_k(score, k)[1]

  def loss_sums(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None,
                model_state: Optional[dict] = None) -> dict[str, jnp.ndarray]:
    """Summed loss, correct predictions and weight over the batch's masked tokens."""
    del model_state
    targets, weights = batch["targets"], batch["loss_weights"]
    positions = self.prediction_positions(weights)
    logits = self.apply(params, batch, dropout_rng=dropout_rng, prediction_positions=positions)
    if positions is not None:
      targets = jnp.take_along_axis(targets, positions, axis=1)
      weights = jnp.take_along_axis(weights, positions, axis=1)
    sums = weighted_cross_entropy(logits, targets, weights)
    sums["dropped_predictions"] = jnp.sum(batch["loss_weights"]) - sums["weight_sum"]
    sums["token_count"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
    return sums

  def forward_flops(self, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Encoder and MLM head (on the gathered positions, if any) over the batch."""
    rows, length = shapes["input_ids"]
    head = None
    if self.max_prediction_fraction is not None:
      head = min(length, math.ceil(self.max_prediction_fraction * length))
    return rows * flops.masked_lm_flops(self.config, length, head)

  def check_run(self) -> None:
    """The gathered MLM head must have room for every masked token."""
    try:
      mask_rate = gin.query_parameter("mlm_mask.mask_rate")
    except ValueError:
      mask_rate = 0.15  # mlm_mask's default
    fraction = self.max_prediction_fraction
    if fraction is not None and fraction < mask_rate:
      raise ValueError(
          f"MaskedLMModel.max_prediction_fraction={fraction} is below mlm_mask.mask_rate={mask_rate}: "
          "masked tokens would be dropped from the loss. Raise max_prediction_fraction (e.g. to "
          f"{mask_rate + 0.05:.2f}) or set it to None.")

  def predict_batch(self, params: Params, batch: Batch) -> jnp.ndarray:
    """The most likely token at every position."""
    return jnp.argmax(self.apply(params, batch), axis=-1)

  def predict(self, params: Params, batch: Batch, top_k: int = 5) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Top-k token ids and their probabilities at every position."""
    logits = self.apply(params, batch)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_probs, top_ids = jax.lax.top_k(probs, top_k)
    return top_ids, top_probs

  def metrics(self, sums: Mapping[str, Any]) -> dict[str, float]:
    scalars = metrics_from_sums(sums)
    if "dropped_predictions" in sums:
      scalars["dropped_predictions"] = float(sums["dropped_predictions"])
    return scalars
