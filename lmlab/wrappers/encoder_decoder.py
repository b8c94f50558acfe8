"""Model wrapper of the T5 family: loss (with z-loss and MrT5's deletion penalty) and decoding.

The network (``lmlab.models.encoder_decoder``) maps tokens to logits; this
wrapper knows the encoder–decoder batch features, how the loss is summed,
MrT5's deletion regulariser and the PI controller that steers its weight, and
how to turn the network into a ``tokens_to_logits`` function for
``lmlab.wrappers.decoding`` (with or without a key/value cache, and with MrT5's hard
deletion at inference).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping, Optional, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.wrappers.base import SEQ2SEQ, ModelWrapper, metrics_from_sums, weighted_cross_entropy
from lmlab.models import flops
from lmlab.models.byte_level import keep_tokens
from lmlab.models.config import T5Config
from lmlab.models.encoder_decoder import EncoderDecoder

logger = logging.getLogger(__name__)
Batch = Mapping[str, jnp.ndarray]
Params = Any

ENC_DEC_FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
    "decoder_segment_ids", "decoder_positions",
)
DECODE_METHODS = ("greedy", "beam", "sample")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DeletionRegularizer:
  """MrT5's deletion penalty ``alpha * mean(gate)`` over real encoder tokens.

  The gate is negative (``k`` = deleted), so the penalty pushes towards
  deletion while the cross-entropy pushes towards keeping. With
  ``target_rate`` set, ``alpha`` is not fixed but set after every step by
  the reference's PI controller (Kallini et al. 2024) from the error
  ``e = target_rate - deletion_rate`` (a rate below the target raises
  ``alpha``)::

    p_acc = p_smoothing * p_acc + (1 - p_smoothing) * kp * e   (0.9 / 0.1 in the reference)
    i_acc = i_acc + ki * e
    alpha = clip(p_acc + i_acc, min_alpha, max_alpha)            (max(0, .) in the reference)

  The defaults are the reference's. ``p_smoothing=0, min_alpha=-1,
  max_alpha=1, kp=0.05, ki=0.005`` gives lmlab's earlier controller (a plain
  P term and a signed ``alpha``, which rewards keeping tokens after an
  overshoot).

  Attributes:
    alpha: Fixed weight (``target_rate`` None) or the weight of the first
      step (the controller sets every later one).
    target_rate: Desired fraction of deleted tokens; None: fixed ``alpha``.
    kp: Proportional gain.
    ki: Integral gain.
    p_smoothing: Exponential smoothing of the proportional term (0: none).
    min_alpha: Lower clip of ``alpha`` (0: the penalty only ever pushes
      towards deletion).
    max_alpha: Upper clip of ``alpha``; None: none.
  """

  alpha: float = 0.01
  target_rate: Optional[float] = None
  kp: float = 0.5
  ki: float = 1e-5
  p_smoothing: float = 0.9
  min_alpha: float = 0.0
  max_alpha: Optional[float] = None

  def __post_init__(self):
    if self.target_rate is not None and not 0.0 <= self.target_rate < 1.0:
      raise ValueError(f"DeletionRegularizer.target_rate must be in [0, 1), got {self.target_rate}.")
    if not 0.0 <= self.p_smoothing < 1.0:
      raise ValueError(
          f"DeletionRegularizer.p_smoothing must be in [0, 1), got {self.p_smoothing}.")
    if self.max_alpha is not None and self.max_alpha < self.min_alpha:
      raise ValueError(f"DeletionRegularizer.max_alpha={self.max_alpha} is below "
                       f"min_alpha={self.min_alpha}.")

  def initial_state(self) -> dict[str, jnp.ndarray]:
    """Controller state before the first step: the start ``alpha``, empty P and I terms."""
    zero = jnp.zeros((), jnp.float32)
    return {"deletion_alpha": jnp.asarray(self.alpha, jnp.float32),
            "deletion_p_acc": zero, "deletion_i_acc": zero}

  def update(self, state: Mapping[str, jnp.ndarray], deletion_rate: jnp.ndarray) -> dict:
    """One controller step from the deletion rate of the step just taken."""
    error = self.target_rate - deletion_rate
    p_acc = self.p_smoothing * state["deletion_p_acc"] + (1.0 - self.p_smoothing) * self.kp * error
    i_acc = state["deletion_i_acc"] + self.ki * error
    alpha = jnp.maximum(p_acc + i_acc, self.min_alpha)
    if self.max_alpha is not None:
      alpha = jnp.minimum(alpha, self.max_alpha)
    return {"deletion_alpha": jnp.asarray(alpha, jnp.float32),
            "deletion_p_acc": jnp.asarray(p_acc, jnp.float32),
            "deletion_i_acc": jnp.asarray(i_acc, jnp.float32)}


@gin.configurable
class EncoderDecoderModel(ModelWrapper):
  """Span-corruption / denoising pretraining and decoding around ``EncoderDecoder``."""

  features = ENC_DEC_FEATURES
  task_kind = SEQ2SEQ
  inherited_prefixes = ("token_embedder", "encoder", "decoder")

  def __init__(self, config: T5Config = gin.REQUIRED, z_loss: float = 1e-4,
               deletion: Optional[DeletionRegularizer] = None):
    """Wraps a T5 config.

    Args:
      config: Network hyper-parameters.
      z_loss: Weight of ``log(Z)^2`` per target token (keeps the softmax
        normaliser near 1, as in T5X / PaLM); 0 disables it.
      deletion: MrT5's regulariser (only with ``config.delete_gate_layer``);
        None with a gate means a fixed ``DeletionRegularizer()``.
    """
    self.config = config
    self.z_loss = z_loss
    if deletion is not None and config.delete_gate_layer is None:
      raise ValueError("A DeletionRegularizer needs T5Config.delete_gate_layer (MrT5's gate).")
    if config.delete_gate_layer is not None and deletion is None:
      deletion = DeletionRegularizer()
    self.deletion = deletion
    self._jitted: dict[str, Any] = {}

  def with_vocab_size(self, vocab_size: int) -> "EncoderDecoderModel":
    """Fills in ``config.vocab_size`` from the task's vocabulary if unset."""
    if self.config.vocab_size is None:
      return type(self)(self.config.with_vocab_size(vocab_size), self.z_loss, self.deletion)
    if self.config.vocab_size < vocab_size:
      raise ValueError(f"T5Config.vocab_size={self.config.vocab_size} is smaller than the task's "
                       f"vocabulary ({vocab_size} ids); leave vocab_size unset to take it from the task.")
    return self

  @property
  def module(self) -> EncoderDecoder:
    return EncoderDecoder(self.config)

  def init(self, rng: jax.Array, batch_size: int,
           sequence_length: Union[int, Mapping[str, int]] = 8) -> Params:
    """Parameters (boxed with logical axis names); their shapes do not depend on lengths."""
    del sequence_length
    ids = jnp.ones((batch_size, 4), jnp.int32)
    return self.module.init({"params": rng, "dropout": rng}, ids, ids[:, :3])["params"]

  # -- training ----------------------------------------------------------------

  def forward_flops(self, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Encoder over the inputs, decoder and logits over the targets, for the batch."""
    rows, input_length = shapes["encoder_input_tokens"]
    target_length = shapes["decoder_target_tokens"][1]
    return rows * flops.encoder_decoder_flops(self.config, input_length, target_length)

  def initial_model_state(self) -> dict[str, jnp.ndarray]:
    if self.deletion is None or self.deletion.target_rate is None:
      return {}
    return self.deletion.initial_state()

  def _alpha(self, model_state: Optional[dict]) -> float:
    if self.deletion is None:
      return 0.0
    if model_state and "deletion_alpha" in model_state:
      return model_state["deletion_alpha"]
    return self.deletion.alpha

  def loss_sums(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None,
                model_state: Optional[dict] = None) -> dict[str, jnp.ndarray]:
    """Summed cross-entropy over target tokens, plus z-loss and deletion penalty as auxiliaries.

    Without ``dropout_rng`` (evaluation) the auxiliary losses are still
    reported but MrT5's penalty uses the regulariser's start ``alpha``.
    """
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    logits, gate = self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        encoder_segment_ids=batch["encoder_segment_ids"],
        decoder_segment_ids=batch["decoder_segment_ids"],
        encoder_positions=batch["encoder_positions"],
        deterministic=dropout_rng is None, rngs=rngs)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    sums = weighted_cross_entropy(logits, batch["decoder_target_tokens"], weights)
    encoder_real = (batch["encoder_segment_ids"] > 0).astype(jnp.float32)
    sums["token_count"] = jnp.sum(encoder_real) + jnp.sum(batch["decoder_segment_ids"] > 0)
    if self.z_loss:
      log_z = jax.nn.logsumexp(logits, axis=-1)
      sums["z_loss_sum"] = self.z_loss * jnp.sum(jnp.square(log_z) * weights)
    else:
      # Not ``0 * sum(log_z^2)``: XLA cannot drop a product with zero (it would
      # turn an infinite log_z into NaN), so that would still run a second
      # log-sum-exp over the logits and its backward pass.
      sums["z_loss_sum"] = jnp.zeros((), jnp.float32)
    aux = sums["z_loss_sum"]
    if gate is not None:
      real_count = jnp.maximum(jnp.sum(encoder_real), 1.0)
      gate_sum = jnp.sum(gate * encoder_real)
      deleted = (gate < self.config.delete_threshold).astype(jnp.float32) * encoder_real
      sums["deleted_sum"] = jnp.sum(deleted)
      sums["encoder_token_sum"] = jnp.sum(encoder_real)
      sums["gate_sum"] = gate_sum
      # Scaled by the target weight so that the trainer's division by the
      # total weight leaves alpha * mean(gate).
      aux = aux + self._alpha(model_state) * gate_sum / real_count * sums["weight_sum"]
    sums["aux_loss_sum"] = aux
    return sums

  def update_model_state(self, model_state: dict, sums: Mapping[str, jnp.ndarray]) -> dict:
    """One PI-controller step of MrT5's ``alpha`` from this step's deletion rate."""
    if not model_state:  # only MrT5 with a target rate has controller state
      return model_state
    rate = sums["deleted_sum"] / jnp.maximum(sums["encoder_token_sum"], 1.0)
    return self.deletion.update(model_state, rate)

  def metrics(self, sums: Mapping[str, Any]) -> dict[str, float]:
    scalars = metrics_from_sums(sums)
    weight = max(float(sums["weight_sum"]), 1e-9)
    scalars["z_loss"] = float(sums.get("z_loss_sum", 0.0)) / weight
    if "deleted_sum" in sums:
      tokens = max(float(sums["encoder_token_sum"]), 1.0)
      scalars["deletion_rate"] = float(sums["deleted_sum"]) / tokens
      scalars["mean_gate"] = float(sums["gate_sum"]) / tokens
    return scalars

  # -- inference -----------------------------------------------------------------

  def encode(self, params: Params, encoder_input_tokens: jnp.ndarray, *,
             hard_delete: bool = False) -> tuple[jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray]]:
    """Encoder output, its segment ids and the MrT5 key bias, for unpacked rows of inputs.

    Without hard deletion the key bias is the gate. With ``hard_delete``
    (MrT5 only) the blocks after the gate run on the kept tokens only, the
    returned arrays are shorter than the input, and the key bias is what
    ``T5Config.hard_delete_key_bias`` says (the reference: 0 on every kept
    token; see ``lmlab.models.byte_level``).
    """
    variables = {"params": params}
    ids = jnp.asarray(encoder_input_tokens, jnp.int32)
    segment_ids = (ids != self.config.pad_id).astype(jnp.int32)
    if not hard_delete or self.config.delete_gate_layer is None:
      encoded, gate = self._jit_method("encode")(variables, ids)
      return encoded, segment_ids, gate
    hidden, gate = self._jit_method("encode_lower")(variables, ids)
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    kept = keep_tokens(np.asarray(hidden), np.asarray(segment_ids), positions, np.asarray(gate),
                       threshold=self.config.delete_threshold,
                       pad_gate=self.config.delete_gate_scale,
                       key_bias=self.config.hard_delete_key_bias)
    encoded = self._jit_method("encode_upper")(
        variables, kept.hidden, kept.segment_ids, kept.positions, kept.key_bias)
    return encoded, jnp.asarray(kept.segment_ids), jnp.asarray(kept.key_bias)

  def _jit_method(self, method: str):
    """The network's ``method``, jitted once per wrapper."""
    if method not in self._jitted:
      module = self.module
      self._jitted[method] = jax.jit(
          lambda variables, *args: module.apply(variables, *args, method=method))
    return self._jitted[method]

  def tokens_to_logits(self, params: Params, *, use_cache: bool = True):
    """A ``decoding.TokensToLogits`` over this network.

    With the cache each step runs one position against cached keys/values;
    without it the cache holds the generated prefix and every step re-runs
    the decoder over the whole prefix (the reference the cache is tested
    against).
    """
    module = self.module
    if use_cache:
      def step(ids, cache, position):
        return module.apply({"params": params}, ids, cache, position, method="decode_step")
      return step

    def step_without_cache(ids, cache, position):
      prefix = jax.lax.dynamic_update_slice_in_dim(cache["prefix"], ids, position, axis=1)
      logits = module.apply({"params": params}, cache["encoded"], cache["encoder_segment_ids"],
                            prefix, gate=cache.get("encoder_gate"), method="decode")
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
      return logits, dict(cache, prefix=prefix)
    return step_without_cache

  def initial_cache(self, params: Params, encoded, encoder_segment_ids, gate, max_decode_length: int,
                    *, use_cache: bool = True) -> dict:
    if use_cache:
      return self.module.apply({"params": params}, encoded, encoder_segment_ids, gate,
                               max_decode_length, method="init_cache")
    cache = {"encoded": encoded, "encoder_segment_ids": encoder_segment_ids,
             "prefix": jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)}
    if gate is not None:
      cache["encoder_gate"] = gate
    return cache

  def predict_batch(self, params: Params, batch: Batch, max_decode_length: int = 64) -> jnp.ndarray:
    """Greedy decodes of a batch's ``encoder_input_tokens`` (jittable; no hard deletion)."""
    ids = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
    segment_ids = (ids != self.config.pad_id).astype(jnp.int32)
    encoded, gate = self.module.apply({"params": params}, ids, method="encode")
    return _decode(self, params, encoded, segment_ids, gate, max_decode_length, "greedy", 1, 0.0,
                   1.0, 0, 1.0, jax.random.PRNGKey(0), True).tokens

  def predict(self, params: Params, encoder_input_tokens, *, max_decode_length: int = 64,
              method: str = "greedy", beam_size: int = 4, length_penalty_alpha: float = 0.6,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              rng: Optional[jax.Array] = None, use_cache: bool = True,
              hard_delete: bool = True):
    """Decoded target ids for unpacked encoder inputs ``[batch, len]`` (EOS-terminated).

    Args:
      params: Network parameters.
      encoder_input_tokens: Input ids, padded with ``pad_id``.
      max_decode_length: Most target tokens generated per row.
      method: ``greedy``, ``beam`` or ``sample``.
      beam_size: Beams for ``beam``.
      length_penalty_alpha: Beam search length penalty exponent.
      temperature: Sampling temperature (``sample``).
      top_k: Keep only the k most likely tokens when sampling (0: all).
      top_p: Nucleus sampling mass (1: all).
      rng: Key for sampling (default ``PRNGKey(0)``).
      use_cache: Decode with the key/value cache (else re-run the prefix).
      hard_delete: MrT5: remove deleted tokens before the upper encoder.

    Returns:
      A ``lmlab.wrappers.decoding.DecodeResult``; beam search gives ``[batch, beam, len]``
      tokens, best beam first.
    """
    if method not in DECODE_METHODS:
      raise ValueError(f"Unknown decode method {method!r}; choose one of {DECODE_METHODS}.")
    encoded, segment_ids, gate = self.encode(params, encoder_input_tokens, hard_delete=hard_delete)
    return _decode(self, params, encoded, segment_ids, gate, max_decode_length, method, beam_size,
                   length_penalty_alpha, temperature, top_k, top_p,
                   jax.random.PRNGKey(0) if rng is None else rng, use_cache)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11, 13))
def _decode(model: EncoderDecoderModel, params, encoded, segment_ids, gate, max_decode_length,
            method, beam_size, length_penalty_alpha, temperature, top_k, top_p, rng, use_cache):
  from lmlab.wrappers import decoding  # pylint: disable=g-import-not-at-top  (only needed to decode)
  cfg = model.config
  cache = model.initial_cache(params, encoded, segment_ids, gate, max_decode_length,
                              use_cache=use_cache)
  step = model.tokens_to_logits(params, use_cache=use_cache)
  common = dict(batch_size=encoded.shape[0], max_decode_length=max_decode_length,
                eos_id=cfg.eos_id, start_id=cfg.pad_id)
  if method == "greedy":
    return decoding.greedy_decode(step, cache, **common)
  if method == "beam":
    return decoding.beam_search(step, cache, beam_size=beam_size,
                                length_penalty_alpha=length_penalty_alpha, **common)
  return decoding.sample_decode(step, cache, rng, temperature=temperature, top_k=top_k,
                                top_p=top_p, **common)
