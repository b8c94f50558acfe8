"""Analytic model FLOPs of the networks, for throughput and MFU reporting.

Conventions (those of the PaLM paper's MFU and of MaxText/T5X reports):

* Only matrix multiplications count: a ``[m, k] x [k, n]`` product is
  ``2 m k n`` FLOPs. Norms, activations, softmax, biases, embedding lookups
  and the optimizer are left out (they are a few percent at real widths).
* Attention counts its two length-by-length products in full,
  ``2 * 2 * q_len * kv_len * heads * head_dim`` per layer, also when causal
  masking makes half of them wasted: the kernels compute the full tiles.
* Everything is per *example* at the padded shapes the step computes (a
  batch's FLOPs are the same whatever its padding), forward only;
  :data:`TRAINING_FLOPS_PER_FORWARD` (3: forward, and a backward pass of
  twice the forward's matmuls) turns it into training FLOPs. Recomputation
  under ``remat_policy`` is not counted: MFU measures useful model work.
* BiGS's FFT convolutions are counted as ``5 N log2 N`` real FLOPs per FFT
  of length ``N`` and channel (the textbook radix-2 count halved for real
  input), since they replace attention's quadratic products.

Every figure is checked against XLA's own count (``cost_analysis``) of the
compiled forward pass in ``tests/models/test_flops.py``.
"""

from __future__ import annotations

import math
from typing import Optional

from lmlab.models.config import EncoderConfig, T5Config

TRAINING_FLOPS_PER_FORWARD = 3


def _matmul(m: float, k: float, n: float) -> float:
  return 2.0 * m * k * n


def _gated(activation: str) -> bool:
  return activation.startswith("gated_")


def mlp_flops(length: int, d_model: int, d_ff: int, activation: str) -> float:
  """An MLP block over ``length`` tokens: one (or, gated, two) input projections and the output."""
  inputs = 2 if _gated(activation) else 1
  return inputs * _matmul(length, d_model, d_ff) + _matmul(length, d_ff, d_model)


def attention_flops(q_len: int, kv_len: int, d_model: int, heads: int, head_dim: int, *,
                    kv_projections: bool = True) -> float:
  """Multi-head attention: q/k/v/out projections and the two length-by-length products.

  ``kv_projections=False`` leaves out the key/value projections (counted
  separately when the keys come from another sequence, as in cross-attention).
  """
  inner = heads * head_dim
  projections = 2 * _matmul(q_len, d_model, inner)  # query and output
  if kv_projections:
    projections += 2 * _matmul(kv_len, d_model, inner)
  return projections + 2 * _matmul(q_len, kv_len, inner)


def _fft_flops(size: int) -> float:
  return 5.0 * size * math.log2(size)


def bigs_layer_flops(cfg: EncoderConfig, length: int) -> float:
  """One BiGS block: seven dense layers and two bidirectional SSM convolutions."""
  d, f = cfg.d_model, cfg.d_ff
  dense = (2 * _matmul(length, d, f)       # value, gate_in
           + _matmul(length, f, d)         # out
           + 4 * _matmul(length, d, d))    # forward/backward in and out
  # Per direction: FFT of the input and inverse FFT of the product over 2L
  # points for each of d channels (the kernel's FFT does not depend on the batch).
  fft_size = 2 * length
  ssm = 2 * 2 * d * _fft_flops(fft_size)
  return dense + ssm


def encoder_flops(cfg: EncoderConfig, length: int) -> float:
  """The encoder stack (no head) over one row of ``length`` tokens."""
  if cfg.mixer == "bigs":
    per_layer = bigs_layer_flops(cfg, length)
  else:
    per_layer = (attention_flops(length, length, cfg.d_model, cfg.num_heads, cfg.resolved_head_dim)
                 + mlp_flops(length, cfg.d_model, cfg.d_ff, cfg.mlp_activation))
  return cfg.num_layers * per_layer


def masked_lm_flops(cfg: EncoderConfig, length: int,
                    head_positions: Optional[int] = None) -> float:
  """Encoder plus the MLM head (transform and vocabulary projection) on ``head_positions`` rows.

  ``head_positions``: positions per row the head runs on (``None``: all).
  """
  positions = length if head_positions is None else head_positions
  head = _matmul(positions, cfg.d_model, cfg.d_model) + _matmul(positions, cfg.d_model,
                                                                 cfg.vocab_size)
  return encoder_flops(cfg, length) + head


def classifier_flops(cfg: EncoderConfig, length: int, num_classes: int) -> float:
  """Encoder plus pooler and classifier on one pooled vector per row."""
  return (encoder_flops(cfg, length) + _matmul(1, cfg.d_model, cfg.d_model)
          + _matmul(1, cfg.d_model, num_classes))


def encoder_decoder_flops(cfg: T5Config, input_length: int, target_length: int, *,
                          logits: bool = True) -> float:
  """T5: encoder over the inputs, decoder (self- and cross-attention) over the targets, logits.

  ``logits=False`` leaves out the vocabulary projection (EncT5 classifies
  from the decoder's hidden state instead).

  MrT5's delete gate (one ``d_model -> 1`` projection) is left out; soft
  deletion during training computes every position.
  """
  d, h, hd = cfg.d_model, cfg.num_heads, cfg.head_dim
  mlp = lambda length: mlp_flops(length, d, cfg.d_ff, cfg.mlp_activation)
  encoder = cfg.num_encoder_layers * (attention_flops(input_length, input_length, d, h, hd)
                                      + mlp(input_length))
  cross = (attention_flops(target_length, input_length, d, h, hd, kv_projections=False)
           + 2 * _matmul(input_length, d, h * hd))
  decoder = cfg.num_decoder_layers * (attention_flops(target_length, target_length, d, h, hd)
                                      + cross + mlp(target_length))
  output = _matmul(target_length, d, cfg.vocab_size) if logits else 0.0
  return encoder + decoder + output
