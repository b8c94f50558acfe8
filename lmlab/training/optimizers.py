"""Optimizers and learning-rate schedules built from optax.

Everything here is plain optax: a gin-bound ``OptimizerConfig`` picks the
schedule shape and the optimizer. ``adamw`` chains gradient clipping with
AdamW whose weight decay skips biases and norm scales (the BERT/RoBERTa
convention); ``adafactor`` is optax's Adafactor with T5's settings (factored
second moments, decay 0.8, update clipping at 1, updates scaled by the
parameter's RMS, no momentum), usually with the ``rsqrt`` schedule
(``gin/optimizers/adafactor_t5.gin``).

Groups of parameters are picked by regular expressions over their path, the
tree keys joined by ``/`` (e.g. ``encoder/layers_0/forward_ssm/A_re``):
``learning_rate_scales`` gives a group its own learning-rate factor,
``frozen`` keeps a group fixed and ``no_decay`` exempts it from weight decay.
The BiGS recipe (``gin/runs/bigs_pretrain.gin``) trains the S4D parameters at
0.1x the learning rate this way, as S4 does. A pattern that matches no
parameter of the model is an error when the optimizer state is created, so a
typo cannot silently turn an option off.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

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
    learning_rate_scales: Regular expression -> factor. Each pattern must
      match the whole ``/``-joined path of the parameters it selects; their
      updates are multiplied by the factor, i.e. they train with
      ``factor * learning_rate`` (with Adafactor, whose weight decay is not
      scaled by the learning rate, the decay is scaled too). A parameter may
      match at most one pattern. Example (BiGS):
      ``{'.*/(A_re|A_im|log_step)': 0.1}``.
    frozen: Patterns of parameters kept fixed: their gradients are zeroed
      before clipping, so they neither move nor count in the global norm, and
      so are their updates (no weight decay either). Frozen wins over
      ``learning_rate_scales``.
    no_decay: Patterns of parameters exempt from weight decay. Without them
      decay applies to leaves named ``kernel`` or ``embedding`` only (never to
      biases, norm scales or state-space parameters).
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
  learning_rate_scales: Mapping[str, float] = dataclasses.field(default_factory=dict)
  frozen: Sequence[str] = ()
  no_decay: Sequence[str] = ()

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
    if not isinstance(self.learning_rate_scales, Mapping):
      raise ValueError("OptimizerConfig.learning_rate_scales must map patterns to factors, e.g. "
                       f"{{'.*/A_re': 0.1}}; got {self.learning_rate_scales!r}.")
    for pattern, factor in self.learning_rate_scales.items():
      _compile("learning_rate_scales", pattern)
      if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
          math.isfinite(factor) and factor >= 0):
        raise ValueError(f"OptimizerConfig.learning_rate_scales[{pattern!r}] must be a finite "
                         f"factor >= 0, got {factor!r}; list the pattern in "
                         "OptimizerConfig.frozen to keep those parameters fixed.")
    object.__setattr__(self, "learning_rate_scales", dict(self.learning_rate_scales))
    for field in ("frozen", "no_decay"):
      patterns = getattr(self, field)
      if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"OptimizerConfig.{field} must be a list of patterns, e.g. "
                         f"['.*/A_re'], got {patterns!r}.")
      for pattern in patterns:
        _compile(field, pattern)
      object.__setattr__(self, field, tuple(patterns))

  def patterns(self) -> dict[str, tuple[str, ...]]:
    """Every option's patterns, by option name."""
    return {"learning_rate_scales": tuple(self.learning_rate_scales), "frozen": self.frozen,
            "no_decay": self.no_decay}


def _compile(field: str, pattern: Any) -> re.Pattern:
  if not isinstance(pattern, str) or not pattern:
    raise ValueError(f"OptimizerConfig.{field}: a pattern must be a non-empty string (a regular "
                     f"expression over '/'-joined parameter paths), got {pattern!r}.")
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"OptimizerConfig.{field}: {pattern!r} is not a valid regular expression "
                     f"({e}).") from None


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


