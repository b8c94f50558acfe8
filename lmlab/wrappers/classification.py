"""Fine-tuning wrapper: a task head on a pretrained encoder, BiGS or T5 encoder (EncT5).

One wrapper serves every task kind of a labelled-example task (``HeadSpec``):

* ``classification``: softmax cross-entropy over ``spec.num_classes`` logits.
* ``regression`` (STS-B): squared error of one output against the score.
* candidate kinds (COPA, MultiRC, ReCoRD): each row is one candidate with a
  0/1 label, trained with a sigmoid cross-entropy on one logit; the metrics
  code picks the best-scoring candidate per group (``lmlab.glue.metrics``).

Batches (built by ``lmlab.glue.finetune``) hold one example per row, unpacked:
``input_ids``, ``token_type_ids`` (sentence A = 0, B = 1), ``segment_ids``
(1 on real tokens, 0 on padding), ``positions``, ``label`` and ``weight``
(0 on filler rows that only complete the last batch).
"""

from __future__ import annotations

from typing import Optional, Protocol, Union

import jax
import jax.numpy as jnp
import optax

from lmlab.wrappers.base import CLASSIFICATION, Batch, ModelWrapper, Params
from lmlab.models import EncoderConfig, EncoderForSequenceClassification, flops
from lmlab.models.config import T5Config
from lmlab.models.enct5 import EncT5Classifier

class HeadSpec(Protocol):
  """What a head needs to know of its task (``lmlab.glue.spec.TaskSpec`` is one).

  ``kind``: ``classification``, ``regression``, or a candidate kind
  (``multiple_choice``, ``answer_scoring``, ``entity_ranking``) scored by one
  logit per row. ``num_classes``: the head's width.
  """
  kind: str
  num_classes: int


FEATURES = ("input_ids", "token_type_ids", "segment_ids", "positions", "label", "weight")
# Encoder poolings (``EncoderForSequenceClassification``): ``mean`` over real tokens, or
# ``cls``, BERT's pooled [CLS] ``tanh(pooler(h_0))`` (its pooler imports from Hugging Face BERT).
POOLINGS = ("mean", "cls")


class ClassificationModel(ModelWrapper):
  """Loss, metrics and predictions of a task head; the network depends on the config type.

  ``EncoderConfig`` (BERT-style or ``mixer="bigs"``) builds
  ``EncoderForSequenceClassification`` (pooler + classifier); ``T5Config``
  builds ``EncT5Classifier`` (one non-autoregressive decoder step + classifier).
  """

  features = FEATURES
  task_kind = CLASSIFICATION

  def __init__(self, config: Union[EncoderConfig, T5Config], spec: HeadSpec,
               pooling: str = "mean"):
    """Args:
      config: The pretrained network's hyper-parameters (vocab_size set).
      spec: The task; fixes the head width and the loss.
      pooling: Encoder pooling, ``mean`` over real tokens (the default: lmlab
        pretraining has no [CLS] token; BiGS pools this way) or ``cls``, BERT's
        pooled-[CLS] classifier (first token, then the ``tanh`` pooler, which
        an imported Hugging Face BERT provides). Both go through the pooler.
        Unused by EncT5, which pools by attention.
    """
    if pooling not in POOLINGS:
      raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")
    if not isinstance(config, (EncoderConfig, T5Config)):
      raise TypeError(f"ClassificationModel needs an EncoderConfig or T5Config, got {type(config)}.")
    self.config = config
    self.spec = spec
    self.pooling = pooling

  @property
  def inherited_prefixes(self) -> tuple[str, ...]:
    return ("token_embedder", "encoder", "decoder") if self.is_t5 else ("encoder",)

  @property
  def is_t5(self) -> bool:
    return isinstance(self.config, T5Config)

  @property
  def module(self):
    if self.is_t5:
      return EncT5Classifier(self.config, self.spec.num_classes)
    return EncoderForSequenceClassification(self.config, self.spec.num_classes, self.pooling)

  def forward_flops(self, shapes) -> float:
    """Encoder (EncT5: and one decoder step) plus pooler/classifier, for the batch."""
    rows, length = shapes["input_ids"]
    classes = self.spec.num_classes
    if self.is_t5:
      head = 2.0 * self.config.d_model * classes
      return rows * (flops.encoder_decoder_flops(self.config, length, 1, logits=False) + head)
    return rows * flops.classifier_flops(self.config, length, classes)

  def init(self, rng: jax.Array, batch_size: int, sequence_length: int) -> Params:
    """Parameters (boxed with logical axis names) for rows of ``sequence_length`` tokens."""
    ids = jnp.ones((batch_size, sequence_length), jnp.int32)
    return self.module.init({"params": rng, "dropout": rng}, ids, deterministic=True)["params"]

  def apply(self, params: Params, batch: Batch, *,
            dropout_rng: Optional[jax.Array] = None) -> jnp.ndarray:
    """Float32 logits ``[rows, spec.num_classes]``; dropout is on when ``dropout_rng`` is given."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    deterministic = dropout_rng is None
    if self.is_t5:
      logits, _ = self.module.apply({"params": params}, batch["input_ids"],
                                    segment_ids=batch["segment_ids"],
                                    deterministic=deterministic, rngs=rngs)
      return logits
    return self.module.apply({"params": params}, batch["input_ids"],
                             segment_ids=batch["segment_ids"], positions=batch["positions"],
                             token_type_ids=batch["token_type_ids"],
                             deterministic=deterministic, rngs=rngs)

  def loss_sums(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None,
                model_state: Optional[dict] = None) -> dict[str, jnp.ndarray]:
    """Summed loss, correct predictions and weight over the batch's real rows."""
    del model_state
    logits = self.apply(params, batch, dropout_rng=dropout_rng)
    weights = batch["weight"].astype(jnp.float32)
    label = batch["label"]
    kind = self.spec.kind
    if kind == "classification":
      labels = jnp.maximum(label.astype(jnp.int32), 0)  # test rows carry -1 and weight 0
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      correct = jnp.argmax(logits, axis=-1) == labels
    elif kind == "regression":
      target = label.astype(jnp.float32)
      losses = jnp.square(logits[:, 0] - target)
      correct = jnp.abs(logits[:, 0] - target) < 0.5
    else:
      target = (label > 0).astype(jnp.float32)
      losses = optax.sigmoid_binary_cross_entropy(logits[:, 0], target)
      correct = (logits[:, 0] > 0) == (target > 0)
    return {
        "loss_sum": jnp.sum(losses * weights),
        "correct_sum": jnp.sum(correct.astype(jnp.float32) * weights),
        "weight_sum": jnp.sum(weights),
        "token_count": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
    }

  def predict_batch(self, params: Params, batch: Batch) -> jnp.ndarray:
    """Per row: the class id (classification), the score (regression) or the candidate logit."""
    logits = self.apply(params, batch)
    if self.spec.kind == "classification":
      return jnp.argmax(logits, axis=-1)
    return logits[:, 0]
