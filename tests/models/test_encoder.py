"""Behaviour of the encoder: packing, positions, length limits, dtypes, dropout, heads."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification

TINY = EncoderConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                     max_positions=16, dropout_rate=0.0, attention_dropout_rate=0.0)
SCHEMES = {
    "learned": {},
    "rope": dict(position_scheme="rope", norm_position="pre", norm_type="rmsnorm"),
    "alibi": dict(position_scheme="alibi", mlp_activation="gated_gelu"),
}


def _init(module: nn.Module, ids: np.ndarray, seed: int = 0, **kwargs):
  """Variables of ``module`` filled from numpy instead of running its initializers.

  Compiling the random initializers costs seconds per parameter shape on a
  small CPU, which these behavioural tests do not need (initializers are
  covered in ``test_model_layers.py``). Kernels get a large stddev so that
  attention is sharp and position or packing mistakes show clearly.
  """
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape, name = leaf.shape, path[-1].key
    if name == "scale":
      return np.ones(shape, np.float32) + 0.1 * rng.normal(size=shape).astype(np.float32)
    std = 0.1 if name == "bias" else 0.3
    return (std * rng.normal(size=shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract))


# Row 0 packs doc 1 (5 tokens) and doc 2 (4 tokens) followed by 3 pads.
PACKED_IDS = np.array([[5, 6, 7, 8, 9, 20, 21, 22, 23, 0, 0, 0]], np.int32)
PACKED_SEGMENTS = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]], np.int32)
PACKED_POSITIONS = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]], np.int32)
# One unpadded document; every test uses shape [1, 12] so compiled ops are reused.
IDS = np.arange(3, 15, dtype=np.int32)[None]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_packed_documents_do_not_interact(scheme):
  model = Encoder(dataclasses.replace(TINY, **SCHEMES[scheme]))
  variables = _init(model, PACKED_IDS)
  run = lambda ids: np.asarray(model.apply(variables, ids, segment_ids=PACKED_SEGMENTS,
                                           positions=PACKED_POSITIONS))
  base = run(PACKED_IDS)
  changed_doc2 = PACKED_IDS.copy()
  changed_doc2[0, 5:9] = [40, 41, 42, 43]
  changed_doc1 = PACKED_IDS.copy()
  changed_doc1[0, 0:5] = [50, 51, 52, 53, 54]
  np.testing.assert_allclose(run(changed_doc2)[0, :5], base[0, :5], atol=1e-6, rtol=0)
  assert not np.allclose(run(changed_doc2)[0, 5:9], base[0, 5:9])
  np.testing.assert_allclose(run(changed_doc1)[0, 5:9], base[0, 5:9], atol=1e-6, rtol=0)
  assert np.all(np.isfinite(base))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_positions_restart_per_segment(scheme):
  # Doc 2 inside a packed row must encode exactly as doc 2 alone in its own row.
  model = Encoder(dataclasses.replace(TINY, **SCHEMES[scheme]))
  variables = _init(model, PACKED_IDS)
  packed = model.apply(variables, PACKED_IDS, segment_ids=PACKED_SEGMENTS,
                       positions=PACKED_POSITIONS)
  alone_ids = np.zeros_like(PACKED_IDS)
  alone_ids[0, :4] = PACKED_IDS[0, 5:9]
  alone = model.apply(variables, alone_ids)
  np.testing.assert_allclose(np.asarray(packed)[0, 5:9], np.asarray(alone)[0, :4], atol=1e-5)


@pytest.mark.parametrize("scheme", ["rope", "alibi"])
def test_relative_schemes_ignore_a_constant_position_shift(scheme):
  model = Encoder(dataclasses.replace(TINY, max_positions=64, **SCHEMES[scheme]))
  variables = _init(model, IDS)
  positions = np.arange(12)[None]
  base = np.asarray(model.apply(variables, IDS, positions=positions))
  shifted = np.asarray(model.apply(variables, IDS, positions=positions + 40))
  np.testing.assert_allclose(shifted, base, atol=1e-4)
  stretched = np.asarray(model.apply(variables, IDS, positions=positions * 3))
  assert not np.allclose(stretched, base, atol=1e-3)


def test_default_segments_and_positions_follow_pad_id():
  model = Encoder(TINY)
  ids = PACKED_IDS
  variables = _init(model, ids)
  implicit = model.apply(variables, ids)
  explicit = model.apply(variables, ids, segment_ids=(ids != 0).astype(np.int32),
                         positions=np.arange(12)[None])
  np.testing.assert_array_equal(np.asarray(implicit), np.asarray(explicit))


def test_longer_than_max_positions_raises():
  model = EncoderForMaskedLM(TINY)
  variables = _init(model, np.ones((1, 16), np.int32))
  with pytest.raises(ValueError, match="max_positions") as info:
    model.apply(variables, np.ones((1, 17), np.int32))
  assert "17" in str(info.value) and "16" in str(info.value)


def test_bfloat16_runs_and_returns_float32_logits():
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  model = EncoderForMaskedLM(cfg)
  variables = _init(model, PACKED_IDS)
  logits = model.apply(variables, PACKED_IDS)
  assert logits.dtype == jnp.float32 and logits.shape == (1, 12, 128)
  assert bool(jnp.all(jnp.isfinite(logits)))
  hidden = Encoder(cfg).apply({"params": variables["params"]["encoder"]}, PACKED_IDS)
  assert hidden.dtype == jnp.bfloat16


def test_dropout_active_only_when_not_deterministic():
  cfg = dataclasses.replace(TINY, dropout_rate=0.1, attention_dropout_rate=0.1)
  model = EncoderForMaskedLM(cfg)
  variables = _init(model, IDS)
  run = lambda key, deterministic: np.asarray(model.apply(
      variables, IDS, deterministic=deterministic, rngs={"dropout": jax.random.key(key)}))
  base = np.asarray(model.apply(variables, IDS))
  np.testing.assert_array_equal(run(1, True), base)
  one = run(1, False)
  assert not np.allclose(one, base)
  assert not np.allclose(one, run(2, False))
  np.testing.assert_array_equal(one, run(1, False))


def test_tied_decoder_uses_input_embedding():
  model = EncoderForMaskedLM(TINY)
  variables = _init(model, IDS)
  params = variables["params"]
  changed = jax.tree_util.tree_map(np.copy, params)
  changed["encoder"]["embeddings"]["token_embedder"]["embedding"][100] *= -1.0
  before = np.asarray(model.apply({"params": params}, IDS))
  after = np.asarray(model.apply({"params": changed}, IDS))
  # Row 100 is not an input token, so only the logit column 100 can change.
  diff = np.abs(after - before).max(axis=(0, 1))
  assert diff[100] > 1e-3 and np.delete(diff, 100).max() == 0.0


def test_token_type_ids_change_output():
  model = Encoder(TINY)
  variables = _init(model, IDS)
  types = np.zeros_like(IDS)
  a = model.apply(variables, IDS, token_type_ids=types)
  types[0, 6:] = 1
  b = model.apply(variables, IDS, token_type_ids=types)
  assert not np.allclose(np.asarray(a), np.asarray(b))
  no_types = Encoder(dataclasses.replace(TINY, num_token_types=0))
  with pytest.raises(ValueError, match="num_token_types"):
    jax.eval_shape(lambda: no_types.init(jax.random.key(0), IDS, token_type_ids=types))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classification_ignores_padding(pooling):
  model = EncoderForSequenceClassification(TINY, num_classes=3, pooling=pooling)
  variables = _init(model, IDS)
  segments = np.array([[1] * 8 + [0] * 4], np.int32)
  logits = np.asarray(model.apply(variables, IDS, segment_ids=segments))
  assert logits.shape == (1, 3) and logits.dtype == np.float32
  other_padding = IDS.copy()
  other_padding[0, 8:] = [60, 61, 62, 63]
  np.testing.assert_allclose(
      np.asarray(model.apply(variables, other_padding, segment_ids=segments)), logits, atol=1e-6)
  assert not np.allclose(np.asarray(model.apply(variables, other_padding)), logits)


def test_unknown_pooling_raises():
  model = EncoderForSequenceClassification(TINY, num_classes=2, pooling="max")
  with pytest.raises(ValueError, match="pooling"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), IDS))


def test_gradients_are_finite_with_padding():
  # One layer under jit: compiling the backward pass is the slow part on CPU.
  model = EncoderForMaskedLM(dataclasses.replace(TINY, num_layers=1, **SCHEMES["alibi"]))
  variables = _init(model, PACKED_IDS)
  loss = lambda p: jnp.sum(model.apply({"params": p}, PACKED_IDS) ** 2)
  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
