"""The bf16 preset: float32 parameters, bfloat16 compute, a loss within tolerance of float32's."""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testlib import mlm_batch

from lmlab import main as cli
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel

ENCODER = EncoderConfig(vocab_size=512, d_model=64, num_layers=1, num_heads=2, d_ff=128,
                        max_positions=64, dropout_rate=0.0, attention_dropout_rate=0.0)
T5 = T5Config(vocab_size=512, d_model=64, num_heads=2, head_dim=32, d_ff=128,
              num_encoder_layers=1, num_decoder_layers=1)


def test_preset_binds_bfloat16_compute_and_float32_parameters():
  cli.parse_gin(["runs/quickstart.gin", "precision/bf16.gin"], [], [])
  for name in ("EncoderConfig", "T5Config"):
    assert gin.query_parameter(f"{name}.dtype") == "bfloat16"
    assert gin.query_parameter(f"{name}.param_dtype") == "float32"


def _t5_batch(rows=4, enc_len=32, dec_len=16):
  rng = np.random.RandomState(0)
  ids = lambda n: rng.randint(2, 512, (rows, n)).astype(np.int32)
  ones = lambda n: np.ones((rows, n), np.int32)
  positions = lambda n: np.tile(np.arange(n, dtype=np.int32), (rows, 1))
  return {"encoder_input_tokens": ids(enc_len), "encoder_segment_ids": ones(enc_len),
          "encoder_positions": positions(enc_len), "decoder_input_tokens": ids(dec_len),
          "decoder_target_tokens": ids(dec_len),
          "decoder_loss_weights": ones(dec_len).astype(np.float32),
          "decoder_segment_ids": ones(dec_len), "decoder_positions": positions(dec_len)}


@pytest.mark.parametrize("family", ["bert", "bigs", "t5"])
def test_bf16_loss_and_gradients_track_float32(family):
  if family == "t5":
    make = lambda dtype: EncoderDecoderModel(dataclasses.replace(T5, dtype=dtype))
    batch = _t5_batch()
  else:
    config = ENCODER if family == "bert" else dataclasses.replace(ENCODER, mixer="bigs")
    make = lambda dtype: MaskedLMModel(dataclasses.replace(config, dtype=dtype))
    batch = mlm_batch(0, rows=4, length=64, vocab=512)
  full, mixed = make("float32"), make("bfloat16")
  params = jax.jit(lambda rng: mixed.init(rng, 4, 64))(jax.random.PRNGKey(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

  def loss_and_grads(model):
    loss = lambda p: (lambda s: s["loss_sum"] / s["weight_sum"])(model.loss_sums(p, batch))
    return jax.jit(jax.value_and_grad(loss))(params)

  loss32, grads32 = loss_and_grads(full)
  loss16, grads16 = loss_and_grads(mixed)
  assert loss16.dtype == jnp.float32
  assert float(loss16) == pytest.approx(float(loss32), rel=1e-2)
  flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads32)])
  flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads16)])
  assert flat16.dtype == jnp.float32  # gradients arrive in the parameters' dtype
  cosine = jnp.dot(flat16, flat32) / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32))
  assert float(cosine) > 0.99
