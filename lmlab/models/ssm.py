"""S4D: a diagonal state-space model applied as a long convolution (Flax Linen).

Each channel is a linear time-invariant system with a diagonal complex state
``x_t = Abar * x_{t-1} + Bbar * u_t``, ``y_t = Re(C . x_t) + D * u_t``,
discretised from continuous ``A`` (diagonal, ``N`` entries) with zero-order
hold and step ``dt = exp(log_step)``:

  Abar = exp(dt * A),   Bbar = (exp(dt * A) - 1) / A   (B = 1)

Unrolling the recurrence turns the whole layer into a causal convolution of
the input with the kernel ``K[l] = Re sum_n C_n Bbar_n Abar_n^l``, which is
computed for the input length and applied by FFT over ``2L`` zero padding in
``O(L log L)``. ``ssm_recurrence`` evaluates the same system step by step (an
exact reference for tests, and the form a streaming decoder would use).

The parameterisation and initialisations follow the BiGS reference (Wang et
al., "Pretraining Without Attention"): ``A = clip(A_re, max=-1e-4) + i A_im``
with ``A_re = -1/2`` and ``A_im`` from the HiPPO-LegS spectrum (``hippo``),
``pi n`` (``lin``) or ``N/pi (N/(2n+1) - 1)`` (``inv``); ``C`` complex normal
with variance 1/2 per part; ``D = 1``; ``log_step ~ U[log 0.01, log 1]``.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.models.config import SSM_A_INITS as A_INITS
LOG_STEP_RANGE = (0.01, 1.0)


@functools.lru_cache(maxsize=None)
def _hippo_imag(state_size: int) -> np.ndarray:
  """Imaginary parts of the diagonalised HiPPO-LegS (normal part) eigenvalues, ascending.

  HiPPO-LegS ``-A`` plus the rank-one term ``P P^T`` is ``-1/2 I`` plus a
  skew-symmetric matrix; its eigenvalues are ``-1/2 + i w`` with ``w`` the
  eigenvalues of the Hermitian ``-i`` times the skew part.
  """
  n = np.arange(state_size, dtype=np.float64)
  p = np.sqrt(1.0 + 2.0 * n)
  hippo = -(np.tril(np.outer(p, p)) - np.diag(n))
  rank_one = np.sqrt(n + 0.5)
  normal = hippo + np.outer(rank_one, rank_one)
  skew = normal - np.diag(np.diag(normal))
  return np.linalg.eigvalsh(-1j * skew).astype(np.float32)


def initial_a(name: str, state_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(A_re, A_im)`` of shape ``[state_size]`` for an initialisation name in ``A_INITS``."""
  n = np.arange(state_size, dtype=np.float32)
  real = np.full((state_size,), -0.5, np.float32)
  if name == "hippo":
    return real, _hippo_imag(state_size)
  if name == "lin":
    return real, (np.pi * n).astype(np.float32)
  if name == "inv":
    return real, (state_size / np.pi * (state_size / (2 * n + 1) - 1)).astype(np.float32)
  raise ValueError(f"Unknown S4D A initialisation {name!r}; choose one of {A_INITS}.")


def continuous_a(a_real: jax.Array, a_imag: jax.Array) -> jax.Array:
  """Complex ``A`` with the real part kept strictly negative (a stable system)."""
  return jnp.minimum(a_real, -1e-4) + 1j * a_imag


