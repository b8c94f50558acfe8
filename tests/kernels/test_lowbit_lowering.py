"""Cross-lowering the low-bit matmuls for GPU (Triton) and TPU (Mosaic) from CPU.

Lowering runs the Pallas Triton and Mosaic lowerings (block-shape rules,
primitive support, compiler parameters) without an accelerator; it does not
run the accelerator compilers' later passes. Each case asserts that the
module calls the platform's Pallas kernel target, and for CUDA that JAX did
not fall back to Mosaic GPU. Inputs are zeros: only shapes and dtypes
matter. Shapes are odd (M=5, K=200, N=300) so every dimension is padded;
the ``rows130`` cases span several row blocks (a rank-1 scale block smaller
than its array is what the TPU rules reject).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import pytest

from pallas_kernels import cross_lowering as cl
from pallas_kernels import lowbit_matmul as lb

M, K, N = 5, 200, 300


def _int8(m=M):
  args = (jnp.zeros((m, K), jnp.int8), jnp.zeros((K, N), jnp.int8),
          jnp.ones((m,), jnp.float32), jnp.ones((N,), jnp.float32))
  return lb.int8_matmul, args


def _ternary(dtype, group_size=None, x_scale=False, k=K, m=M, **blocks):
  groups = 1 if group_size is None else -(-k // group_size)
  scale = (jnp.float32(0.5) if group_size is None
           else jnp.ones((groups, N), jnp.float32))
  args = (jnp.zeros((m, k), dtype), jnp.zeros((-(-k // 4), N), jnp.uint8), scale)
  if x_scale:
    args += (jnp.ones((m,), jnp.float32),)
  fn = lambda x, p, s, xs=None: lb.ternary_matmul(
      x, p, s, k=k, group_size=group_size, x_scale=xs, **blocks)
  return fn, args


CASES = {
    "int8": _int8,
    "int8_bf16_out_blocks": lambda: (
        functools.partial(lb.int8_matmul, out_dtype=jnp.bfloat16, block_m=64,
                          block_n=128, block_k=64), _int8()[1]),
    "int8_rows130": lambda: (functools.partial(lb.int8_matmul, block_m=64),
                             _int8(m=130)[1]),
    "ternary_int8_xscale": lambda: _ternary(jnp.int8, x_scale=True),
    "ternary_int8_xscale_rows130": lambda: _ternary(jnp.int8, x_scale=True,
                                                    m=130, block_m=64),
    "ternary_int8_group128": lambda: _ternary(jnp.int8, 128, x_scale=True),
    "ternary_int8_group32": lambda: _ternary(jnp.int8, 32),
    "ternary_int8_group100": lambda: _ternary(jnp.int8, 100),
    "ternary_bf16": lambda: _ternary(jnp.bfloat16),
    "ternary_bf16_rows130": lambda: _ternary(jnp.bfloat16, m=130, block_m=64),
    "ternary_bf16_group64": lambda: _ternary(jnp.bfloat16, 64),
    "ternary_f32_group128_long_k": lambda: _ternary(jnp.float32, 128, k=700),
}


def _lower(case, platform, chip="v5e"):
  fn, args = CASES[case]()
  text = cl.lower_text(fn, *args, platform=platform, chip=chip)
  return cl.custom_calls(text)


@pytest.mark.parametrize("platform", cl.PLATFORMS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_lowers_to_the_platform_kernel(case, platform):
  calls = _lower(case, platform)
  assert cl.kernel_call_for(platform) in calls, calls
  if platform == "cuda":
    assert not any("mosaic" in c for c in calls), calls


@pytest.mark.parametrize("chip,case", [("v6e", "ternary_int8_group128"),
                                       ("v5p", "int8"), ("v5p", "ternary_bf16")])
def test_lowers_for_other_tpu_generations(chip, case):
  assert cl.MOSAIC_TPU_CALL in _lower(case, "tpu", chip)
