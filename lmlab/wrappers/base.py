"""The interface every model wrapper implements, and the loss helpers they share.

This is the T5X "models.py" role. The networks in ``lmlab.models`` only map
tokens to logits; a wrapper knows which batch features a family consumes, how
its loss is normalised, what its metrics are, how it predicts, and which of
its parameters a fine-tune inherits from a pretrained checkpoint. Run modes
and the trainer talk to models only through ``ModelWrapper``, so adding a
family means a network in ``lmlab.models``, a wrapper here, gin files and
tests; nothing in the trainer or the run modes changes.
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from lmlab.models import flops

Batch = Mapping[str, jnp.ndarray]
Params = Any

# What kind of examples a wrapper consumes; data pipelines say which kind a task yields.
MASKED_LM = "masked_lm"          # packed rows with input_ids/targets/loss_weights
SEQ2SEQ = "seq2seq"              # packed encoder/decoder rows (span corruption, denoising, text to text)
CLASSIFICATION = "classification"  # one labelled example per row (GLUE-style heads)
TASK_KINDS = (MASKED_LM, SEQ2SEQ, CLASSIFICATION)


def weighted_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray,
                           weights: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Summed token cross-entropy and accuracy over positions with weight > 0.

  Sums (not means) are returned so that gradient accumulation and data
  parallelism can add them up and normalise once by the total weight.
  """
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = _is_argmax(logits, targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(losses * weights),
      "correct_sum": jnp.sum(correct * weights),
      "weight_sum": jnp.sum(weights),
  }


def _is_argmax(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """``argmax(logits, -1) == targets``, ties going to the first index as argmax does.

  The target is the argmax exactly when its logit equals the row maximum and
  no earlier index reaches that maximum. Written this way the check is two
  plain reductions over the vocabulary (the maximum, which the loss's
  log-sum-exp computes as well, and an ``any``) instead of argmax's
  value-and-index reduction, which XLA:CPU does not vectorise: over a 32k
  vocabulary it cost more than the rest of the loss.
  """
  top = jnp.max(logits, axis=-1, keepdims=True)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  tie_before = jnp.any((logits == top) & (index < targets[..., None]), axis=-1)
  return (target_logit[..., 0] == top[..., 0]) & ~tie_before


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
  """Loss, accuracy and perplexity from summed statistics."""
  weight = max(float(sums["weight_sum"]), 1e-9)
  loss = float(sums["loss_sum"]) / weight
  return {
      "loss": loss,
      "accuracy": float(sums["correct_sum"]) / weight,
      "perplexity": math.exp(min(loss, 50.0)),
  }


class ModelWrapper(abc.ABC):
  """What the trainer and the run modes need from a model family.

  ``loss_sums`` returns summed statistics: ``loss_sum`` (the reported loss),
  ``weight_sum`` (its normaliser), ``correct_sum``, ``token_count`` and
  optionally ``aux_loss_sum``, which is added to the training objective but
  not to the reported loss (z-loss, MrT5's deletion penalty). A family with
  state that is not trained by gradients (MrT5's PI controller) keeps it in
  ``model_state``, which is checkpointed with the train state.

  Attributes:
    features: Batch features ``loss_sums`` reads.
    task_kind: The kind of examples it consumes (one of ``TASK_KINDS``).
    inherited_prefixes: Top-level parameter names a fine-tune of this model
      must find in a pretrained checkpoint (the rest, e.g. a task head, is
      initialised fresh).
  """

  features: tuple[str, ...] = ()
  task_kind: str = ""
  inherited_prefixes: tuple[str, ...] = ()

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch_size: int, sequence_length: Any) -> Params:
    """Parameters (boxed with logical axis names) for batches of the given shape."""

  @abc.abstractmethod
  def loss_sums(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None,
                model_state: Optional[dict] = None) -> dict[str, jnp.ndarray]:
    """Summed loss statistics of a batch; dropout is active when ``dropout_rng`` is given."""

  @abc.abstractmethod
  def predict_batch(self, params: Params, batch: Batch) -> jnp.ndarray:
    """Per-row predictions of a batch (jittable): token ids, class ids, scores."""

  def with_vocab_size(self, vocab_size: int) -> "ModelWrapper":
    """This wrapper with the network's vocabulary sized for a task (default: unchanged)."""
    del vocab_size
    return self

  def with_network(self, config: Any) -> "ModelWrapper":
    """This wrapper (same options) around another network config, e.g. an imported checkpoint's."""
    new = copy.copy(self)
    new.config = config
    if hasattr(new, "_jitted"):
      new._jitted = {}  # pylint: disable=protected-access  (compiled for the old network)
    return new

  def forward_flops(self, shapes: Mapping[str, tuple[int, ...]]) -> Optional[float]:
    """Model FLOPs of one forward pass over a batch with these feature shapes (None: unknown).

    Analytic matmul counts from ``lmlab.models.flops``; used for MFU logging.
    """
    del shapes
    return None

  def train_flops(self, shapes: Mapping[str, tuple[int, ...]]) -> Optional[float]:
    """Model FLOPs of one training step (forward and backward) over such a batch."""
    forward = self.forward_flops(shapes)
    return None if forward is None else flops.TRAINING_FLOPS_PER_FORWARD * forward

  def check_run(self) -> None:
    """Raises ValueError if the bound run configuration cannot work with this model."""

  def initial_model_state(self) -> dict[str, jnp.ndarray]:
    return {}

  def update_model_state(self, model_state: dict, sums: Mapping[str, jnp.ndarray]) -> dict:
    del sums
    return model_state

  def metrics(self, sums: Mapping[str, Any]) -> dict[str, float]:
    """Scalars to log from statistics summed over steps or batches."""
    return metrics_from_sums(sums)
