"""Model wrappers: loss, metrics and prediction around pure Flax networks.

This is the T5X "models.py" role. The networks in ``lmlab.models`` only map
tokens to logits; a wrapper knows which batch features a family consumes, how
its loss is normalised and what its metrics are, so the trainer stays
model-agnostic.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from lmlab.models import EncoderConfig, EncoderForMaskedLM

Batch = Mapping[str, jnp.ndarray]
Params = Any

MLM_FEATURES = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def weighted_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray,
                           weights: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Summed token cross-entropy and accuracy over positions with weight > 0.

  Sums (not means) are returned so that gradient accumulation and data
  parallelism can add them up and normalise once by the total weight.
  """
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(losses * weights),
      "correct_sum": jnp.sum(correct * weights),
      "weight_sum": jnp.sum(weights),
  }


class ModelWrapper:
  """What the trainer needs from a model family beyond ``init``/``loss_sums``.

  ``loss_sums`` returns summed statistics: ``loss_sum`` (the reported loss),
  ``weight_sum`` (its normaliser), ``correct_sum``, ``token_count`` and
  optionally ``aux_loss_sum``, which is added to the training objective but
  not to the reported loss (z-loss, MrT5's deletion penalty). A family with
  state that is not trained by gradients (MrT5's PI controller) keeps it in
  ``model_state``, which is checkpointed with the train state.
  """

  features: tuple[str, ...] = ()

  def initial_model_state(self) -> dict[str, jnp.ndarray]:
    return {}

  def update_model_state(self, model_state: dict, sums: Mapping[str, jnp.ndarray]) -> dict:
    del sums
    return model_state

  def metrics(self, sums: Mapping[str, Any]) -> dict[str, float]:
    """Scalars to log from statistics summed over steps or batches."""
    return metrics_from_sums(sums)


@gin.configurable
class MaskedLMModel(ModelWrapper):
  """BERT-style masked-language-model pretraining around ``EncoderForMaskedLM``."""

  features = MLM_FEATURES

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


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
  """Loss, accuracy and perplexity from summed statistics."""
  weight = max(float(sums["weight_sum"]), 1e-9)
  loss = float(sums["loss_sum"]) / weight
  return {
      "loss": loss,
      "accuracy": float(sums["correct_sum"]) / weight,
      "perplexity": math.exp(min(loss, 50.0)),
  }
