"""Helpers the Pallas kernels share: interpret-mode choice and block arithmetic."""

from __future__ import annotations

from typing import Optional

import jax

# The smallest tile dimension a GPU tensor-core dot accepts.
MIN_BLOCK = 16


def resolve_interpret(interpret: Optional[bool]) -> bool:
  """Interpret mode when asked, or by default when running on CPU (no Pallas compiler there)."""
  if interpret is None:
    return jax.default_backend() == "cpu"
  return bool(interpret)


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def covering_pow2(x: int) -> int:
  """The smallest power of two >= ``x``, and at least ``MIN_BLOCK``."""
  return max(MIN_BLOCK, 1 << (max(x, 1) - 1).bit_length())