def _key_str(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def parameter_path(path: Sequence[Any]) -> str:
  """A tree path as the ``/``-joined string the patterns match, e.g. ``encoder/layers_0/A_re``."""
  return "/".join(_key_str(entry) for entry in path)


def parameter_paths(params: Any) -> list[str]:
  """The ``/``-joined path of every leaf, in tree order."""
  return [parameter_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def pattern_mask(params: Any, patterns: Sequence[str]) -> Any:
  """True for the leaves whose whole path matches one of ``patterns``."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.fullmatch(parameter_path(path)) for c in compiled), params)


def decay_mask(params: Any, no_decay: Sequence[str] = ()) -> Any:
  """True for weight matrices and embeddings not matched by ``no_decay``.

  Decided by the leaf's name, not its rank: attention biases are (heads, kv)
  matrices but must not be decayed; biases, norm scales and state-space
  parameters never are.
  """
  compiled = [re.compile(p) for p in no_decay]
  def decayed(path, _):
    return (_key_str(path[-1]) in DECAYED_PARAMETER_NAMES and
            not any(c.fullmatch(parameter_path(path)) for c in compiled))
  return jax.tree_util.tree_map_with_path(decayed, params)


def check_patterns(config: OptimizerConfig, params: Any) -> None:
  """Refuses a pattern that selects no parameter, or a parameter two learning-rate scales select."""
  paths = parameter_paths(params)
  for field, patterns in config.patterns().items():
    for pattern in patterns:
      if not any(re.fullmatch(pattern, path) for path in paths):
        examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise ValueError(
            f"OptimizerConfig.{field}: pattern {pattern!r} matches no parameter of this model. "
            f"Patterns must match a whole '/'-joined path, such as {examples}.")
  for path in paths:
    scaled = [p for p in config.learning_rate_scales if re.fullmatch(p, path)]
    if len(scaled) > 1:
      raise ValueError(f"OptimizerConfig.learning_rate_scales: parameter {path!r} matches "
                       f"{scaled}; each parameter may take one factor.")


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Gradient clipping followed by AdamW (masked weight decay) or Adafactor.

  The patterns of ``config`` are checked against the parameters when the
  optimizer state is created (``init``).
  """
  schedule = make_schedule(config, total_steps)
  frozen = lambda params: pattern_mask(params, config.frozen)
  decayed = lambda params: decay_mask(params, config.no_decay)
  parts = []
  if config.frozen:
    parts.append(optax.masked(optax.set_to_zero(), frozen))
  if config.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  if config.optimizer == "adafactor":
    parts.append(optax.adafactor(
        schedule, decay_rate=config.adafactor_decay_rate,
        clipping_threshold=config.adafactor_clipping_threshold,
        multiply_by_parameter_scale=config.adafactor_scale_by_parameter,
        weight_decay_rate=config.weight_decay or None, weight_decay_mask=decayed))
  else:
    parts.append(
        optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay, mask=decayed))
  for pattern, factor in config.learning_rate_scales.items():
    if factor != 1.0:
      # AdamW's update (decay included) is linear in the learning rate.
      selected = lambda params, p=pattern: pattern_mask(params, [p])
      parts.append(optax.masked(optax.scale(factor), selected))
  if config.frozen:
    # Zero gradients give zero Adam/Adafactor steps, but weight decay would still move them.
    parts.append(optax.masked(optax.set_to_zero(), frozen))
  chain = optax.chain(*parts)

  def init(params):
    # optax.tree_map_params (used for optimizer-state shardings) initialises with a
    # leafless placeholder: there is nothing to check the patterns against then.
    if jax.tree_util.tree_leaves(params):
      check_patterns(config, params)
    return chain.init(params)

  return chain._replace(init=init)
