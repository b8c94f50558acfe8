"""BiGS block: bidirectional gated state-space mixing, no attention (Flax Linen).

Wang et al., "Pretraining Without Attention" (2023). With ``n`` the layer
norm, ``g`` the tanh-approximated GELU (the reference's ``flax.linen.gelu``),
``flip`` a reversal along the sequence and ``W_*`` dense layers, one block
maps ``X [length, d_model]`` to::

  Xn = n(X)                                  (pre-norm; post-norm: n after the add)
  V  = g(W_value Xn)                         [length, d_ff]
  F  = g(W_forward_in Xn)                    [length, d_model]
  B  = g(W_backward_in flip(Xn))
  U  = W_forward_out S4D_fwd(F) * flip(W_backward_out S4D_bwd(B))
  X' = X + W_out(g(W_gate_in U) * V)

Module names (lmlab → reference ``modeling_flax_bigs.py``): ``norm`` →
``LayerNorm``, ``forward_ssm``/``backward_ssm`` → ``fs4``/``bs4``, ``value`` →
``dv``, ``forward_in``/``backward_in`` → ``du_forward``/``du_backward``,
``forward_out``/``backward_out`` → ``duc_forward``/``duc_backward``,
``gate_in`` → ``dol``, ``out`` → ``do``. ``lmlab.convert.bigs`` maps the
trees.

Padding. The reference runs every row at full length, so padding tokens flow
through both SSMs: right padding reaches no real token in the forward branch
but is the first thing the backward branch reads. With
``EncoderConfig.ssm_mask_padding`` the branch inputs ``F`` and ``B`` are
zeroed at padding (``segment_ids == 0``), so the backward branch effectively
starts at each row's last real token and a padded example gives the same
outputs as the unpadded one. Packed rows (several documents per row) are
mixed as one stream either way: the convolution does not stop at document
boundaries, as in RoBERTa's FULL-SENTENCES packing.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models import layers
from lmlab.models.config import EncoderConfig
from lmlab.models.ssm import S4D


class BiGSLayer(nn.Module):
  """One BiGS block; the call signature matches ``EncoderLayer`` so scan/remat lift it alike.

  Attributes:
    config: Encoder hyper-parameters with ``mixer='bigs'``.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, token_mask: jax.Array, bias: Optional[jax.Array],
               positions: jax.Array, deterministic: bool) -> jax.Array:
    """``x [batch, length, d_model]`` → same shape; ``token_mask [batch, length]`` is 1 on real tokens.

    ``bias`` and ``positions`` are unused (positions enter through the
    embeddings); they keep the signature shared with attention blocks.
    """
    del bias, positions, deterministic  # No dropout inside the block, as in the reference.
    cfg = self.config
    gelu = layers.activation_fn("gelu_tanh")
    factory = layers.dense_factory(cfg.dense_quantization, cfg.quantization_serving)
    dense = lambda features, axes, name: factory(
        features, axes, use_bias=cfg.use_bias, dtype=cfg.compute_dtype,
        param_dtype=cfg.parameter_dtype, init_stddev=cfg.initializer_range, name=name)
    ssm = lambda name: S4D(state_size=cfg.ssm_state_size, a_init=cfg.ssm_a_init,
                           shared=cfg.ssm_shared_kernel, name=name)
    norm = layers.make_norm(cfg.norm_type, eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                            param_dtype=cfg.parameter_dtype, use_bias=cfg.use_bias, name="norm")
    flip = lambda h: jnp.flip(h, axis=1)

    def mix(h: jax.Array) -> jax.Array:
      value = gelu(dense(cfg.d_ff, ("embed", "mlp"), "value")(h))
      forward = gelu(dense(cfg.d_model, ("embed", "mlp"), "forward_in")(h))
      backward = gelu(dense(cfg.d_model, ("embed", "mlp"), "backward_in")(h))
      if cfg.ssm_mask_padding:
        keep = token_mask[..., None].astype(forward.dtype)
        forward, backward = forward * keep, backward * keep
      forward = nn.with_logical_constraint(forward, ("batch", "length", "mlp"))
      backward = nn.with_logical_constraint(backward, ("batch", "length", "mlp"))
      forward = ssm("forward_ssm")(forward)
      backward = flip(ssm("backward_ssm")(flip(backward)))
      mixed = (dense(cfg.d_model, ("mlp", "embed"), "forward_out")(forward)
               * dense(cfg.d_model, ("mlp", "embed"), "backward_out")(backward))
      gated = gelu(dense(cfg.d_ff, ("embed", "mlp"), "gate_in")(mixed)) * value
      gated = nn.with_logical_constraint(gated, ("batch", "length", "mlp"))
      return dense(cfg.d_model, ("mlp", "embed"), "out")(gated)

    if cfg.norm_position == "pre":
      x = x + mix(norm(x))
    else:
      x = norm(x + mix(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
