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


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, count: int,
                     repeats: int) -> dict[str, float]:
  """Median seconds per step of each of ``steps``, their timed runs taken in turn.

  Every system is warmed up first; then each repeat times ``count`` steps of
  every system one after the other, so a change of load on a shared machine
  (other jobs starting or ending) falls on all systems alike instead of on
  whichever happened to be timed then. Ratios between the medians are what
  to read.
  """
  for step in steps.values():
    for _ in range(warmup):
      step()
  times: dict[str, list[float]] = {name: [] for name in steps}
  for _ in range(repeats):
    for name, step in steps.items():
      start = time.perf_counter()
      for _ in range(count):
        step()
      times[name].append((time.perf_counter() - start) / count)
  return {name: statistics.median(values) for name, values in times.items()}
