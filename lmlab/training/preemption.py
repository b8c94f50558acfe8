"""Preemption: SIGTERM becomes "finish this step, checkpoint, stop" instead of a lost step.

TPU and SLURM preemption and ``docker stop`` send SIGTERM and wait a grace
period before killing. ``Trainer.train`` installs ``StopSignal`` while it runs:
the handler only sets a flag, the loop polls it after each step, saves a
checkpoint and raises ``PreemptedError``; the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax
import numpy as np

logger = logging.getLogger(__name__)


class PreemptedError(RuntimeError):
  """The run was asked to stop (SIGTERM) and saved a checkpoint to resume from."""

  def __init__(self, step: int, directory: str):
    super().__init__(
        f"preempted (SIGTERM): stopped after step {step} and saved a checkpoint in {directory}. "
        "Run the same command again to resume from it.")
    self.step = step


class StopSignal:
  """Turns SIGTERM (TPU/SLURM preemption, ``docker stop``) into a flag the loop polls.

  Installed only in the main thread and only while ``Trainer.train`` runs;
  the previous handler is restored afterwards.
  """

  def __init__(self):
    self.requested = False

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
      del signum, frame
      if not self.requested:
        logger.warning("SIGTERM received: finishing this step, then saving a checkpoint.")
      self.requested = True

    signal.signal(signal.SIGTERM, handler)
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, previous)

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective with several processes)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
