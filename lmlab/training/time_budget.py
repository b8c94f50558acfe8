"""A wall-clock budget for the training loop (``TrainConfig.time_budget_seconds``).

Recipes are often compared at equal wall-clock rather than equal steps
(cramming: "one GPU, one day"). The budget starts when the first step has
finished, so compilation is not charged to it, and the loop keeps at most one
step in flight while a budget is set: JAX dispatches asynchronously, and
without that the host could queue many steps ahead of the device and read the
clock long before their work is done.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import jax
import numpy as np


class TimeBudget:
  """Answers, once per step, whether the budget is spent (all processes agree)."""

  def __init__(self, seconds: Optional[float]):
    self.seconds = seconds
    self.start: Optional[float] = None
    self._in_flight: Any = None

  def spent(self, step_metrics: Any, at_log: bool) -> bool:
    """Call after dispatching a step with that step's (device) metrics.

    With several processes the clocks are compared only at logging steps, where
    the processes agree through a collective (any one over budget stops all).
    """
    if self.seconds is None:
      return False
    if self._in_flight is not None:
      jax.block_until_ready(self._in_flight)
    self._in_flight = step_metrics
    if self.start is None:
      jax.block_until_ready(step_metrics)  # the first step, compilation included
      self.start = time.perf_counter()
      return False
    over = time.perf_counter() - self.start >= self.seconds
    if jax.process_count() == 1:
      return over
    if not at_log:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(over))))
