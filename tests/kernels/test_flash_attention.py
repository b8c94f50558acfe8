"""Flash attention (Pallas, interpret mode on CPU) against the plain-jnp reference.

Forward outputs and the gradients of q, k, v, the dense bias and the per-key
bias are compared for every logit shaper the encoders and T5 use (causal,
segments/padding, ALiBi with packed positions, T5's relative bias, MrT5's
gate), at lengths that are and are not multiples of the blocks, head dims that
run natively and that need padding, and float32/bfloat16.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import _tiling
from pallas_kernels import flash_attention as fa


def _qkv(key, batch, q_len, kv_len, heads, head_dim, dtype):
  kq, kk, kv = jax.random.split(key, 3)
  shape_q, shape_k = (batch, q_len, heads, head_dim), (batch, kv_len, heads, head_dim)
  return (jax.random.normal(kq, shape_q, jnp.float32).astype(dtype),
          jax.random.normal(kk, shape_k, jnp.float32).astype(dtype),
          jax.random.normal(kv, shape_k, jnp.float32).astype(dtype))


def _packed_segments(length, batch, rng):
  """Two or three packed documents per row, then padding (id 0)."""
  ids = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for b in range(batch):
    cuts = sorted(rng.choice(np.arange(1, length), size=min(2, length - 1), replace=False)) \
        if length > 2 else []
    end = max(1, length - rng.integers(0, max(1, length // 5)))
    bounds = [0] + [c for c in cuts if c < end] + [end]
    for seg, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
      ids[b, start:stop] = seg
      positions[b, start:stop] = np.arange(stop - start)
  return jnp.asarray(ids), jnp.asarray(positions)


def _grads(fn, q, k, v, extra, cotangent):
  """Gradients of ``<fn(q, k, v, **extra), cotangent>`` w.r.t. q, k, v and float extras."""
  float_names = [n for n, x in extra.items() if x is not None and not isinstance(x, bool)
                 and jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and n != "alibi_slopes"]

  def loss(q, k, v, floats):
    out = fn(q, k, v, **{**extra, **floats})
    return jnp.sum(out.astype(jnp.float32) * cotangent)

  def run(q, k, v, floats):
    # One jitted program: interpret-mode kernels run far faster compiled
    # whole than op by op.
    return fn(q, k, v, **{**extra, **floats}), jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v,
                                                                                   floats)

  return jax.jit(run)(q, k, v, {n: extra[n] for n in float_names})


def _assert_close(got, want, tol, what):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert got.shape == want.shape, what
  assert np.all(np.isfinite(got)), f"{what}: non-finite values"
  scale = max(1.0, float(np.max(np.abs(want))))
  err = float(np.max(np.abs(got - want))) / scale
  assert err <= tol, f"{what}: max error {err:.3g} (relative to {scale:.3g}) > {tol}"


def _assert_matches_reference(q, k, v, tol, block_q=None, block_k=None, backend=None, **extra):
  """Asserts flash output and every gradient equal the jnp reference within ``tol``.

  ``backend``: run that backend's variant (layout and blocks) in interpret
  mode instead of the public entry point.
  """
  cot = jax.random.normal(jax.random.PRNGKey(7), q.shape, jnp.float32)
  flash = functools.partial(fa.flash_attention, block_q=block_q, block_k=block_k)
  if backend is not None:
    flash = functools.partial(fa.interpret_variant, backend, block_q=block_q, block_k=block_k)
  out, grads = _grads(flash, q, k, v, extra, cot)
  ref_out, ref_grads = _grads(fa.attention_reference, q, k, v, extra, cot)
  _assert_close(out, ref_out, tol, "output")
  for name, g, r in zip("qkv", grads[:3], ref_grads[:3]):
    _assert_close(g, r, tol, f"d{name}")
  assert set(grads[3]) == set(ref_grads[3])
  for name in grads[3]:
    _assert_close(grads[3][name], ref_grads[3][name], tol, f"d{name}")
  return out, grads


_TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


# The d=128 cases other than 300 repeat the d=64 ones at twice the cost: slow.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("length,head_dim", [
    (1, 64), (127, 64), (128, 64), (300, 64), (300, 128),
    pytest.param(1, 128, marks=_SLOW), pytest.param(127, 128, marks=_SLOW),
    pytest.param(128, 128, marks=_SLOW)])
def test_plain_attention_matches_reference_at_block_edges(length, head_dim):
  q, k, v = _qkv(jax.random.PRNGKey(length + head_dim), 1, length, length, 2, head_dim,
                 jnp.float32)
  _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_q=64, block_k=64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_causal_segments_and_alibi_with_packed_positions(dtype):
  rng = np.random.default_rng(0)
  seg, pos = _packed_segments(200, 2, rng)
  q, k, v = _qkv(jax.random.PRNGKey(1), 2, 200, 200, 4, 64, dtype)
  slopes = jnp.asarray([0.5, 0.25, 0.125, 0.0625], jnp.float32)
  _assert_matches_reference(q, k, v, _TOL[dtype], block_q=64, block_k=32, q_segment_ids=seg,
           kv_segment_ids=seg, causal=True, q_positions=pos, kv_positions=pos,
           alibi_slopes=slopes)


def test_bidirectional_alibi_with_padding_matches_reference():
  rng = np.random.default_rng(1)
  seg, pos = _packed_segments(150, 2, rng)
  q, k, v = _qkv(jax.random.PRNGKey(2), 2, 150, 150, 2, 128, jnp.float32)
  _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_q=64, block_k=64, q_segment_ids=seg,
           kv_segment_ids=seg, q_positions=pos, kv_positions=pos,
           alibi_slopes=jnp.asarray([0.5, 0.03125], jnp.float32))


@pytest.mark.parametrize("bias_batch,bias_heads", [
    (1, 2), pytest.param(2, 1, marks=_SLOW), pytest.param(2, 2, marks=_SLOW)])
def test_dense_bias_and_key_bias_gradients(bias_batch, bias_heads):
  """T5's relative bias (broadcast over batch) and MrT5's per-key gate both get gradients."""
  q, k, v = _qkv(jax.random.PRNGKey(3), 2, 90, 130, 2, 64, jnp.float32)
  bias = jax.random.normal(jax.random.PRNGKey(4), (bias_batch, bias_heads, 90, 130))
  key_bias = -jax.nn.softplus(jax.random.normal(jax.random.PRNGKey(5), (2, 130)) * 3)
  kv_seg = jnp.ones((2, 130), jnp.int32).at[1, 100:].set(0)
  q_seg = jnp.ones((2, 90), jnp.int32)
  _, grads = _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_q=32, block_k=64, bias=bias,
                      key_bias=key_bias, q_segment_ids=q_seg, kv_segment_ids=kv_seg)
  assert grads[3]["bias"].shape == bias.shape
  # Padded keys get no gradient through the gate.
  np.testing.assert_array_equal(np.asarray(grads[3]["key_bias"])[1, 100:], 0.0)


@pytest.mark.slow
def test_causal_decoder_with_bias_in_bfloat16():
  q, k, v = _qkv(jax.random.PRNGKey(6), 1, 160, 160, 2, 64, jnp.bfloat16)
  bias = jax.random.normal(jax.random.PRNGKey(8), (1, 2, 160, 160))
  _assert_matches_reference(q, k, v, _TOL[jnp.bfloat16], block_q=64, block_k=64, causal=True, bias=bias)


@pytest.mark.parametrize("head_dim", [pytest.param(32, marks=_SLOW), 80])
def test_head_dims_that_need_padding(head_dim):
  q, k, v = _qkv(jax.random.PRNGKey(head_dim), 1, 70, 70, 2, head_dim, jnp.float32)
  _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_q=32, block_k=32, causal=True)


def test_single_query_against_a_cache():
  """A decode step: one query over a partly filled key/value cache."""
  q, k, v = _qkv(jax.random.PRNGKey(9), 2, 1, 96, 2, 64, jnp.float32)
  kv_seg = (jnp.arange(96)[None, :] < jnp.asarray([[40], [96]])).astype(jnp.int32)
  _assert_matches_reference(q, k, v, _TOL[jnp.float32], q_segment_ids=jnp.ones((2, 1), jnp.int32),
           kv_segment_ids=kv_seg)


def test_fully_masked_rows_give_zero_output_and_gradients():
  q, k, v = _qkv(jax.random.PRNGKey(10), 1, 80, 80, 2, 64, jnp.float32)
  seg = jnp.ones((1, 80), jnp.int32).at[0, 50:].set(0)  # rows 50.. are padding
  out, grads = _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_q=32, block_k=32,
                        q_segment_ids=seg, kv_segment_ids=seg)
  np.testing.assert_array_equal(np.asarray(out)[0, 50:], 0.0)
  np.testing.assert_array_equal(np.asarray(grads[0])[0, 50:], 0.0)  # dq of padded queries
  np.testing.assert_array_equal(np.asarray(grads[1])[0, 50:], 0.0)  # dk of padded keys
  np.testing.assert_array_equal(np.asarray(grads[2])[0, 50:], 0.0)  # dv of padded keys
  assert np.any(np.asarray(out)[0, :50] != 0.0)


def test_tpu_layout_with_every_option_matches_reference():
  """The Mosaic variant's indexing, run in interpret mode: heads-major q/k/v,
  128-lane query columns tiled to a 256-wide key block, 8-sublane key rows,
  SMEM slopes, 128-lane statistics cut to a 64-wide head. (The Triton variant
  shares the interpret layout, which every other test here checks.)"""
  rng = np.random.default_rng(2)
  seg_q, pos_q = _packed_segments(200, 2, rng)
  seg_k, pos_k = _packed_segments(300, 2, rng)
  q, k, v = _qkv(jax.random.PRNGKey(13), 2, 200, 300, 2, 64, jnp.float32)
  bias = jax.random.normal(jax.random.PRNGKey(14), (1, 2, 200, 300))
  key_bias = jax.random.normal(jax.random.PRNGKey(15), (2, 300))
  _assert_matches_reference(q, k, v, _TOL[jnp.float32], block_k=256, backend=_tiling.MOSAIC_TPU,
                            causal=True, q_segment_ids=seg_q, kv_segment_ids=seg_k,
                            q_positions=pos_q, kv_positions=pos_k,
                            alibi_slopes=jnp.asarray([0.5, 0.125], jnp.float32), bias=bias,
                            key_bias=key_bias)


def test_tpu_layout_pads_odd_head_dims_in_bfloat16():
  q, k, v = _qkv(jax.random.PRNGKey(16), 1, 130, 150, 2, 80, jnp.bfloat16)
  _assert_matches_reference(q, k, v, _TOL[jnp.bfloat16], backend=_tiling.MOSAIC_TPU,
                            causal=True, key_bias=jnp.zeros((1, 150), jnp.bfloat16))


def test_jit_and_default_blocks_agree_with_explicit_blocks():
  q, k, v = _qkv(jax.random.PRNGKey(11), 1, 140, 140, 2, 64, jnp.float32)
  eager = fa.flash_attention(q, k, v, causal=True, block_q=32, block_k=64)
  jitted = jax.jit(functools.partial(fa.flash_attention, causal=True))(q, k, v)
  _assert_close(jitted, eager, 2e-5, "jit vs eager")


def test_bad_inputs_raise_clear_errors():
  q, k, v = _qkv(jax.random.PRNGKey(12), 1, 16, 16, 2, 64, jnp.float32)
  with pytest.raises(ValueError, match="power of two"):
    fa.flash_attention(q, k, v, block_q=48)
  with pytest.raises(ValueError, match="head_dim 320"):
    big = jnp.zeros((1, 16, 2, 320))
    fa.flash_attention(big, big, big)
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    fa.flash_attention(q, k, v, q_segment_ids=jnp.ones((1, 16), jnp.int32))
  with pytest.raises(ValueError, match="bias must be"):
    fa.flash_attention(q, k, v, bias=jnp.zeros((1, 2, 16, 15)))
  with pytest.raises(ValueError, match="alibi_slopes"):
    fa.flash_attention(q, k, v, alibi_slopes=jnp.ones((3,)))
  with pytest.raises(ValueError, match="share a dtype"):
    fa.flash_attention(q, k.astype(jnp.bfloat16), v)
