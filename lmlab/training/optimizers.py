"""Optimizers and learning-rate schedules built from optax.

Everything here is plain optax: a gin-bound ``OptimizerConfig`` picks the
schedule shape and the optimizer. ``adamw`` chains gradient clipping with
AdamW whose weight decay skips biases and norm scales (the BERT/RoBERTa
convention); ``adafactor`` is optax's Adafactor with T5's settings (factored
second moments, decay 0.8, update clipping at 1, updates scaled by the
parameter's RMS, no momentum), usually with the ``rsqrt`` schedule
(``gin/optimizers/adafactor_t5.gin``).

State-space parameters (the S4D ``A_re``, ``A_im`` and ``log_step`` of BiGS)
can train with a smaller learning rate (``ssm_learning_rate_scale``, 0.1 in
the BiGS recipe, as S4 does) or be frozen (``freeze_ssm``, an option for
fine-tuning); like biases and norms they are never weight-decayed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import optax

from lmlab.models.ssm import SSM_PARAMETER_NAMES

SCHEDULES = ("linear", "cosine", "constant", "inverse_sqrt", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and schedule hyper-parameters.

  Attributes:
    optimizer: ``adamw`` or ``adafactor``.
    learning_rate: Peak learning rate, reached at the end of warmup.
    schedule: Decay after warmup: ``linear`` to ``end_lr_fraction * peak`` at
      the last step, ``cosine`` to the same floor, ``constant``, or
      ``inverse_sqrt`` (linear warmup, then decay as 1/sqrt(step)), or
      ``rsqrt`` (T5: the peak until ``warmup_steps``, then
      ``peak * sqrt(warmup_steps / step)``; no linear ramp — with peak 0.01
      and 10k steps this is T5's ``1/sqrt(max(step, 10^4))``).
    warmup_steps: Linear warmup from 0 to the peak (``rsqrt``: the constant
      phase).
    warmup_fraction: If set, the warmup is this fraction of the run's steps
      instead of ``warmup_steps`` (fine-tuning recipes state it this way).
    end_lr_fraction: Final learning rate as a fraction of the peak.
    weight_decay: Decoupled weight decay (not applied to biases or norms).
    b1: Adam first-moment decay.
    b2: Adam second-moment decay.
    eps: Adam epsilon.
    clip_grad_norm: Clip the global gradient norm to this value; ``None`` or
      0 disables clipping.
    adafactor_decay_rate: Adafactor's second-moment decay exponent.
    adafactor_clipping_threshold: Adafactor's update clipping (RMS).
    adafactor_scale_by_parameter: Scale Adafactor updates by the parameter's
      RMS (relative step size, as in T5).
    ssm_learning_rate_scale: Factor on the learning rate of state-space
      parameters (``SSM_PARAMETER_NAMES``); 1 trains them like the rest.
    freeze_ssm: Keep state-space parameters fixed: their gradients are zeroed
      before clipping, so they neither move nor count in the global norm.
  """

  optimizer: str = "adamw"
  learning_rate: float = 1e-3
  schedule: str = "linear"
  warmup_steps: int = 0
  warmup_fraction: Optional[float] = None
  end_lr_fraction: float = 0.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-6
  clip_grad_norm: Optional[float] = 1.0
  adafactor_decay_rate: float = 0.8
  adafactor_clipping_threshold: Optional[float] = 1.0
  adafactor_scale_by_parameter: bool = True
  ssm_learning_rate_scale: float = 1.0
  freeze_ssm: bool = False

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.optimizer={self.optimizer!r} is not one of {OPTIMIZERS}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r} is not one of {SCHEDULES}.")
    if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
      raise ValueError("OptimizerConfig.warmup_fraction must be in [0, 1), got "
                       f"{self.warmup_fraction}.")
    if self.warmup_steps < 0 or self.learning_rate <= 0:
      raise ValueError("OptimizerConfig needs learning_rate > 0 and warmup_steps >= 0, got "
                       f"learning_rate={self.learning_rate}, warmup_steps={self.warmup_steps}.")
    if self.ssm_learning_rate_scale < 0:
      raise ValueError("OptimizerConfig.ssm_learning_rate_scale must be >= 0, got "
                       f"{self.ssm_learning_rate_scale}; use freeze_ssm=True to keep them fixed.")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Learning rate as a function of the step: warmup, then the chosen decay."""
  peak, warmup = config.learning_rate, config.warmup_steps
  if config.warmup_fraction is not None:
    warmup = int(round(config.warmup_fraction * total_steps))
  decay_steps = max(total_steps - warmup, 1)
  floor = peak * config.end_lr_fraction
  if config.schedule == "linear":
    decay = optax.linear_schedule(peak, floor, decay_steps)
  elif config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_lr_fraction)
  elif config.schedule == "rsqrt":
    start = max(warmup, 1)
    return lambda step: peak * jnp.sqrt(start / jnp.maximum(step, start))
  elif config.schedule == "inverse_sqrt":
    start = max(warmup, 1)
    decay = lambda step: peak * (start / (step + start))**0.5
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


DECAYED_PARAMETER_NAMES = ("kernel", "embedding")


def _leaf_name_mask(params: Any, names: tuple[str, ...]) -> Any:
  """True for the leaves whose own name (last path entry) is in ``names``."""
  def named(path, _):
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", ""))) in names
  return jax.tree_util.tree_map_with_path(named, params)


def decay_mask(params: Any) -> Any:
  """True for weight matrices and embeddings, False for biases, norm scales and SSM parameters.

  Decided by the leaf's name, not its rank: attention biases are (heads, kv)
  matrices but must not be decayed.
  """
  return _leaf_name_mask(params, DECAYED_PARAMETER_NAMES)


def ssm_mask(params: Any) -> Any:
  """True for the state-space parameters that ``ssm_learning_rate_scale``/``freeze_ssm`` act on."""
  return _leaf_name_mask(params, SSM_PARAMETER_NAMES)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Gradient clipping followed by AdamW (masked weight decay) or Adafactor."""
  schedule = make_schedule(config, total_steps)
  parts = []
  if config.freeze_ssm:
    parts.append(optax.masked(optax.set_to_zero(), ssm_mask))
  if config.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  if config.optimizer == "adafactor":
    parts.append(optax.adafactor(
        schedule, decay_rate=config.adafactor_decay_rate,
        clipping_threshold=config.adafactor_clipping_threshold,
        multiply_by_parameter_scale=config.adafactor_scale_by_parameter,
        weight_decay_rate=config.weight_decay or None, weight_decay_mask=decay_mask))
  else:
    parts.append(
        optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay, mask=decay_mask))
  if config.ssm_learning_rate_scale != 1.0 and not config.freeze_ssm:
    # Updates are linear in the learning rate (the SSM leaves carry no weight decay).
    parts.append(optax.masked(optax.scale(config.ssm_learning_rate_scale), ssm_mask))
  return optax.chain(*parts)