def discretize_zoh(a: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Zero-order-hold ``(Abar, Bbar)`` for ``B = 1``; ``step`` broadcasts against ``a``."""
  abar = jnp.exp(step * a)
  return abar, (abar - 1.0) / a


def s4d_kernel(a_real: jax.Array, a_imag: jax.Array, c: jax.Array, log_step: jax.Array,
               length: int) -> jax.Array:
  """Float32 convolution kernel ``[..., length]``.

  Args:
    a_real, a_imag: ``[..., N]`` parameters of ``A``.
    c: ``[..., N]`` complex output weights.
    log_step: ``[...]`` (or ``[..., 1]``) log of the discretisation step.
    length: Kernel length (the input length).
  """
  a = continuous_a(a_real, a_imag)
  step = jnp.exp(log_step).reshape(log_step.shape[:a.ndim - 1] + (1,))
  abar_log = step * a  # log(Abar); Abar^l = exp(l * log(Abar)).
  _, bbar = discretize_zoh(a, step)
  weights = c * bbar
  powers = jnp.exp(abar_log[..., None] * jnp.arange(length, dtype=jnp.float32))
  return jnp.einsum("...n,...nl->...l", weights, powers).real.astype(jnp.float32)


def causal_fft_conv(u: jax.Array, kernel: jax.Array) -> jax.Array:
  """``y[t] = sum_{s <= t} kernel[t - s] u[s]`` along axis -2 of ``u [..., L, H]``.

  ``kernel`` is ``[L]`` (shared by all channels) or ``[H, L]``. Computed in
  float32 by FFT over ``2L`` zero padding, so nothing wraps around.
  """
  length = u.shape[-2]
  size = 2 * length
  u_freq = jnp.fft.rfft(jnp.asarray(u, jnp.float32), n=size, axis=-2)
  k_freq = jnp.fft.rfft(kernel, n=size, axis=-1)
  k_freq = k_freq[:, None] if kernel.ndim == 1 else k_freq.T  # [size//2+1, 1 or H]
  return jnp.fft.irfft(u_freq * k_freq, n=size, axis=-2)[..., :length, :]


def ssm_recurrence(a_real: jax.Array, a_imag: jax.Array, c: jax.Array, log_step: jax.Array,
                   d: jax.Array, u: jax.Array) -> jax.Array:
  """The same S4D system run step by step over ``u [L, H]`` with ``lax.scan`` (float32).

  Parameters are shared (``[N]``, log_step/d ``[1]``) or per channel
  (``[H, N]``, ``[H]``). Memory is ``O(H N)``; time is ``L`` sequential steps.
  """
  a = continuous_a(a_real, a_imag)
  step = jnp.exp(log_step).reshape(log_step.shape[:a.ndim - 1] + (1,))
  abar, bbar = discretize_zoh(a, step)
  channels = u.shape[-1]
  state_shape = (channels,) + a.shape[-1:]

  def advance(state, u_t):
    state = abar * state + bbar * u_t[:, None]
    return state, jnp.sum(c * state, axis=-1).real

  _, y = jax.lax.scan(advance, jnp.zeros(state_shape, jnp.complex64), jnp.asarray(u, jnp.float32))
  return y + jnp.reshape(d, (-1,)) * u


class S4D(nn.Module):
  """One S4D layer over ``[batch, length, channels]``: FFT convolution plus the ``D`` skip.

  Parameter names and shapes match the BiGS reference (``A_re``, ``A_im``:
  ``[N]``; ``C``: ``[N, 2]`` real/imaginary; ``D``, ``log_step``: ``[1]``).
  With ``shared=False`` every channel has its own system: a leading
  ``channels`` axis is added to each (``C``: ``[H, N, 2]``, ``D``/``log_step``: ``[H]``).

  Attributes:
    state_size: ``N``, complex states per system.
    a_init: One of ``A_INITS``.
    shared: One system for all channels (the reference) or one per channel.
    channel_axis: Logical axis name of the channel dimension (per-channel only).
  """

  state_size: int = 64
  a_init: str = "hippo"
  shared: bool = True
  channel_axis: Optional[str] = "mlp"

  def _param(self, name: str, init, shape: tuple[int, ...], axes: tuple) -> jax.Array:
    # Always float32: the kernel raises A to powers up to the sequence length.
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    channels, n = u.shape[-1], self.state_size
    lead, lead_axes = ((), ()) if self.shared else ((channels,), (self.channel_axis,))
    a_real0, a_imag0 = initial_a(self.a_init, n)
    tiled = lambda value: lambda key, shape, dtype: jnp.broadcast_to(jnp.asarray(value, dtype), shape)
    a_real = self._param("A_re", tiled(a_real0), lead + (n,), lead_axes + ("ssm_state",))
    a_imag = self._param("A_im", tiled(a_imag0), lead + (n,), lead_axes + ("ssm_state",))
    c_parts = self._param("C", nn.initializers.normal(stddev=0.5 ** 0.5), lead + (n, 2),
                          lead_axes + ("ssm_state", None))
    d = self._param("D", nn.initializers.ones, lead or (1,), lead_axes or (None,))
    low, high = np.log(LOG_STEP_RANGE[0]), np.log(LOG_STEP_RANGE[1])
    log_step = self._param(
        "log_step", lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, low, high),
        lead or (1,), lead_axes or (None,))
    c = c_parts[..., 0] + 1j * c_parts[..., 1]
    kernel = s4d_kernel(a_real, a_imag, c, log_step, u.shape[-2])
    y = causal_fft_conv(u, kernel) + d * jnp.asarray(u, jnp.float32)
    return y.astype(u.dtype)


SSM_PARAMETER_NAMES = ("A_re", "A_im", "log_step")
"""The S4D parameters the BiGS recipe trains with a smaller learning rate (and freezes in fine-tuning)."""
