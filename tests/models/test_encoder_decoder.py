"""T5-family network: axis names, golden shapes, MrT5 gate equivalences, remat and masking."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models.byte_level import keep_tokens
from lmlab.models.config import T5Config
from lmlab.models.encoder_decoder import EncoderDecoder, relative_position_buckets

ALLOWED_AXES = {"embed", "mlp", "heads", "kv", "vocab", "relpos_buckets", None}
TINY = T5Config(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                num_encoder_layers=3, num_decoder_layers=2)
MRT5 = dataclasses.replace(TINY, delete_gate_layer=1)


def _apply(model: EncoderDecoder, variables, *args, **kwargs):
  """``model.apply`` compiled (eager op-by-op execution is slow on CPU)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def _init(cfg: T5Config, seed: int = 0):
  ids = jnp.ones((2, 6), jnp.int32)
  init = jax.jit(lambda rng: EncoderDecoder(cfg).init(rng, ids, ids[:, :4])["params"])
  return init(jax.random.PRNGKey(seed))


def _flat(tree, is_leaf=None):
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def _batch(rng: np.random.RandomState, rows: int = 3, enc_len: int = 20, dec_len: int = 7):
  enc = rng.randint(3, 128, (rows, enc_len)).astype(np.int32)
  enc[1, enc_len // 2:] = 0
  dec = rng.randint(3, 128, (rows, dec_len)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


@pytest.mark.parametrize("cfg", [TINY, MRT5, dataclasses.replace(TINY, mlp_activation="relu",
                                                               tie_word_embeddings=True)],
                         ids=["v1_1", "mrt5", "v1_0_tied"])
def test_every_parameter_has_logical_axes(cfg):
  boxes = _flat(jax.eval_shape(lambda: _init(cfg)), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes
  for path, box in boxes.items():
    assert isinstance(box, nn.LogicallyPartitioned), f"{path} has no axis names"
    assert len(box.names) == box.value.ndim, path
    assert set(box.names) <= ALLOWED_AXES, (path, box.names)


def test_golden_shapes_of_t5_v1_1_small():
  cfg = T5Config(vocab_size=32128)
  shapes = {k: tuple(v.shape) for k, v in _flat(nn.meta.unbox(jax.eval_shape(lambda: _init(cfg)))).items()}
  assert shapes["token_embedder/embedding"] == (32128, 512)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (32, 6)
  assert shapes["encoder/layers_0/attention/query/kernel"] == (512, 6, 64)
  assert shapes["encoder/layers_0/attention/out/kernel"] == (6, 64, 512)
  assert shapes["encoder/layers_7/mlp/wi_1/kernel"] == (512, 1024)
  assert shapes["decoder/layers_7/cross_attention/key/kernel"] == (512, 6, 64)
  assert shapes["decoder/logits_dense/kernel"] == (512, 32128)
  assert "encoder/layers_8/mlp/wo/kernel" not in shapes
  # Published T5 v1.1 small has about 77M parameters.
  assert 76e6 < sum(int(np.prod(s)) for s in shapes.values()) < 78e6


def test_relative_buckets_cover_exact_and_log_ranges():
  offsets = np.arange(-200, 201)
  both = np.asarray(relative_position_buckets(offsets, bidirectional=True, num_buckets=32,
                                              max_distance=128))
  causal = np.asarray(relative_position_buckets(offsets, bidirectional=False, num_buckets=32,
                                                max_distance=128))
  assert both[200] == 0 and both[201] == 17 and both[199] == 1  # offset 0, +1, -1
  assert both.max() == 31 and both.min() == 0
  assert np.all(causal[201:] == 0)  # future keys share bucket 0 (they are masked anyway)
  assert causal[200 - 15] == 15 and causal[0] == 31  # exact up to 15, far ones in the last bucket
  assert np.all(np.diff(causal[:201]) <= 0)  # monotone in distance


def test_mrt5_with_gate_forced_open_equals_byt5_exactly():
  params = _init(MRT5)
  plain = dict(params, encoder={k: v for k, v in params["encoder"].items() if k != "delete_gate"})
  enc, dec = _batch(np.random.RandomState(0))
  want, gate = _apply(EncoderDecoder(TINY), {"params": nn.meta.unbox(plain)}, enc, dec)
  assert gate is None
  got, _ = _apply(EncoderDecoder(MRT5), {"params": nn.meta.unbox(params)}, enc, dec,
                                      gate_override=jnp.zeros(enc.shape))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("key_bias", ["zero", "gate"])
def test_mrt5_hard_deletion_matches_soft_deletion(key_bias):
  """Hard deletion equals soft deletion with the gate its key bias stands for.

  ``zero`` (the reference) masks kept keys with 0, i.e. soft deletion with a
  binary gate (0 kept, ``k`` deleted); ``gate`` keeps their gate values, i.e.
  soft deletion with the gate itself.
  """
  params = nn.meta.unbox(_init(MRT5, seed=1))
  model = EncoderDecoder(MRT5)
  rng = np.random.RandomState(1)
  enc, dec = _batch(rng)
  seg = (enc != 0).astype(np.int32)
  k = MRT5.delete_gate_scale
  # Delete about half the tokens: gate k where deleted, small negative values where kept.
  deleted = rng.rand(*enc.shape) < 0.5
  deleted[:, 0] = False
  gate = np.where(deleted, k, -rng.rand(*enc.shape)).astype(np.float32)
  gate = np.where(seg > 0, gate, k)
  soft_gate = gate if key_bias == "gate" else np.where(deleted | (seg == 0), k, 0.0)
  soft_gate = soft_gate.astype(np.float32)
  soft_encoded, _ = _apply(model, {"params": params}, enc, method="encode",
                           gate_override=soft_gate)
  soft_logits = _apply(model, {"params": params}, soft_encoded, seg, dec, gate=soft_gate,
                       method="decode")
  hidden, _ = _apply(model, {"params": params}, enc, method="encode_lower", gate_override=gate)
  kept = keep_tokens(np.asarray(hidden), seg, np.arange(enc.shape[1])[None], gate,
                     threshold=MRT5.delete_threshold, pad_gate=k, key_bias=key_bias)
  assert kept.hidden.shape[1] < enc.shape[1]
  assert 0.3 < kept.kept_fraction < 0.7
  real = kept.segment_ids > 0
  np.testing.assert_array_equal(kept.key_bias[~real], k)
  if key_bias == "zero":
    np.testing.assert_array_equal(kept.key_bias[real], 0.0)  # exactly 0, as in the reference
  else:
    np.testing.assert_array_equal(kept.key_bias, kept.gate)
  assert (kept.gate[real] < 0).all()  # the gate values themselves are still reported
  hard_encoded = _apply(model, {"params": params}, kept.hidden, kept.segment_ids, kept.positions,
                        kept.key_bias, method="encode_upper")
  hard_logits = _apply(model, {"params": params}, hard_encoded, kept.segment_ids, dec,
                       gate=kept.key_bias, method="decode")
  np.testing.assert_allclose(np.asarray(hard_logits), np.asarray(soft_logits), atol=1e-4)
  # The kept tokens' encodings agree with their soft-deletion counterparts.
  row = 0
  order = np.flatnonzero(~deleted[row] & (seg[row] > 0))
  np.testing.assert_allclose(np.asarray(hard_encoded)[row, :order.size],
                             np.asarray(soft_encoded)[row, order], atol=1e-4)
  with pytest.raises(ValueError, match="key_bias"):
    keep_tokens(np.asarray(hidden), seg, np.arange(enc.shape[1])[None], gate,
                threshold=MRT5.delete_threshold, pad_gate=k, key_bias="soft")


def test_mrt5_gate_init_is_the_references():
  """The gate's Linear(H, 1): bias 1, weights Xavier-uniform in +-sqrt(6 / (H + 1))."""
  cfg = dataclasses.replace(MRT5, d_model=512)
  gate = nn.meta.unbox(_init(cfg))["encoder"]["delete_gate"]
  np.testing.assert_array_equal(np.asarray(gate["proj_bias"]), [1.0])
  kernel = np.asarray(gate["proj"]["kernel"])
  assert kernel.shape == (512, 1)
  bound = np.sqrt(6.0 / (512 + 1))
  assert np.abs(kernel).max() <= bound
  # A uniform draw fills the interval: its largest of 512 values is near the bound, and its
  # standard deviation is bound / sqrt(3) (a truncated normal of std H**-0.5 gives neither).
  assert np.abs(kernel).max() > 0.95 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.08)


def test_hard_deletion_refuses_to_empty_a_row():
  seg = np.array([[1, 1, 0]])
  gate = np.full((1, 3), -30.0, np.float32)
  with pytest.raises(ValueError, match="every token of row"):
    keep_tokens(np.zeros((1, 3, 4)), seg, np.arange(3)[None], gate, threshold=-15.0, pad_gate=-30.0)


def test_decode_step_with_cache_equals_full_decoder():
  cfg = TINY
  params = nn.meta.unbox(_init(cfg, seed=2))
  model = EncoderDecoder(cfg)
  enc, dec = _batch(np.random.RandomState(2), dec_len=6)
  full = np.asarray(_apply(model, {"params": params}, enc, dec)[0])
  encoded, gate = _apply(model, {"params": params}, enc, method="encode")
  cache = _apply(model, {"params": params}, encoded, (enc != 0).astype(np.int32), gate,
                 max_decode_length=6, method="init_cache")
  for position in range(6):
    logits, cache = _apply(model, {"params": params}, dec[:, position:position + 1], cache,
                                jnp.int32(position), method="decode_step")
    np.testing.assert_allclose(np.asarray(logits), full[:, position], atol=1e-5)


def test_packed_rows_equal_separate_rows():
  """Two documents packed into one row give the logits each gives alone."""
  cfg = TINY
  params = nn.meta.unbox(_init(cfg, seed=3))
  model = EncoderDecoder(cfg)
  rng = np.random.RandomState(3)
  a_in, b_in = rng.randint(3, 128, 5), rng.randint(3, 128, 7)
  a_out, b_out = np.r_[0, rng.randint(3, 128, 3)], np.r_[0, rng.randint(3, 128, 4)]
  enc = np.r_[a_in, b_in][None].astype(np.int32)
  dec = np.r_[a_out, b_out][None].astype(np.int32)
  enc_seg = np.r_[np.ones(5), 2 * np.ones(7)][None].astype(np.int32)
  dec_seg = np.r_[np.ones(4), 2 * np.ones(5)][None].astype(np.int32)
  enc_pos = np.r_[np.arange(5), np.arange(7)][None].astype(np.int32)
  packed = np.asarray(_apply(model, {"params": params}, enc, dec, encoder_segment_ids=enc_seg,
                                  decoder_segment_ids=dec_seg, encoder_positions=enc_pos)[0])
  alone_b = np.asarray(_apply(model, {"params": params}, b_in[None], b_out[None])[0])
  np.testing.assert_allclose(packed[0, 4:], alone_b[0], atol=1e-5)


@pytest.mark.slow  # remat equivalence is covered by test_scan_remat
def test_remat_and_dropout_options():
  enc, dec = _batch(np.random.RandomState(4))
  params = nn.meta.unbox(_init(TINY))
  want = _apply(EncoderDecoder(TINY), {"params": params}, enc, dec)[0]
  remat = dataclasses.replace(TINY, remat_policy="full")

  def loss(p, cfg):
    return jnp.sum(_apply(EncoderDecoder(cfg), {"params": p}, enc, dec)[0] ** 2)

  got = _apply(EncoderDecoder(remat), {"params": params}, enc, dec)[0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g1, g2 = grad(params, TINY), grad(params, remat)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
  dropped = dataclasses.replace(TINY, dropout_rate=0.5)
  run = jax.jit(lambda seed: EncoderDecoder(dropped).apply(
      {"params": params}, enc, dec, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)})[0])
  assert not np.allclose(np.asarray(run(0)), np.asarray(run(1)))
  np.testing.assert_array_equal(np.asarray(run(0)), np.asarray(run(0)))


def test_config_errors():
  with pytest.raises(ValueError, match="delete_gate_layer"):
    T5Config(num_encoder_layers=2, delete_gate_layer=2)
  with pytest.raises(ValueError, match="mlp_activation"):
    T5Config(mlp_activation="swish")
  with pytest.raises(ValueError, match="vocab_size is None"):
    _init(T5Config(d_model=8, num_heads=1, head_dim=8, d_ff=8, num_encoder_layers=1,
                   num_decoder_layers=1))
  assert T5Config(vocab_multiple=128).with_vocab_size(259 + 125).vocab_size == 384
  assert T5Config().with_vocab_size(32100).vocab_size == 32128
