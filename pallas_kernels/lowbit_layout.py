"""Per-backend tiling of the low-bit matmuls: default blocks, legal blocks, compiler parameters.

Shared by :mod:`pallas_kernels.lowbit_matmul` (int8) and
:mod:`pallas_kernels.lowbit_ternary`; the rules are explained in the
``Platforms`` section of the :mod:`pallas_kernels.lowbit_matmul` docstring.
Every choice here depends on the Pallas backend a variant is built for,
never on the host's default backend, so cross-lowering from CPU sees the
accelerator's blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import _tiling

INTERPRET, TRITON, MOSAIC_TPU = _tiling.INTERPRET, _tiling.TRITON, _tiling.MOSAIC_TPU

# Default (block_m, block_n, block_k) per kernel and backend.
DEFAULT_BLOCKS = {
    "int8": {INTERPRET: (128, 128, 64), TRITON: (128, 128, 128),
             MOSAIC_TPU: (256, 256, 512)},
    "ternary": {INTERPRET: (64, 128, 256), TRITON: (64, 128, 256),
                MOSAIC_TPU: (256, 256, 1024)},
}
# Triton (num_warps, num_stages): int8 tiles are light and pipeline deeply;
# the ternary decode holds four planes in registers, so fewer stages.
TRITON_PARAMS = {"int8": (4, 3), "ternary": (4, 2)}
# The smallest K step whose packed-byte tile is legal: 128 lanes on TPU;
# block_k / 4 = 16 rows, the smallest dot tile, on Triton.
K_GRANULE = {TRITON: 64, MOSAIC_TPU: _tiling.TPU_LANES}


def pow2_at_least(x: int) -> int:
  return 1 << (max(x, 1) - 1).bit_length()


def tpu_rows(dtypes) -> int:
  """Row granule of a TPU block: 32 / itemsize rows per (8, 128) word tile."""
  return max(_tiling.TPU_SUBLANES * 4 // jnp.dtype(d).itemsize for d in dtypes)


def fit(backend: str, block: int, dim: int, granule: int = 1) -> int:
  """A legal block for ``backend`` near ``block``, shrunk to cover ``dim``.

  Interpret keeps the caller's block (only shrunk to the power of two
  covering ``dim``); Triton needs powers of two >= 16; TPU multiples of
  ``granule`` (rows or lanes of a tile).
  """
  if block <= 0:
    raise ValueError(f"Block sizes must be positive, got {block}.")
  if backend == INTERPRET:
    return min(block, _tiling.covering_pow2(dim))
  if backend == TRITON:
    return min(_tiling.covering_pow2(block), _tiling.covering_pow2(dim))
  return min(_tiling.round_up(block, granule), _tiling.round_up(dim, granule))


def blocks(kind, backend, blocks):
  defaults = DEFAULT_BLOCKS[kind][backend]
  return tuple(d if b is None else b for b, d in zip(blocks, defaults))


def compiler_params(kind: str, backend: str, grid_rank: int):
  if backend == TRITON:
    warps, stages = TRITON_PARAMS[kind]
    return pltriton.CompilerParams(num_warps=warps, num_stages=stages)
  if backend == MOSAIC_TPU:
    semantics = ("parallel",) * 2 + ("arbitrary",) * (grid_rank - 2)
    return pltpu.CompilerParams(dimension_semantics=semantics)
  return None


def dot(x, w, acc_dtype):
  """A tile dot; float32 inputs at full precision (the reference's)."""
  precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  return jnp.dot(x, w, preferred_element_type=acc_dtype, precision=precision)


