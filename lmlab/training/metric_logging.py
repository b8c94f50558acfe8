"""Metric output: TensorBoard summaries via clu plus a plain JSON-lines log.

Only process 0 writes files; other processes keep the same calls as no-ops so
the training loop needs no branches.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
from clu import metric_writers


class MetricLogger:
  """Writes scalar metrics to ``<dir>/tensorboard`` and ``<dir>/metrics.jsonl``."""

  def __init__(self, model_dir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._writer = None
    self._jsonl = None
    if self.enabled:
      self._writer = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard"))
      self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, prefix: str, scalars: Mapping[str, float]) -> None:
    """Writes ``prefix/name`` scalars for ``step``."""
    if not self.enabled:
      return
    named = {f"{prefix}/{k}": float(v) for k, v in scalars.items()}
    self._writer.write_scalars(step, named)
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **named}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.flush()
      self._writer.close()
      self._jsonl.close()
