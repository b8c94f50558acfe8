"""EncT5: a T5 encoder–decoder used as a classifier (one decoder step and a linear head).

Kept beside ``encoder_decoder`` (whose ``Encoder``/``Decoder`` it reuses under
the same parameter names) so a pretrained T5, ByT5 or MrT5 checkpoint loads
into it unchanged.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmlab.models import layers
from lmlab.models.config import T5Config
from lmlab.models.encoder_decoder import Decoder, Encoder


class EncT5Classifier(nn.Module):
  """T5 as a non-autoregressive classifier (EncT5): encoder, one decoder step, linear head.

  The decoder reads a single start token (the pad id, as in generation) and
  attends over the whole encoder output, so its one output vector is a
  learned attention pooling of the input; a dense layer maps it to
  ``num_classes`` logits. No tokens are generated. Parameter names match
  ``EncoderDecoder`` (``token_embedder``, ``encoder``, ``decoder``) so a
  pretrained T5/ByT5/MrT5 checkpoint loads into it; the vocabulary projection
  is never built, and ``T5Config.num_decoder_layers`` may be lowered (EncT5
  keeps one decoder layer) to drop the upper pretrained decoder layers.

  Attributes:
    config: The pretrained model's hyper-parameters.
    num_classes: Output width (1 for regression and candidate scoring).
  """

  config: T5Config
  num_classes: int

  def setup(self):
    cfg = self.config
    if cfg.vocab_size is None:
      raise ValueError("T5Config.vocab_size is None: set it from the task's vocabulary.")
    self.token_embedder = layers.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.d_model, axes=("vocab", "embed"),
        dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, init_stddev=1.0)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)
    # The head stays float whatever ``dense_quantization`` says (as the MLM heads do).
    self.classifier = layers.DenseGeneral(
        features=self.num_classes, kernel_axes=("embed", None), use_bias=True,
        dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype, init_stddev=cfg.d_model**-0.5)

  def __call__(self, input_ids: jax.Array, *, segment_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, Optional[jax.Array]]:
    """Float32 logits ``[batch, num_classes]`` and the MrT5 gate (None without one)."""
    if segment_ids is None:
      segment_ids = (input_ids != self.config.pad_id).astype(jnp.int32)
    positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None]
    encoded, gate = self.encoder(input_ids, segment_ids, positions, deterministic, None)
    rows = input_ids.shape[0]
    start = jnp.full((rows, 1), self.config.pad_id, jnp.int32)
    # One example per row (not packed): the start token sees every real input token.
    real = (segment_ids > 0).astype(jnp.int32)
    hidden = self.decoder(start, jnp.ones((rows, 1), jnp.int32), encoded, real, gate,
                          deterministic, return_hidden=True)
    return jnp.asarray(self.classifier(hidden[:, 0]), jnp.float32), gate
