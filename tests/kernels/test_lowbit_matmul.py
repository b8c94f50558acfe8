"""Low-bit Pallas matmuls (int8 W8A8, packed ternary) against their jnp references.

On CPU the kernels run in Pallas interpret mode; the matrices are small and
the blocks smaller than the matrices, so K is tiled and every dimension needs
padding, while each case stays well under a second.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import lowbit_matmul as lb

# Odd shapes: none is a multiple of the blocks below, or of 4 for K.
M, K, N = 33, 70, 45


def _int8(rng, shape):
  return jnp.asarray(rng.integers(-127, 128, shape), jnp.int8)


def _ternary(rng, shape):
  return jnp.asarray(rng.integers(-1, 2, shape), jnp.int8)


def _exact_int_matmul(x, w):
  return np.asarray(x, np.int64) @ np.asarray(w, np.int64)


# ---------------------------------------------------------------------------
# int8 W8A8
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blocks", [dict(block_m=16, block_n=16, block_k=32), dict()],
    ids=["tiled", "default_blocks"],
)
def test_int8_matmul_unit_scales_is_exact_integer_product(blocks):
  rng = np.random.default_rng(0)
  x, w = _int8(rng, (M, K)), _int8(rng, (K, N))
  ones_m, ones_n = jnp.ones((M,), jnp.float32), jnp.ones((N,), jnp.float32)
  out = lb.int8_matmul(x, w, ones_m, ones_n, out_dtype=jnp.float32, **blocks)
  ref = lb.int8_matmul_reference(x, w, ones_m, ones_n, out_dtype=jnp.float32)
  assert out.shape == (M, N) and out.dtype == jnp.float32
  # |sums| < 2**24, so float32 holds the int32 accumulator exactly.
  np.testing.assert_array_equal(np.asarray(out), _exact_int_matmul(x, w))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_int8_matmul_scaled_matches_reference_bitwise():
  rng = np.random.default_rng(1)
  x, w = _int8(rng, (M, K)), _int8(rng, (K, N))
  xs = jnp.asarray(rng.uniform(0.001, 0.1, M), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.001, 0.1, N), jnp.float32)
  out = lb.int8_matmul(x, w, xs, ws, out_dtype=jnp.float32,
                       block_m=16, block_n=32, block_k=16)
  ref = lb.int8_matmul_reference(x, w, xs, ws, out_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  # Default bfloat16 output is the same values rounded once.
  out_bf16 = lb.int8_matmul(x, w, xs, ws, block_m=16, block_n=32, block_k=16)
  assert out_bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(out_bf16, np.float32),
      np.asarray(ref.astype(jnp.bfloat16), np.float32))


def test_int8_matmul_end_to_end_close_to_float_matmul():
  rng = np.random.default_rng(2)
  xf = rng.standard_normal((M, K)).astype(np.float32)
  wf = rng.standard_normal((K, N)).astype(np.float32)
  x_q, xs = lb.quantize_rows_absmax(xf)
  w_q, ws = lb.quantize_columns_absmax(wf)
  out = jax.jit(functools.partial(lb.int8_matmul, out_dtype=jnp.float32))(
      x_q, w_q, xs, ws)
  exact = xf @ wf
  rel = np.linalg.norm(np.asarray(out) - exact) / np.linalg.norm(exact)
  assert rel < 0.02, rel


def test_int8_matmul_rejects_bad_inputs():
  x = jnp.zeros((4, 8), jnp.int8)
  w = jnp.zeros((8, 3), jnp.int8)
  with pytest.raises(ValueError, match="Contraction"):
    lb.int8_matmul(x, jnp.zeros((7, 3), jnp.int8), jnp.ones(4), jnp.ones(3))
  with pytest.raises(ValueError, match="int8"):
    lb.int8_matmul(x.astype(jnp.int32), w, jnp.ones(4), jnp.ones(3))
  with pytest.raises(ValueError, match="w_scale"):
    lb.int8_matmul(x, w, jnp.ones(4), jnp.ones(4))


# ---------------------------------------------------------------------------
# Ternary packing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 70, 128])
def test_pack_unpack_round_trip(k):
  rng = np.random.default_rng(k)
  w = _ternary(rng, (k, 19))
  packed = lb.pack_ternary(w)
  assert packed.dtype == jnp.uint8 and packed.shape == (-(-k // 4), 19)
  np.testing.assert_array_equal(np.asarray(lb.unpack_ternary(packed, k)),
                                np.asarray(w))


def test_pack_code_layout():
  # Rows 0..3 of one column hold (+1, -1, 0, +1): codes 1, 2, 0, 1 at bits
  # 0-1, 2-3, 4-5, 6-7. A fifth row starts the next byte.
  w = jnp.asarray([[1], [-1], [0], [1], [-1]], jnp.int8)
  packed = np.asarray(lb.pack_ternary(w))
  assert packed[:, 0].tolist() == [1 | 2 << 2 | 0 << 4 | 1 << 6, 2]


def test_pack_under_jit_matches_eager():
  w = _ternary(np.random.default_rng(3), (70, 9))
  np.testing.assert_array_equal(np.asarray(jax.jit(lb.pack_ternary)(w)),
                                np.asarray(lb.pack_ternary(w)))


@pytest.mark.parametrize("bad", [2, -2, 127])
def test_pack_rejects_non_ternary_values(bad):
  w = np.zeros((6, 3), np.int8)
  w[4, 1] = bad
  with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
    lb.pack_ternary(jnp.asarray(w))


def test_unpack_rejects_wrong_row_count():
  with pytest.raises(ValueError, match="ceil"):
    lb.unpack_ternary(jnp.zeros((3, 5), jnp.uint8), k=16)


# ---------------------------------------------------------------------------
# Ternary matmul
# ---------------------------------------------------------------------------


def test_ternary_matmul_int8_per_tensor_is_exact():
  rng = np.random.default_rng(4)
  x, w = _int8(rng, (M, K)), _ternary(rng, (K, N))
  packed = lb.pack_ternary(w)
  out = lb.ternary_matmul(x, packed, jnp.float32(1.0), k=K,
                          block_m=16, block_n=16, block_k=32)
  ref = lb.ternary_matmul_reference(x, packed, jnp.float32(1.0), k=K)
  np.testing.assert_array_equal(np.asarray(out), _exact_int_matmul(x, w))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  # With a real scale and per-row activation scales: same bits as reference.
  xs = jnp.asarray(rng.uniform(0.01, 0.1, M), jnp.float32)
  args = dict(k=K, x_scale=xs)
  out = lb.ternary_matmul(x, packed, jnp.float32(0.37), block_m=16,
                          block_n=16, block_k=32, **args)
  ref = lb.ternary_matmul_reference(x, packed, jnp.float32(0.37), **args)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("block_k", [16, 64], ids=["k_tiled", "group_as_tile"])
def test_ternary_matmul_int8_per_group_is_exact(block_k):
  # Power-of-two group scales keep every partial product exact in float32,
  # so the scaled, group-summed result must match the reference bit for bit.
  rng = np.random.default_rng(5)
  group = 32
  x, w = _int8(rng, (M, K)), _ternary(rng, (K, N))
  packed = lb.pack_ternary(w)
  scale = jnp.asarray(2.0 ** rng.integers(-3, 4, (-(-K // group), N)),
                      jnp.float32)
  out = lb.ternary_matmul(x, packed, scale, k=K, group_size=group,
                          block_m=16, block_n=32, block_k=block_k)
  ref = lb.ternary_matmul_reference(x, packed, scale, k=K, group_size=group)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  per_row = np.repeat(np.asarray(scale), group, axis=0)[:K]
  expected = np.asarray(x, np.float64) @ (np.asarray(w) * per_row)
  np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("group_size", [None, 32])
def test_ternary_matmul_float_activations(dtype, tol, group_size):
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((M, K)), dtype)
  w = _ternary(rng, (K, N))
  packed = lb.pack_ternary(w)
  if group_size is None:
    scale = jnp.float32(0.05)
  else:
    scale = jnp.asarray(rng.uniform(0.01, 0.1, (-(-K // group_size), N)),
                        jnp.float32)
  kwargs = dict(k=K, group_size=group_size)
  out = lb.ternary_matmul(x, packed, scale, block_m=16, block_n=16,
                          block_k=16, **kwargs)
  ref = lb.ternary_matmul_reference(x, packed, scale, **kwargs)
  assert out.dtype == jnp.float32
  # Weights are exact in any dtype and sums are float32; only the summation
  # order differs between kernel and reference.
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref),
                             rtol=tol, atol=tol)


def test_ternary_matmul_end_to_end_under_jit():
  rng = np.random.default_rng(7)
  wf = rng.standard_normal((K, N)).astype(np.float32)
  xf = rng.standard_normal((M, K)).astype(np.float32)
  w_t, scale = lb.quantize_ternary_absmean(wf, group_size=32)
  x_q, xs = lb.quantize_rows_absmax(xf)
  fn = jax.jit(functools.partial(lb.ternary_matmul, k=K, group_size=32))
  out = fn(x_q, lb.pack_ternary(w_t), scale, x_scale=xs)
  dequant = np.asarray(w_t) * np.repeat(np.asarray(scale), 32, axis=0)[:K]
  expected = (np.asarray(x_q) * np.asarray(xs)[:, None]) @ dequant
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


def test_ternary_matmul_rejects_bad_scales():
  x = jnp.zeros((4, 10), jnp.int8)
  packed = lb.pack_ternary(jnp.zeros((10, 3), jnp.int8))
  with pytest.raises(ValueError, match="per-tensor"):
    lb.ternary_matmul(x, packed, jnp.ones((3,)), k=10)
  with pytest.raises(ValueError, match="Per-group"):
    lb.ternary_matmul(x, packed, jnp.ones((2, 3)), k=10, group_size=4)
  with pytest.raises(ValueError, match="multiple of 4"):
    lb.ternary_matmul(x, packed, jnp.ones((2, 3)), k=10, group_size=6)


# ---------------------------------------------------------------------------
# Quantizers
# ---------------------------------------------------------------------------


def test_absmax_quantizers_range_error_and_zero_rows():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((9, 40)).astype(np.float32) * 3.0
  x[4] = 0.0  # an all-zero row must not divide by zero
  x_q, scale = lb.quantize_rows_absmax(x)
  assert x_q.dtype == jnp.int8 and scale.shape == (9,)
  x_q, scale = np.asarray(x_q), np.asarray(scale)
  assert np.abs(x_q).max() <= 127
  assert np.all(np.isfinite(scale)) and scale[4] == 0 and not x_q[4].any()
  # Each row's extreme hits +-127 and rounding error is at most half a step.
  assert np.all(np.abs(x_q[scale > 0]).max(axis=1) == 127)
  err = np.abs(x_q * scale[:, None] - x)
  assert np.all(err <= scale[:, None] / 2 + 1e-6)

  w_q, w_scale = lb.quantize_columns_absmax(x.T)
  np.testing.assert_array_equal(np.asarray(w_q), x_q.T)
  np.testing.assert_array_equal(np.asarray(w_scale), scale)


def test_absmean_per_tensor():
  rng = np.random.default_rng(9)
  w = rng.standard_normal((37, 21)).astype(np.float32)
  w_t, scale = lb.quantize_ternary_absmean(w)
  w_t, scale = np.asarray(w_t), float(scale)
  assert w_t.dtype == np.int8 and set(np.unique(w_t)) <= {-1, 0, 1}
  np.testing.assert_allclose(scale, np.abs(w).mean(), rtol=1e-6)
  expected = np.clip(np.round(w / (scale + 1e-5)), -1, 1)
  np.testing.assert_array_equal(w_t, expected)
  # Inside the clip range each weight is within half a step of its code.
  inside = np.abs(w) <= scale
  assert np.all(np.abs(w_t * scale - w)[inside] <= scale / 2 + 1e-6)


def test_absmean_per_group():
  rng = np.random.default_rng(10)
  k, n, g = 70, 6, 32
  w = rng.standard_normal((k, n)).astype(np.float32)
  w[64:] *= 10.0  # the short last group (6 rows) gets its own, larger scale
  w_t, scale = lb.quantize_ternary_absmean(w, group_size=g)
  assert scale.shape == (3, n)
  for gi in range(3):
    rows = slice(gi * g, min(k, (gi + 1) * g))
    np.testing.assert_allclose(np.asarray(scale[gi]),
                               np.abs(w[rows]).mean(axis=0), rtol=1e-6)
    expected = np.clip(np.round(w[rows] / (np.asarray(scale[gi]) + 1e-5)),
                       -1, 1)
    np.testing.assert_array_equal(np.asarray(w_t[rows]), expected)


def test_quantizers_zero_input_safe():
  z = np.zeros((8, 12), np.float32)
  for fn in (lb.quantize_rows_absmax, lb.quantize_columns_absmax,
             lb.quantize_ternary_absmean,
             functools.partial(lb.quantize_ternary_absmean, group_size=4)):
    q, s = fn(z)
    assert not np.asarray(q).any()
    assert np.all(np.asarray(s) == 0)


# ---------------------------------------------------------------------------
# Accelerator layouts, run in interpret mode
# ---------------------------------------------------------------------------
# The Triton and Mosaic TPU variants use their own blocks, grids and (on TPU)
# scratch accumulators and 2-D scale layouts; running them interpreted checks
# that indexing against the references on CPU. Shapes are odd and the blocks
# small enough that K takes several steps and N several blocks.

LM, LK, LN = 5, 300, 200
LAYOUTS = [lb.TRITON, lb.MOSAIC_TPU]


@pytest.mark.parametrize("backend", LAYOUTS)
def test_int8_layouts_match_reference_bitwise(backend):
  rng = np.random.default_rng(11)
  x, w = _int8(rng, (LM, LK)), _int8(rng, (LK, LN))
  xs = jnp.asarray(rng.uniform(0.001, 0.1, LM), jnp.float32)
  ws = jnp.asarray(rng.uniform(0.001, 0.1, LN), jnp.float32)
  out = lb.int8_matmul_interpreted_as(backend, x, w, xs, ws, out_dtype=jnp.float32,
                                      block_n=128, block_k=128)
  ref = lb.int8_matmul_reference(x, w, xs, ws, out_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


# (group_size, block_k): per tensor over several K steps; groups of whole
# steps, one or several steps each; groups below the K granule sharing a
# step (masked); a group size padded per group in the wrapper.
TERNARY_PLANS = [(None, 128), (128, None), (256, 128), (32, None), (100, None)]


@pytest.mark.parametrize("group_size,block_k", TERNARY_PLANS,
                         ids=["tensor", "g128", "g256_2steps", "g32_shared", "g100_padded"])
@pytest.mark.parametrize("backend", LAYOUTS)
def test_ternary_int8_layouts_match_reference_bitwise(backend, group_size, block_k):
  rng = np.random.default_rng(12)
  x, w = _int8(rng, (LM, LK)), _ternary(rng, (LK, LN))
  packed = lb.pack_ternary(w)
  groups = 1 if group_size is None else -(-LK // group_size)
  scale = jnp.asarray(2.0 ** rng.integers(-3, 4, (groups, LN)), jnp.float32)
  if group_size is None:
    scale = scale[0, 0]
  xs = jnp.asarray(rng.uniform(0.01, 0.1, LM), jnp.float32)
  kwargs = dict(k=LK, group_size=group_size, x_scale=xs)
  out = lb.ternary_matmul_interpreted_as(backend, x, packed, scale, block_n=128,
                                         block_k=block_k, **kwargs)
  ref = lb.ternary_matmul_reference(x, packed, scale, **kwargs)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("dtype,group_size", [(jnp.bfloat16, None), (jnp.float32, 64)])
@pytest.mark.parametrize("backend", LAYOUTS)
def test_ternary_float_layouts_match_reference(backend, dtype, group_size):
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.standard_normal((LM, LK)), dtype)
  packed = lb.pack_ternary(_ternary(rng, (LK, LN)))
  scale = (jnp.float32(0.05) if group_size is None else jnp.asarray(
      rng.uniform(0.01, 0.1, (-(-LK // group_size), LN)), jnp.float32))
  kwargs = dict(k=LK, group_size=group_size)
  out = lb.ternary_matmul_interpreted_as(backend, x, packed, scale,
                                         out_dtype=jnp.bfloat16, block_k=128, **kwargs)
  ref = lb.ternary_matmul_reference(x, packed, scale, out_dtype=jnp.bfloat16, **kwargs)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=1e-2, atol=1e-2)
