"""Every model family gives the same loss and gradients with each attention backend.

The ``xla`` backend is the reference; ``pallas`` (flash attention, interpret
mode on CPU) and ``cudnn`` (its documented XLA fallback on CPU) must match it
on the real training losses: BERT-style MLM with packed documents and ALiBi
or RoPE, T5 with its relative bias and packed rows, and MrT5 whose delete
gate enters attention as a per-key bias. BiGS has no attention, so the
backend must not change it at all. Dropout is off: the flash kernel has no
probability dropout (the backend refuses it, tested below).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import attention
from lmlab.models.config import EncoderConfig, T5Config

ENCODER = EncoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                        max_positions=48, dropout_rate=0.0, attention_dropout_rate=0.0)
ENCODER_VARIANTS = {
    "alibi_glu": dict(position_scheme="alibi", mlp_activation="gated_gelu"),
    "rope_pre_ln": dict(position_scheme="rope", norm_position="pre", norm_type="rmsnorm"),
}
T5 = T5Config(vocab_size=64, d_model=32, num_heads=2, head_dim=16, d_ff=64,
              num_encoder_layers=2, num_decoder_layers=2)
MRT5 = dataclasses.replace(T5, delete_gate_layer=1, delete_gate_bias_init=-0.5, num_decoder_layers=1)


def _loss_and_grads(wrapper, params, batch):
  def loss(params):
    sums = wrapper.loss_sums(params, batch)
    return (sums["loss_sum"] + sums.get("aux_loss_sum", 0.0)) / sums["weight_sum"]
  return jax.jit(jax.value_and_grad(loss))(params)  # jitted: interpret mode op by op is slow


def _assert_backends_agree(make_wrapper, init_wrapper_args, batch, backends=("pallas", "cudnn")):
  reference = make_wrapper("xla")
  params = nn.meta.unbox(jax.jit(lambda r: reference.init(r, *init_wrapper_args))(
      jax.random.PRNGKey(0)))
  want_loss, want_grads = _loss_and_grads(reference, params, batch)
  for backend in backends:
    loss, grads = _loss_and_grads(make_wrapper(backend), params, batch)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5, err_msg=backend)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    want = dict(jax.tree_util.tree_leaves_with_path(want_grads))
    for path, g in flat:
      w = np.asarray(want[path])
      scale = max(1e-3, float(np.max(np.abs(w))))
      err = float(np.max(np.abs(np.asarray(g) - w))) / scale
      assert err < 1e-4, f"{backend}: gradient {jax.tree_util.keystr(path)} off by {err:.2g}"
  return float(want_loss)


def _mlm_batch(rng, rows=2, length=40):
  """Packed rows: two documents then padding, positions restarting per document."""
  seg = np.zeros((rows, length), np.int32)
  pos = np.zeros((rows, length), np.int32)
  for r, (a, b) in enumerate([(15, 33), (22, 40)]):
    seg[r, :a], seg[r, a:b] = 1, 2
    pos[r, :a], pos[r, a:b] = np.arange(a), np.arange(b - a)
  ids = np.where(seg > 0, rng.randint(5, 64, (rows, length)), 0).astype(np.int32)
  weights = ((rng.rand(rows, length) < 0.3) & (seg > 0)).astype(np.float32)
  return {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg),
          "positions": jnp.asarray(pos), "targets": jnp.asarray(ids),
          "loss_weights": jnp.asarray(weights)}


# ALiBi (in-kernel bias) runs by default; RoPE changes only q/k before the kernel: slow.
@pytest.mark.parametrize("variant", ["alibi_glu", pytest.param("rope_pre_ln", marks=pytest.mark.slow)])
def test_masked_lm_loss_and_gradients_agree_across_backends(variant):
  cfg = dataclasses.replace(ENCODER, **ENCODER_VARIANTS[variant])
  make = lambda backend: MaskedLMModel(dataclasses.replace(cfg, attention_backend=backend))
  loss = _assert_backends_agree(make, (2, 40), _mlm_batch(np.random.RandomState(0)))
  assert np.isfinite(loss) and loss > 0


def test_bigs_ignores_the_attention_backend():
  cfg = dataclasses.replace(ENCODER, mixer="bigs", norm_position="post", ssm_state_size=8)
  make = lambda backend: MaskedLMModel(dataclasses.replace(cfg, attention_backend=backend))
  batch = _mlm_batch(np.random.RandomState(1))
  params = nn.meta.unbox(jax.jit(lambda r: make("xla").init(r, 2, 40))(jax.random.PRNGKey(0)))
  want = np.asarray(make("xla").apply(params, batch))
  np.testing.assert_array_equal(np.asarray(make("pallas").apply(params, batch)), want)


def _seq2seq_batch(rng, rows=2, enc_len=36, dec_len=20):
  """Two packed examples in row 0, one padded example in row 1, on both sides."""
  def side(length, cut, end):
    seg = np.zeros((rows, length), np.int32)
    seg[0, :cut], seg[0, cut:], seg[1, :end] = 1, 2, 1
    pos = np.zeros((rows, length), np.int32)
    pos[0, :cut], pos[0, cut:], pos[1, :end] = np.arange(cut), np.arange(length - cut), np.arange(end)
    return seg, pos
  enc_seg, enc_pos = side(enc_len, 20, 25)
  dec_seg, dec_pos = side(dec_len, 9, 14)
  enc = np.where(enc_seg > 0, rng.randint(3, 64, (rows, enc_len)), 0).astype(np.int32)
  targets = np.where(dec_seg > 0, rng.randint(3, 64, (rows, dec_len)), 0).astype(np.int32)
  dec_in = np.where(dec_pos > 0, np.roll(targets, 1, axis=1), 0).astype(np.int32)
  return {k: jnp.asarray(v) for k, v in dict(
      encoder_input_tokens=enc, encoder_segment_ids=enc_seg, encoder_positions=enc_pos,
      decoder_input_tokens=dec_in, decoder_target_tokens=targets, decoder_segment_ids=dec_seg,
      decoder_positions=dec_pos, decoder_loss_weights=(dec_seg > 0).astype(np.float32)).items()}


# MrT5 is T5 plus the gate, so it covers T5's paths; plain T5 runs with -m slow.
@pytest.mark.parametrize("cfg", [pytest.param(T5, marks=pytest.mark.slow), MRT5],
                         ids=["t5", "mrt5"])
def test_encoder_decoder_loss_and_gradients_agree_across_backends(cfg):
  make = lambda backend: EncoderDecoderModel(dataclasses.replace(cfg, attention_backend=backend))
  loss = _assert_backends_agree(make, (2,), _seq2seq_batch(np.random.RandomState(2)))
  assert np.isfinite(loss) and loss > 0


def test_cached_decoding_with_flash_attention_matches_xla():
  xla = EncoderDecoderModel(T5)
  flash = EncoderDecoderModel(dataclasses.replace(T5, attention_backend="pallas"))
  params = nn.meta.unbox(jax.jit(lambda r: xla.init(r, 2))(jax.random.PRNGKey(3)))
  # Larger weights so greedy outputs vary from step to step.
  params = jax.tree_util.tree_map(lambda p: p * 4.0, params)
  inputs = np.random.RandomState(3).randint(3, 64, (2, 12)).astype(np.int32)
  inputs[1, 7:] = 0
  want = xla.predict(params, inputs, max_decode_length=6)
  got = flash.predict(params, inputs, max_decode_length=6)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_allclose(np.asarray(got.scores), np.asarray(want.scores), rtol=1e-4)


def test_flash_backend_refuses_dropout_and_dense_masks():
  q = jnp.ones((1, 8, 2, 16))
  with pytest.raises(ValueError, match="dropout"):
    attention.dot_product_attention(q, q, q, backend="pallas", dropout_rate=0.1,
                                    deterministic=False, dropout_rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="dense mask"):
    attention.dot_product_attention(q, q, q, backend="pallas", mask=jnp.ones((1, 1, 8, 8), bool))
  with pytest.raises(ValueError, match="Unknown attention backend"):
    attention.dot_product_attention(q, q, q, backend="flash")
