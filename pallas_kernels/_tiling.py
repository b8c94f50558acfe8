"""Helpers the Pallas kernels share: per-platform backend choice and block arithmetic.

A kernel is written once as a function of the Pallas backend that will
compile it (``INTERPRET``, ``TRITON`` or ``MOSAIC_TPU``): block shapes,
layouts and compiler parameters may differ per backend. :func:`dispatch`
builds one variant per backend and lets ``jax.lax.platform_dependent``
pick the one for the platform the computation is *lowered* for, so the
same jitted function runs in interpret mode on CPU, through Triton on
NVIDIA/AMD GPUs and through Mosaic on TPUs — and can be cross-lowered for
an accelerator from a CPU machine (``jax.jit(f).trace(...).lower(
lowering_platforms=("cuda",))``) without JAX's defaults choosing for us
(JAX 0.10 would otherwise pick Mosaic GPU, which cannot lower these
kernels).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

# The Pallas backends a kernel variant can be built for.
INTERPRET = "interpret"
TRITON = "triton"
MOSAIC_TPU = "mosaic_tpu"

# The smallest tile dimension a GPU tensor-core dot accepts.
MIN_BLOCK = 16
# TPU vector registers are (sublanes, lanes) = (8, 128) 32-bit words; the
# last two dims of a Mosaic block must be multiples of these (or whole).
TPU_SUBLANES = 8
TPU_LANES = 128


def dispatch(build: Callable[[str], Callable[..., Any]], *args,
             interpret: Optional[bool] = None):
  """Calls the variant of a kernel built for the platform being lowered for.

  Args:
    build: ``build(backend)`` returns a function of ``args`` that runs the
      kernel with that backend's layout and compiler parameters.
    *args: the arrays passed to the chosen variant.
    interpret: ``True`` runs the interpret variant on every platform (for
      debugging an accelerator kernel's indexing). ``None`` or ``False``
      compile with Triton on GPUs and Mosaic on TPUs; CPU has no Pallas
      compiler, so there the interpret variant always runs.
  """
  if interpret:
    return build(INTERPRET)(*args)
  triton = build(TRITON)
  return jax.lax.platform_dependent(*args, cpu=build(INTERPRET), cuda=triton, rocm=triton,
                                    tpu=build(MOSAIC_TPU))


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def covering_pow2(x: int) -> int:
  """The smallest power of two >= ``x``, and at least ``MIN_BLOCK``."""
  return max(MIN_BLOCK, 1 << (max(x, 1) - 1).bit_length())
