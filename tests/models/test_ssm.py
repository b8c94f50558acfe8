"""S4D: the FFT convolution equals a direct convolution and the step-by-step recurrence."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import ssm


def _random_system(key, state_size: int, channels: int, shared: bool, a_init: str = "hippo"):
  module = ssm.S4D(state_size=state_size, a_init=a_init, shared=shared)
  u = jax.random.normal(key, (2, 5, channels))
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), u)["params"])
  # Move C, D and the step away from their initial values so each term matters.
  noise = jax.random.split(key, 3)
  params["C"] = params["C"] + 0.3 * jax.random.normal(noise[0], params["C"].shape)
  params["D"] = params["D"] + 0.5 * jax.random.normal(noise[1], params["D"].shape)
  params["log_step"] = params["log_step"] + 0.2 * jax.random.normal(noise[2],
                                                                    params["log_step"].shape)
  return module, params


def _direct_conv(u: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """``y[t] = sum_{s<=t} k[t-s] u[s]`` per channel in float64 with ``np.convolve``."""
  length, channels = u.shape
  kernel = np.broadcast_to(kernel, (channels, length))
  return np.stack([np.convolve(u[:, h], kernel[h])[:length] for h in range(channels)], axis=1)


@pytest.mark.parametrize("length", [1, 7, 64, 129, 300])
@pytest.mark.parametrize("shared", [True, False])
def test_fft_path_equals_direct_convolution_and_recurrence(length, shared):
  channels = 3
  module, params = _random_system(jax.random.PRNGKey(length), 16, channels, shared)
  u = jax.random.normal(jax.random.PRNGKey(100 + length), (2, length, channels))
  y_fft = np.asarray(module.apply({"params": params}, u))

  c = params["C"][..., 0] + 1j * params["C"][..., 1]
  kernel = np.asarray(ssm.s4d_kernel(params["A_re"], params["A_im"], c, params["log_step"],
                                     length), np.float64)
  d = np.reshape(np.asarray(params["D"], np.float64), (-1,))
  for row in range(2):
    u_row = np.asarray(u[row], np.float64)
    direct = _direct_conv(u_row, kernel) + d * u_row
    recurrent = np.asarray(ssm.ssm_recurrence(params["A_re"], params["A_im"], c,
                                              params["log_step"], params["D"], u[row]))
    scale = np.abs(direct).max()
    np.testing.assert_allclose(y_fft[row], direct, atol=2e-5 * scale, rtol=0)
    np.testing.assert_allclose(recurrent, direct, atol=2e-5 * scale, rtol=0)


def test_kernel_matches_the_discretised_impulse_response():
  """K[l] = Re sum_n C_n Bbar_n Abar_n^l, written out with the ZOH formulas."""
  a_real, a_imag = ssm.initial_a("lin", 4)
  c = np.array([0.5 + 0.1j, -0.2 + 0.3j, 0.7 - 0.4j, 0.1 + 0.0j])
  log_step = np.log(np.array([0.1]))
  kernel = np.asarray(ssm.s4d_kernel(jnp.asarray(a_real), jnp.asarray(a_imag), jnp.asarray(c),
                                     jnp.asarray(log_step, jnp.float32), 10))
  a = a_real.astype(np.float64) + 1j * a_imag
  expected = [np.real(np.sum(c * (np.exp(0.1 * a) - 1) / a * np.exp(0.1 * a) ** l))
              for l in range(10)]
  np.testing.assert_allclose(kernel, expected, atol=1e-6)


def test_initial_spectra():
  real, imag = ssm.initial_a("hippo", 64)
  assert np.all(real == -0.5)
  # The skew-symmetric part has eigenvalues in +-pairs, sorted ascending.
  np.testing.assert_allclose(imag, -imag[::-1], atol=1e-3)
  assert np.all(np.diff(imag) >= 0) and imag.max() > 50
  np.testing.assert_allclose(ssm.initial_a("lin", 4)[1], np.pi * np.arange(4), rtol=1e-6)
  np.testing.assert_allclose(ssm.initial_a("inv", 4)[1], 4 / np.pi * (4 / np.array([1, 3, 5, 7]) - 1),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown S4D A initialisation 'legs'.*hippo"):
    ssm.initial_a("legs", 8)


def test_real_part_of_a_is_clipped_to_stay_stable():
  a = ssm.continuous_a(jnp.array([0.5, -2.0]), jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(np.real(a), [-1e-4, -2.0])


def test_per_channel_parameters_have_a_channel_axis_and_names():
  module = ssm.S4D(state_size=8, shared=False)
  boxed = module.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 5)))["params"]
  shapes = {k: v.value.shape for k, v in boxed.items()}
  assert shapes == {"A_re": (5, 8), "A_im": (5, 8), "C": (5, 8, 2), "D": (5,), "log_step": (5,)}
  assert boxed["C"].names == ("mlp", "ssm_state", None)
  log_step = np.asarray(boxed["log_step"].value)
  assert np.all(log_step >= np.log(0.01)) and np.all(log_step <= 0.0) and np.ptp(log_step) > 0
