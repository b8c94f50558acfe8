"""Decoding through the T5 wrapper: cache vs recompute, beam vs greedy, sampling, MrT5 hard deletion."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.models.config import T5Config

CONFIG = T5Config(vocab_size=64, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                  num_encoder_layers=2, num_decoder_layers=2)


@pytest.fixture(scope="module")
def trained_like():
  """A T5 with random weights scaled so its greedy outputs vary (not one repeated token)."""
  model = EncoderDecoderModel(CONFIG)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, 2))(jax.random.PRNGKey(0)))
  rng = np.random.RandomState(0)
  inputs = rng.randint(3, 64, (3, 12)).astype(np.int32)
  inputs[2, 6:] = 0
  return model, params, inputs


def test_cache_and_recompute_decode_the_same(trained_like):
  model, params, inputs = trained_like
  cached = model.predict(params, inputs, max_decode_length=10, use_cache=True)
  recomputed = model.predict(params, inputs, max_decode_length=10, use_cache=False)
  np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(recomputed.tokens))
  np.testing.assert_allclose(np.asarray(cached.scores), np.asarray(recomputed.scores), rtol=1e-5)
  assert len(set(np.asarray(cached.tokens).ravel().tolist())) > 2


def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_as_well(trained_like):
  model, params, inputs = trained_like
  greedy = model.predict(params, inputs, max_decode_length=8)
  beam1 = model.predict(params, inputs, max_decode_length=8, method="beam", beam_size=1,
                        length_penalty_alpha=0.0)
  np.testing.assert_array_equal(np.asarray(beam1.tokens[:, 0]), np.asarray(greedy.tokens))
  beam4 = model.predict(params, inputs, max_decode_length=8, method="beam", beam_size=4,
                        length_penalty_alpha=0.0)
  assert np.all(np.asarray(beam4.scores[:, 0]) >= np.asarray(beam1.scores[:, 0]) - 1e-5)


def test_sampling_is_reproducible(trained_like):
  model, params, inputs = trained_like
  draw = lambda seed: np.asarray(model.predict(params, inputs, max_decode_length=8, method="sample",
                                               rng=jax.random.PRNGKey(seed), top_k=20).tokens)
  np.testing.assert_array_equal(draw(0), draw(0))
  assert not np.array_equal(draw(0), draw(1))


def test_mrt5_decodes_with_hard_deletion_like_soft_deletion():
  mrt5 = dataclasses.replace(CONFIG, delete_gate_layer=1, delete_gate_bias_init=-0.5)
  model = EncoderDecoderModel(mrt5)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, 2))(jax.random.PRNGKey(1)))
  # A trained gate is nearly binary (0 = keep, k = delete); scaling its weights makes it so, and
  # only then is hard deletion (kept keys biased by 0, as in the reference) a faithful shortcut
  # of soft deletion: a kept token's gate must be ~0 (a logit above ~10), not merely above k/2.
  gate_params = params["encoder"]["delete_gate"]
  gate_params["proj"]["kernel"] = gate_params["proj"]["kernel"] * 1e4
  inputs = np.random.RandomState(1).randint(3, 64, (2, 32)).astype(np.int32)
  encoded, segment_ids, key_bias = model.encode(params, inputs, hard_delete=True)
  assert encoded.shape[1] < inputs.shape[1]  # some tokens were removed
  # After removal the kept keys are biased by exactly 0 (the reference), padding by k.
  real = np.asarray(segment_ids) > 0
  np.testing.assert_array_equal(np.asarray(key_bias)[real], 0.0)
  np.testing.assert_array_equal(np.asarray(key_bias)[~real], mrt5.delete_gate_scale)
  hard = model.predict(params, inputs, max_decode_length=6, hard_delete=True)
  soft = model.predict(params, inputs, max_decode_length=6, hard_delete=False)
  np.testing.assert_allclose(np.asarray(hard.scores), np.asarray(soft.scores), atol=1e-3)
  np.testing.assert_array_equal(np.asarray(hard.tokens), np.asarray(soft.tokens))
