"""Lowering a computation for an accelerator this machine does not have.

JAX can lower a jitted function for any platform it knows
(``lowering_platforms=("cuda",)`` or ``("tpu",)``), which runs the Pallas
Triton and Mosaic lowerings and catches most kernel errors (illegal block
shapes, unsupported primitives, layouts) on a CPU-only machine. Mosaic asks
the local device which TPU generation it targets; :func:`tpu_target`
registers one for the CPU device so that question has an answer.

Used by the cross-lowering tests and by anyone checking a kernel change
before spending accelerator time.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator

import jax

# Custom-call targets that show which kernel library a lowered module calls.
TRITON_CALL = "__gpu$xla.gpu.triton"
MOSAIC_TPU_CALL = "tpu_custom_call"
CUDNN_ATTENTION_PREFIX = "__cudnn$fmha"
PLATFORMS = ("cuda", "tpu")


@contextlib.contextmanager
def tpu_target(chip: str = "v5e") -> Iterator[None]:
  """Makes Mosaic lower for TPU ``chip`` (``v4``, ``v5e``, ``v5p``, ``v6e``, ...) from CPU."""
  from jax._src.pallas.mosaic import tpu_info  # private: the only way to name a target

  version = tpu_info.ChipVersion(chip)
  kind = jax.devices()[0].device_kind
  previous = tpu_info.registry.get(kind)
  tpu_info.registry[kind] = lambda: tpu_info.get_tpu_info_for_chip(version, 1)
  tpu_info.get_tpu_info.cache_clear()
  try:
    yield
  finally:
    if previous is None:
      tpu_info.registry.pop(kind, None)
    else:
      tpu_info.registry[kind] = previous
    tpu_info.get_tpu_info.cache_clear()


def lower_text(fn: Callable[..., Any], *args, platform: str, chip: str = "v5e",
               **kwargs) -> str:
  """StableHLO text of ``jax.jit(fn)(*args, **kwargs)`` lowered for ``platform``."""
  jitted = jax.jit(fn, static_argnames=tuple(kwargs)) if kwargs else jax.jit(fn)
  context = tpu_target(chip) if platform == "tpu" else contextlib.nullcontext()
  with context:
    return jitted.trace(*args, **kwargs).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(text: str) -> set[str]:
  """The custom-call targets a lowered module calls."""
  return set(re.findall(r"stablehlo\.custom_call @([\w$.\-]+)", text))


def kernel_call_for(platform: str) -> str:
  """The custom-call target a Pallas kernel lowers to on ``platform``."""
  return {"cuda": TRITON_CALL, "rocm": TRITON_CALL, "tpu": MOSAIC_TPU_CALL}[platform]
