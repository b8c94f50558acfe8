"""Step timing shared by the benchmark scripts in this folder (imported as a sibling module)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_steps(step: Callable[[], None], warmup: int, steps: int, repeats: int) -> float:
  """Median seconds per step over ``repeats`` timed runs of ``steps`` steps, after ``warmup``.

  ``step`` must block until its work is done (``jax.block_until_ready``), or
  the timings measure dispatch only.
  """
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)
