"""Flash attention lowers for real accelerators: Triton on cuda, Mosaic on TPU.

Cross-lowering (``lowering_platforms=("cuda",)`` / ``("tpu",)`` from this
CPU machine) runs the Pallas Triton and Mosaic lowerings of the forward
kernel and, through ``jax.grad``, of the dq and dk/dv kernels, for every
logit shaper, dtype and head-dim case. It is tracing only (nothing runs),
so these tests are fast; what they cannot catch is a Mosaic or Triton
compile error that only the accelerator's own compiler reports.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import _tiling
from pallas_kernels import cross_lowering as cl
from pallas_kernels import flash_attention as fa
from pallas_kernels.flash_attention import _calls

# Lengths that are not multiples of any block, two heads, batch 2.
_B, _LQ, _LK, _H = 2, 200, 300, 2

# option name -> (flash_attention keyword arguments, dtype, head_dim)
_OPTIONS = {
    "plain": ({}, jnp.float32, 64),
    "segments": ({"segments": True}, jnp.float32, 64),
    "causal": ({"causal": True}, jnp.float32, 64),
    "causal_segments": ({"causal": True, "segments": True}, jnp.float32, 64),
    "alibi_positions": ({"alibi": True}, jnp.float32, 64),
    "dense_bias": ({"bias": (1, _H)}, jnp.float32, 64),
    "key_bias": ({"key_bias": True}, jnp.float32, 64),
    "bf16_head128": ({"causal": True}, jnp.bfloat16, 128),
    "odd_head_dim": ({"causal": True}, jnp.float32, 80),
}


def _inputs(options, dtype, head_dim):
  """q, k, v, the differentiable extras (bias, key_bias) and the integer/constant ones."""
  q = jnp.zeros((_B, _LQ, _H, head_dim), dtype)
  k = v = jnp.zeros((_B, _LK, _H, head_dim), dtype)
  floats, fixed = {}, {}
  if options.get("segments"):
    fixed.update(q_segment_ids=jnp.ones((_B, _LQ), jnp.int32),
                 kv_segment_ids=jnp.ones((_B, _LK), jnp.int32))
  if options.get("alibi"):
    fixed.update(alibi_slopes=jnp.full((_H,), 0.5), q_positions=jnp.zeros((_B, _LQ), jnp.int32),
                 kv_positions=jnp.zeros((_B, _LK), jnp.int32))
  if "bias" in options:
    floats["bias"] = jnp.zeros(options["bias"] + (_LQ, _LK), dtype)
  if options.get("key_bias"):
    floats["key_bias"] = jnp.zeros((_B, _LK), dtype)
  return q, k, v, floats, fixed, bool(options.get("causal"))


def _lowered_calls(platform, option, mode, chip="v5e"):
  options, dtype, head_dim = _OPTIONS[option]
  q, k, v, floats, fixed, causal = _inputs(options, dtype, head_dim)

  def forward(q, k, v, floats):
    return fa.flash_attention(q, k, v, causal=causal, **floats, **fixed)

  def loss(q, k, v, floats):
    return jnp.sum(forward(q, k, v, floats).astype(jnp.float32))

  fn = forward if mode == "forward" else jax.grad(loss, argnums=(0, 1, 2, 3))
  text = cl.lower_text(fn, q, k, v, floats, platform=platform, chip=chip)
  return text.count(f"custom_call @{cl.kernel_call_for(platform)}"), cl.custom_calls(text), text


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("option", list(_OPTIONS))
@pytest.mark.parametrize("platform", cl.PLATFORMS)
def test_every_option_lowers_to_the_platform_kernel(platform, option, mode):
  count, calls, text = _lowered_calls(platform, option, mode)
  # forward: one kernel; backward: forward (for the residuals), dq and dk/dv.
  assert count == (1 if mode == "forward" else 3), (count, sorted(calls))
  assert calls == {cl.kernel_call_for(platform)}, sorted(calls)
  if platform == "cuda":
    assert "mosaic_gpu" not in text


@pytest.mark.parametrize("chip", ["v5p", "v6e"])
def test_all_options_together_lower_for_other_tpu_generations(chip):
  q = jnp.zeros((_B, _LQ, _H, 64), jnp.bfloat16)
  k = v = jnp.zeros((_B, _LK, _H, 64), jnp.bfloat16)
  seg_q, seg_k = jnp.ones((_B, _LQ), jnp.int32), jnp.ones((_B, _LK), jnp.int32)

  def loss(q, k, v, bias, key_bias):
    out = fa.flash_attention(q, k, v, causal=True, q_segment_ids=seg_q, kv_segment_ids=seg_k,
                             alibi_slopes=jnp.ones((_H,)), q_positions=seg_q,
                             kv_positions=seg_k, bias=bias, key_bias=key_bias)
    return jnp.sum(out.astype(jnp.float32))

  grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
  text = cl.lower_text(grad, q, k, v, jnp.zeros((_B, 1, _LQ, _LK)), jnp.zeros((_B, _LK)),
                       platform="tpu", chip=chip)
  assert text.count(f"custom_call @{cl.MOSAIC_TPU_CALL}") == 3


def test_blocks_follow_the_lowered_backend_not_the_host(monkeypatch):
  """Lowering for cuda from a CPU host gives the Triton variant the GPU blocks."""
  seen = {}
  original = _calls._forward

  def spy(st, *args):
    seen[st.backend] = (st.block_q, st.block_k, st.interpret)
    return original(st, *args)

  monkeypatch.setattr(_calls, "_forward", spy)
  x = jnp.zeros((1, 1024, 1, 64), jnp.bfloat16)
  cl.lower_text(fa.flash_attention, x, x, x, platform="cuda")
  assert seen[_tiling.TRITON] == fa.DEFAULT_BLOCKS["gpu"] + (False,)
  assert seen[_tiling.MOSAIC_TPU] == fa.DEFAULT_BLOCKS["tpu"] + (False,)
  assert seen[_tiling.INTERPRET] == fa.DEFAULT_BLOCKS["cpu"] + (True,)
  # Short sequences shrink the blocks; Mosaic keeps them at >= 128 lanes.
  assert _calls.blocks_for(_tiling.TRITON, None, None, 40, 20) == (64, 32)
  assert _calls.blocks_for(_tiling.MOSAIC_TPU, None, None, 40, 20) == (128, 128)


def test_no_option_is_refused_on_any_platform():
  options = dict(dtype=jnp.bfloat16, head_dim=80, causal=True, q_segment_ids=True,
                 alibi_slopes=True, bias=True, key_bias=True)
  for platform in ("cpu", "cuda", "rocm", "gpu", "tpu"):
    assert fa.unsupported_options(platform, **options) == []
  assert fa.unsupported_options("quantum") != []
