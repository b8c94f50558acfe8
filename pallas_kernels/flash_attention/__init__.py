"""Flash attention in Pallas: tiled online-softmax forward and backward kernels.

:func:`flash_attention` computes ``softmax(scale * q k^T + bias) v`` per head
without materialising the ``[q_len, kv_len]`` probabilities: each program
owns a block of queries, walks the keys block by block keeping a running
maximum ``m``, normaliser ``l`` and float32 output accumulator, and writes the
output plus the per-row log-sum-exp ``lse = m + log l``. The backward pass
(under ``jax.custom_vjp``) recomputes the probabilities from ``lse`` in two
kernels, one owning query blocks (dq) and one owning key blocks (dk, dv and
the gradients of the bias inputs), so no kernel needs atomics.

What can shape the logits (all optional, all combinable):

* ``causal``: query ``i`` sees keys ``j <= i`` (indices, top-left aligned).
* ``q_segment_ids`` / ``kv_segment_ids`` (int ``[batch, len]``): attention
  stays inside equal non-zero ids; id 0 is padding, which sees nothing and is
  seen by nothing. This covers packed rows and key padding.
* ``alibi_slopes`` (``[heads]``) with ``q_positions`` / ``kv_positions``:
  ``-slope_h * |pos_i - pos_j|`` computed in the kernel from the slopes, so
  no ``L x L`` tensor exists. Positions default to ``arange``.
* ``bias`` (``[1 or batch, 1 or heads, q_len, kv_len]``): a dense additive
  bias such as T5's bucketed relative position bias, read block by block;
  its gradient is returned (summed over broadcast axes).
* ``key_bias`` (``[batch, kv_len]``): one additive value per key, shared by
  all heads and queries, as MrT5's soft-deletion gate; its gradient is
  accumulated in the dk/dv kernel.

A query row with no visible key produces zeros (not NaN, not an average over
padding), in the output and in every gradient.

Shapes and dtypes: ``q [batch, q_len, heads, head_dim]``, ``k, v [batch,
kv_len, heads, head_dim]``; float32 or bfloat16 (float16 works too). Logits,
softmax statistics and all accumulators are float32; the probabilities are
cast to the input dtype for the ``p @ v`` product, as in FlashAttention-2.
Lengths need not be multiples of the blocks: inputs are padded to whole
blocks and padded keys are masked by index. Head dims up to 256 are
accepted; ones a backend cannot tile directly are zero-padded (see
Platforms), which leaves the logits and the kept output columns unchanged.

Platforms: each kernel is built once per Pallas backend and
``jax.lax.platform_dependent`` picks one when the computation is lowered
(``pallas_kernels._tiling.dispatch``), so one jitted function runs, and can
be cross-lowered from a CPU host, everywhere:

* NVIDIA/AMD GPU (``cuda``, ``rocm``): Triton, with ``num_warps`` and
  ``num_stages`` set per head dim and block size (this also keeps JAX from
  choosing Mosaic GPU). q/k/v keep the caller's ``[batch, len, heads,
  head_dim]`` layout (a ``None`` heads block axis, no transposes); segment
  ids, positions and ``lse`` are one-lane columns ``[.., len, 1]``, per-key
  values one-row ``[batch, 1, len]``. Blocks are powers of two >= 16; head
  dims other than 64 and 128 are padded to the next power of two; default
  ``DEFAULT_BLOCKS["gpu"]``.
* TPU: Mosaic. q/k/v are transposed to heads-major ``[batch, heads, len,
  head_dim]`` so every block's last two dims are (sublane, lane) legal;
  per-query values (segment ids, ALiBi positions, ``lse``, ``delta``) are
  replicated along the 128 lanes, ``[.., len, 128]``, per-key values (segment
  ids, positions, key bias and its gradient) along 8 sublanes, ``[.., 8,
  len]``; ALiBi slopes sit in SMEM; softmax statistics are ``[block_q, 128]``
  lane-replicated. Blocks are at least 128 (powers of two, so multiples of
  128); head dims other than 64 are zero-padded to a multiple of 128;
  default ``DEFAULT_BLOCKS["tpu"]``. As on GPU, a program holds its head's
  whole key/value (dk/dv: query) sequence in VMEM and loops over it, so very
  long sequences (or a dense bias, whose dk/dv block is ``[q_len,
  block_k]``) may need a raised ``vmem_limit_bytes``.
* CPU: no Pallas compiler; the GPU layout runs in interpret mode (also
  chosen everywhere by ``interpret=True``), which is how the tests check the
  kernels against :func:`attention_reference`. Default ``DEFAULT_BLOCKS["cpu"]``.

Blocks are chosen by the variant's backend, not by ``jax.default_backend()``.
:func:`unsupported_options` lists option combinations a platform cannot run
(currently none).

Modules: ``reference`` (the ``jnp`` definition and input checks),
``_kernels`` (the shared kernel bodies and per-backend layouts), ``_calls``
(blocks, specs, ``pallas_call`` s and the ``custom_vjp``).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels import _tiling
from pallas_kernels.flash_attention import _calls
from pallas_kernels.flash_attention._calls import DEFAULT_BLOCKS, MAX_HEAD_DIM
from pallas_kernels.flash_attention.reference import (
    attention_logits_and_mask, attention_reference, check_inputs)

__all__ = ["flash_attention", "attention_reference", "attention_logits_and_mask",
           "check_inputs", "unsupported_options", "DEFAULT_BLOCKS"]

# Platform names as jax.default_backend() / lowering_platforms spell them.
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "gpu", "tpu")


def unsupported_options(platform: str, **options) -> list[str]:
  """Reasons the kernels cannot run ``options`` on ``platform`` (empty: all fine).

  ``options`` are :func:`flash_attention`'s keyword arguments plus ``dtype``
  and ``head_dim``. Every option and combination lowers for Triton (cuda,
  rocm) and Mosaic (tpu) and runs in interpret mode on CPU, so today only an
  unknown platform name is reported; :func:`flash_attention` raises
  ``ValueError`` with these reasons before building a kernel it knows cannot
  lower. Kept as the one place such limits would be recorded.
  """
  del options  # No option is platform-limited at present.
  if platform not in KNOWN_PLATFORMS:
    return [f"unknown platform {platform!r}; expected one of {KNOWN_PLATFORMS}"]
  return []


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                    q_segment_ids: Optional[jax.Array] = None,
                    kv_segment_ids: Optional[jax.Array] = None,
                    causal: bool = False,
                    q_positions: Optional[jax.Array] = None,
                    kv_positions: Optional[jax.Array] = None,
                    alibi_slopes: Optional[jax.Array] = None,
                    bias: Optional[jax.Array] = None,
                    key_bias: Optional[jax.Array] = None,
                    scale: Optional[float] = None,
                    block_q: Optional[int] = None,
                    block_k: Optional[int] = None,
                    interpret: Optional[bool] = None) -> jax.Array:
  """Memory-efficient attention; same result as :func:`attention_reference`.

  Args:
    q: ``[batch, q_len, heads, head_dim]``.
    k, v: ``[batch, kv_len, heads, head_dim]``, same dtype as ``q``.
    q_segment_ids, kv_segment_ids: int ``[batch, len]``; equal non-zero ids
      attend to each other, 0 is padding.
    causal: Query ``i`` sees keys ``j <= i``.
    q_positions, kv_positions: int ``[batch, len]`` positions for ALiBi
      distances (default ``arange``; packed rows restart per document).
    alibi_slopes: ``[heads]`` ALiBi slopes; bias ``-slope * |pos_q - pos_k|``.
    bias: Dense additive logits ``[1 or batch, 1 or heads, q_len, kv_len]``
      (differentiable).
    key_bias: ``[batch, kv_len]`` additive per-key logits (differentiable).
    scale: Logit scale; ``None`` means ``1/sqrt(head_dim)``.
    block_q, block_k: Tile sizes (powers of two >= 16); defaults per
      backend from ``DEFAULT_BLOCKS``, shrunk for short sequences (and raised
      to 128 on TPU).
    interpret: ``True`` runs the kernels in Pallas interpret mode on every
      platform; ``None``/``False`` compile them with Triton on GPUs and
      Mosaic on TPUs (CPU always interprets).

  Returns:
    ``[batch, q_len, heads, head_dim]`` in ``q.dtype``.

  Raises:
    ValueError: For inconsistent shapes, a head dim above 256, block sizes
      that are not powers of two, or options :func:`unsupported_options`
      refuses on the default backend.
  """
  opts, args = _prepare(q, k, v, q_segment_ids, kv_segment_ids, causal, q_positions,
                        kv_positions, alibi_slopes, bias, key_bias, scale, block_q, block_k)
  platform = jax.default_backend()
  reasons = unsupported_options(
      platform, dtype=q.dtype, head_dim=q.shape[-1], causal=causal,
      q_segment_ids=q_segment_ids, alibi_slopes=alibi_slopes, bias=bias, key_bias=key_bias)
  if reasons and not interpret:
    raise ValueError(f"flash_attention cannot run these options on {platform}: "
                     + "; ".join(reasons))

  def build(backend):
    return functools.partial(_calls.attend, backend, False, opts)

  return _tiling.dispatch(build, *args, interpret=interpret)


def interpret_variant(backend: str, q, k, v, **kwargs) -> jax.Array:
  """:func:`flash_attention` with ``backend``'s layout and blocks, in interpret mode.

  For tests and debugging: runs e.g. the Mosaic TPU variant's indexing
  (heads-major q/k/v, 128-lane columns, 8-sublane rows, SMEM slopes) on CPU,
  so its layout is checked numerically and not only lowered.
  """
  opts, args = _prepare(q, k, v, kwargs.pop("q_segment_ids", None),
                        kwargs.pop("kv_segment_ids", None), kwargs.pop("causal", False),
                        kwargs.pop("q_positions", None), kwargs.pop("kv_positions", None),
                        kwargs.pop("alibi_slopes", None), kwargs.pop("bias", None),
                        kwargs.pop("key_bias", None), kwargs.pop("scale", None),
                        kwargs.pop("block_q", None), kwargs.pop("block_k", None))
  if kwargs:
    raise TypeError(f"Unexpected arguments {sorted(kwargs)}.")
  return _calls.attend(backend, True, opts, *args)


def _prepare(q, k, v, q_segment_ids, kv_segment_ids, causal, q_positions, kv_positions,
             alibi_slopes, bias, key_bias, scale, block_q, block_k):
  """Validates the public arguments; returns the static options and the variant's arrays."""
  check_inputs(q, k, v, q_segment_ids, kv_segment_ids, alibi_slopes, bias, key_bias)
  if q.dtype != k.dtype or k.dtype != v.dtype:
    raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
  b, lq, _, d = q.shape
  lk = k.shape[1]
  if d > MAX_HEAD_DIM:
    raise ValueError(f"head_dim {d} is larger than the supported maximum {MAX_HEAD_DIM}; "
                     "split heads or use the 'xla' backend.")
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk is not None and (blk < _tiling.MIN_BLOCK or blk & (blk - 1)):
      raise ValueError(f"{name}={blk} must be a power of two >= {_tiling.MIN_BLOCK}.")
  if alibi_slopes is not None:
    alibi_slopes = jnp.asarray(alibi_slopes, jnp.float32)
    if q_positions is None:
      q_positions = jnp.broadcast_to(jnp.arange(lq, dtype=jnp.int32), (b, lq))
    if kv_positions is None:
      kv_positions = jnp.broadcast_to(jnp.arange(lk, dtype=jnp.int32), (b, lk))
  opts = _calls.Options(scale=d ** -0.5 if scale is None else float(scale),
                        causal=bool(causal), block_q=block_q, block_k=block_k)
  return opts, (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                alibi_slopes, bias, key_bias)
