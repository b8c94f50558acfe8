"""Model FLOPs utilisation: achieved model TFLOP/s per device against the chip's peak.

``mfu = model FLOPs per step / step time / devices / peak``, with model FLOPs
from the wrapper's analytic count (``ModelWrapper.train_flops``, three times
the forward pass) and the peak the dense bfloat16 matmul rate of the
chip (the usual MFU convention, also for float32 runs). Peaks are per JAX
device: one GPU, one TPU chip (v4 and v5p megacore chips are one device).
Unknown devices (CPUs) report TFLOP/s only, unless
``TrainConfig.peak_tflops_per_device`` names a peak.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import jax
import numpy as np

# (pattern on jax.Device.device_kind, dense bf16 TFLOP/s per device), first match wins.
PEAK_TFLOPS = (
    (r"H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),
    (r"A100", 312.0),
    (r"TPU v4", 275.0),
    (r"TPU v5 ?(lite|e)", 197.0),
    (r"TPU v5p?$", 459.0),
    (r"TPU v6 ?(lite|e)", 918.0),
)


def peak_tflops(device_kind: str) -> Optional[float]:
  """Dense bf16 peak of a device kind such as ``NVIDIA H100 80GB HBM3`` or ``TPU v5 lite``."""
  for pattern, peak in PEAK_TFLOPS:
    if re.search(pattern, device_kind):
      return peak
  return None


class Throughput:
  """Turns steps and seconds into ``tflops_per_device`` and ``mfu`` for the trainer's logs."""

  def __init__(self, model, peak_override: Optional[float] = None):
    self.model = model
    self.peak = peak_override or peak_tflops(jax.local_devices()[0].device_kind)
    self.step_flops: Optional[float] = None

  def observe_batch(self, batch: Mapping[str, Any]) -> None:
    """Counts a step's model FLOPs from the first batch's shapes (this process's rows)."""
    if self.step_flops is None:
      shapes = {name: np.shape(x) for name, x in batch.items()}
      self.step_flops = self.model.train_flops(shapes) or 0.0

  def scalars(self, steps: int, seconds: float) -> dict[str, float]:
    if not self.step_flops or seconds <= 0:
      return {}
    tflops = self.step_flops * steps / seconds / jax.local_device_count() / 1e12
    out = {"tflops_per_device": tflops}
    if self.peak:
      out["mfu"] = tflops / self.peak
    return out
