"""BiGS reference (jxiw/BiGS Flax) parameter trees <-> lmlab BiGS encoders.

The reference code needs its own transformers fork, so it is not run here.
Instead a tree with the reference's exact names and shapes is built from
random numbers, and the lmlab network on the converted parameters is
compared with a naive float64 numpy forward pass written from the
reference's equations and reading the reference-named tree directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import numpy as np
import pytest
from flax import serialization

from lmlab.convert import bigs, common
from lmlab.convert.__main__ import main as convert_main
from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import EncoderForMaskedLM, EncoderForSequenceClassification

REF_CONFIG = dict(model_type="BiGS", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                  intermediate_size=48, hidden_act="gelu", hidden_dropout_prob=0.0,
                  max_position_embeddings=64, type_vocab_size=2, initializer_range=0.02,
                  layer_norm_eps=1e-12, pad_token_id=0, num_ssm=8, pre_norm=True,
                  scaling="hippo", pooler_type="non_padding_mean", tie_word_embeddings=True)
NUM_CLASSES = 3
LENGTH = 64  # The reference only accepts inputs of exactly max_position_embeddings tokens.
TOLERANCE = 1e-4
_DENSES = ("dv", "du_forward", "du_backward", "duc_forward", "duc_backward", "dol", "do")


# --- a reference-shaped tree ------------------------------------------------------------


def make_reference_tree(ref: dict, head: str = "mlm", seed: int = 0) -> dict:
  """Random float32 parameters named and shaped as the reference's ``params`` for ``head``."""
  rng = np.random.RandomState(seed)
  hidden, inner, n = ref["hidden_size"], ref["intermediate_size"], ref["num_ssm"]
  f32 = lambda x: np.asarray(x, np.float32)
  normal = lambda *shape, scale=1.0: f32(scale * rng.randn(*shape))
  dense = lambda fan_in, fan_out, bias=True: dict(
      {"kernel": normal(fan_in, fan_out, scale=fan_in ** -0.5)},
      **({"bias": normal(fan_out, scale=0.1)} if bias else {}))
  norm = lambda: {"scale": f32(1 + 0.1 * rng.randn(hidden)), "bias": normal(hidden, scale=0.1)}

  def ssm():
    return {"A_re": f32(-rng.uniform(0.2, 1.0, n)),
            "A_im": f32(np.pi * np.arange(n) + rng.uniform(-0.5, 0.5, n)),
            "C": normal(n, 2, scale=0.5 ** 0.5),
            "D": normal(1),
            "log_step": f32(rng.uniform(np.log(0.01), 0.0, (1,)))}

  def layer():
    widths = dict(dv=(hidden, inner), du_forward=(hidden, hidden), du_backward=(hidden, hidden),
                  duc_forward=(hidden, hidden), duc_backward=(hidden, hidden),
                  dol=(hidden, inner), do=(inner, hidden))
    return {"LayerNorm": norm(), "fs4": ssm(), "bs4": ssm(),
            **{name: dense(*widths[name]) for name in _DENSES}}

  base = {
      "embeddings": {
          "word_embeddings": {"embedding": normal(ref["vocab_size"], hidden)},
          "position_embeddings": {"embedding": normal(ref["max_position_embeddings"], hidden)},
          "token_type_embeddings": {"embedding": normal(ref["type_vocab_size"], hidden)},
          "LayerNorm": norm()},
      "encoder": {"layer": {str(i): layer() for i in range(ref["num_hidden_layers"])}},
  }
  if head == "classification":
    base["pooler"] = {"dense": dense(hidden, hidden)}
    return {"s4_bert": base, "classifier": dense(hidden, NUM_CLASSES)}
  predictions = {"transform": {"dense": dense(hidden, hidden), "LayerNorm": norm()},
                 "bias": normal(ref["vocab_size"], scale=0.1)}
  if not ref["tie_word_embeddings"]:
    predictions["decoder"] = dense(hidden, ref["vocab_size"], bias=False)
  return {"s4_bert": base, "cls": {"predictions": predictions}}


# --- the reference forward pass, naively in float64 --------------------------------------


def _f64(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _gelu_exact(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p.get("bias", 0.0)


def _s4d(u, p, kernel_length):
  """``u [L, H]``: reference ZOH kernel (built for ``kernel_length``), causal conv, ``D u``."""
  a = np.minimum(p["A_re"], -1e-4) + 1j * p["A_im"]
  c = p["C"][..., 0] + 1j * p["C"][..., 1]
  dt = np.exp(p["log_step"][0])
  kernel = np.array([np.sum(c * (np.exp(dt * a) - 1) / a * np.exp(l * dt * a)).real
                     for l in range(kernel_length)])
  length = u.shape[0]
  out = np.stack([np.convolve(u[:, h], kernel)[:length] for h in range(u.shape[1])], axis=1)
  return out + p["D"][0] * u


def _reference_layer(x, p, ref):
  """One ``FlaxBiGSLayer`` on ``x [L, hidden]``."""
  flip = lambda h: h[::-1]

  def mix(h):
    v = _gelu_tanh(_dense(h, p["dv"]))
    forward = _gelu_tanh(_dense(h, p["du_forward"]))
    backward = _gelu_tanh(_dense(flip(h), p["du_backward"]))
    forward = _s4d(forward, p["fs4"], ref["max_position_embeddings"])
    backward = _s4d(backward, p["bs4"], ref["max_position_embeddings"])
    u = _dense(forward, p["duc_forward"]) * flip(_dense(backward, p["duc_backward"]))
    return _dense(_gelu_tanh(_dense(u, p["dol"])) * v, p["do"])

  eps = ref["layer_norm_eps"]
  if ref["pre_norm"]:
    return x + mix(_layer_norm(x, p["LayerNorm"], eps))
  return _layer_norm(x + mix(x), p["LayerNorm"], eps)


def reference_hidden(tree, ref, ids, types):
  """Last hidden states ``[batch, L, hidden]``: every row at full length, padding included."""
  base = _f64(tree["s4_bert"])
  emb = base["embeddings"]
  rows = []
  for row_ids, row_types in zip(ids, types):
    x = (emb["word_embeddings"]["embedding"][row_ids]
         + emb["token_type_embeddings"]["embedding"][row_types]
         + emb["position_embeddings"]["embedding"][np.arange(len(row_ids))])
    x = _layer_norm(x, emb["LayerNorm"], ref["layer_norm_eps"])
    for i in range(ref["num_hidden_layers"]):
      x = _reference_layer(x, base["encoder"]["layer"][str(i)], ref)
    rows.append(x)
  return np.stack(rows)


def reference_mlm_logits(tree, ref, ids, types):
  predictions = _f64(tree["cls"]["predictions"])
  h = _dense(reference_hidden(tree, ref, ids, types), predictions["transform"]["dense"])
  h = _layer_norm(_gelu_exact(h), predictions["transform"]["LayerNorm"], ref["layer_norm_eps"])
  if ref["tie_word_embeddings"]:
    decoder = np.asarray(tree["s4_bert"]["embeddings"]["word_embeddings"]["embedding"],
                         np.float64).T
  else:
    decoder = predictions["decoder"]["kernel"]
  return h @ decoder + predictions["bias"]


def reference_class_logits(tree, ref, ids, types, mask):
  hidden = reference_hidden(tree, ref, ids, types)
  weights = mask[..., None].astype(np.float64)
  pooled = (hidden * weights).sum(1) / weights.sum(1)
  pooled = np.tanh(_dense(pooled, _f64(tree["s4_bert"]["pooler"]["dense"])))
  return _dense(pooled, _f64(tree["classifier"]))


# --- lmlab side ---------------------------------------------------------------------------


def inputs(ref):
  """Ids with the second row right-padded from 3/4 of the length, token types, mask."""
  rng = np.random.RandomState(1)
  ids = rng.randint(1, ref["vocab_size"], (2, LENGTH)).astype(np.int32)
  mask = np.ones_like(ids, dtype=bool)
  mask[1, 3 * LENGTH // 4:] = False
  ids[~mask] = ref["pad_token_id"]
  types = rng.randint(0, ref["type_vocab_size"], ids.shape).astype(np.int32)
  types[1, LENGTH // 3:] = 1
  return ids, types, mask


@functools.lru_cache(maxsize=None)
def _apply(config: EncoderConfig, head: str):
  if head == "classification":
    model = EncoderForSequenceClassification(config, NUM_CLASSES, pooling="mean")
  else:
    model = EncoderForMaskedLM(config)
  return jax.jit(lambda params, ids, types: model.apply({"params": params}, ids,
                                                         token_type_ids=types))


def lmlab_logits(config, head, params, ids, types):
  with jax.default_matmul_precision("highest"):
    return np.asarray(_apply(config, head)(params, ids, types), np.float64)


def assert_logits_close(ours, expected):
  scale = np.max(np.abs(expected))
  error = np.max(np.abs(ours - expected))
  assert error <= TOLERANCE * scale, f"max error {error} vs scale {scale}"


def assert_trees_equal(a, b):
  flat_a, flat_b = common.flatten(a), common.flatten(b)
  assert set(flat_a) == set(flat_b), sorted(set(flat_a) ^ set(flat_b))
  for path, value in flat_a.items():
    other = flat_b[path]
    assert np.asarray(value).dtype == np.asarray(other).dtype, path
    assert np.array_equal(np.asarray(value), np.asarray(other)), common.path_str(path)


# --- tests --------------------------------------------------------------------------------


def test_config_mapping_round_trips():
  config = bigs.bigs_config_from_reference(REF_CONFIG)
  assert config == EncoderConfig(
      mixer="bigs", vocab_size=100, d_model=32, num_layers=2, num_heads=1, d_ff=48,
      norm_position="pre", norm_eps=1e-12, max_positions=64, num_token_types=2,
      dropout_rate=0.0, attention_dropout_rate=0.0, tie_output_embedding=True,
      initializer_range=0.02, pad_id=0, ssm_state_size=8, ssm_a_init="hippo")
  back = bigs.bigs_config_to_reference(config)
  assert back["architectures"] == ["FlaxBiGSForMaskedLM"]
  assert {k: back[k] for k in REF_CONFIG} == REF_CONFIG
  post = bigs.bigs_config_from_reference({**REF_CONFIG, "pre_norm": False, "scaling": "lin"})
  assert (post.norm_position, post.ssm_a_init) == ("post", "lin")
  labels = bigs.bigs_config_to_reference(config, "classification", NUM_CLASSES)
  assert len(labels["id2label"]) == NUM_CLASSES


@pytest.mark.parametrize("overrides", [
    {},
    {"pre_norm": False},
    {"tie_word_embeddings": False},
], ids=["pre_norm_tied", "post_norm", "untied"])
def test_mlm_logits_match_naive_reference(overrides):
  ref = {**REF_CONFIG, **overrides}
  tree = make_reference_tree(ref)
  config = bigs.bigs_config_from_reference(ref)
  params = bigs.params_from_reference(tree, config)
  ids, types, _ = inputs(ref)
  assert_logits_close(lmlab_logits(config, "mlm", params, ids, types),
                      reference_mlm_logits(tree, ref, ids, types))


def test_classification_logits_match_naive_reference_with_padding():
  ref = {**REF_CONFIG, "pre_norm": False}
  tree = make_reference_tree(ref, "classification")
  config = bigs.bigs_config_from_reference(ref, head="classification")
  params = bigs.params_from_reference(tree, config, "classification")
  assert params["classifier"]["kernel"].shape == (32, NUM_CLASSES)
  ids, types, mask = inputs(ref)
  assert_logits_close(lmlab_logits(config, "classification", params, ids, types),
                      reference_class_logits(tree, ref, ids, types, mask))


@pytest.mark.parametrize("head,overrides,scan", [
    ("mlm", {}, False),
    ("mlm", {"tie_word_embeddings": False}, True),
    ("classification", {}, True),
])
def test_round_trip_reproduces_every_reference_array(head, overrides, scan):
  ref = {**REF_CONFIG, **overrides}
  tree = make_reference_tree(ref, head)
  config = dataclasses.replace(bigs.bigs_config_from_reference(ref, head), scan_layers=scan)
  params = bigs.params_from_reference(tree, config, head)
  if scan:
    assert "layers" in params["encoder"] and "layers_0" not in params["encoder"]
    assert params["encoder"]["layers"]["forward_ssm"]["C"].shape == (2, 8, 2)
  expected_tree = bigs.abstract_bigs_params(config, head,
                                           NUM_CLASSES if head == "classification" else None)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected_tree)
  assert_trees_equal(bigs.params_to_reference(params, config, head), tree)


def test_other_tops_and_pretraining_extras_are_accepted():
  tree = make_reference_tree(REF_CONFIG)
  config = bigs.bigs_config_from_reference(REF_CONFIG)
  expected = bigs.params_from_reference(tree, config)
  hidden = REF_CONFIG["hidden_size"]
  extras = {"pooler": {"dense": {"kernel": np.zeros((hidden, hidden), np.float32),
                                 "bias": np.zeros((hidden,), np.float32)}}}
  pretraining = {"s4_bert": {**tree["s4_bert"], **extras},
                 "cls": {**tree["cls"], "seq_relationship": {
                     "kernel": np.zeros((hidden, 2), np.float32),
                     "bias": np.zeros((2,), np.float32)}}}
  for variant in ({"BiGS": tree["s4_bert"], "cls": tree["cls"]},
                  {**tree["s4_bert"], "cls": tree["cls"]},
                  {"params": tree},
                  pretraining):
    assert_trees_equal(bigs.params_from_reference(variant, config), expected)


def test_wrong_shape_names_the_tensor():
  ref = {**REF_CONFIG, "num_ssm": 4}
  tree = make_reference_tree(ref)
  config = bigs.bigs_config_from_reference(REF_CONFIG)
  with pytest.raises(common.ConversionError, match=r"'s4_bert/encoder/layer/0/fs4/A_re'.*\(4,\)"):
    bigs.params_from_reference(tree, config)
  tree = make_reference_tree(REF_CONFIG)
  tree["s4_bert"]["encoder"]["layer"]["1"]["dol"]["kernel"] = np.zeros((32, 50), np.float32)
  with pytest.raises(common.ConversionError, match="'s4_bert/encoder/layer/1/dol/kernel'"):
    bigs.params_from_reference(tree, config)


def test_bert_style_tree_is_refused():
  """A Flax BERT MLM tree (attention blocks) fails at the first BiGS tensor it lacks."""
  hidden, inner = REF_CONFIG["hidden_size"], REF_CONFIG["intermediate_size"]
  dense = lambda i, o: {"kernel": np.zeros((i, o), np.float32), "bias": np.zeros((o,), np.float32)}
  norm = {"scale": np.ones((hidden,), np.float32), "bias": np.zeros((hidden,), np.float32)}
  bert_tree = make_reference_tree(REF_CONFIG)
  bert_tree["s4_bert"]["encoder"]["layer"] = {str(i): {
      "attention": {"self": {n: dense(hidden, hidden) for n in ("query", "key", "value")},
                    "output": {"dense": dense(hidden, hidden), "LayerNorm": norm}},
      "intermediate": {"dense": dense(hidden, inner)},
      "output": {"dense": dense(inner, hidden), "LayerNorm": norm}} for i in range(2)}
  bert_tree = {"bert": bert_tree.pop("s4_bert"), **bert_tree}
  config = bigs.bigs_config_from_reference(REF_CONFIG)
  with pytest.raises(common.ConversionError,
                     match="'s4_bert/embeddings/word_embeddings/embedding'.*missing"):
    bigs.params_from_reference(bert_tree, config)
  bert_tree = {"s4_bert": bert_tree.pop("bert"), **bert_tree}
  with pytest.raises(common.ConversionError, match="'s4_bert/encoder/layer/0/LayerNorm/scale'"):
    bigs.params_from_reference(bert_tree, config)


def test_heads_and_unsupported_configs_are_refused():
  config = bigs.bigs_config_from_reference(REF_CONFIG)
  classifier = make_reference_tree(REF_CONFIG, "classification")
  with pytest.raises(common.ConversionError, match="'cls/predictions/transform/dense/kernel'"):
    bigs.params_from_reference(classifier, config, "mlm")
  untied = make_reference_tree({**REF_CONFIG, "tie_word_embeddings": False})
  with pytest.raises(common.ConversionError, match="'cls/predictions/decoder/kernel'"):
    bigs.params_from_reference(untied, config)  # tied config, untied checkpoint
  for bad, message in (({"hidden_act": "relu"}, "hidden_act"), ({"model_type": "bert"}, "bert"),
                       ({"scaling": "legs"}, "scaling")):
    with pytest.raises(common.ConversionError, match=message):
      bigs.bigs_config_from_reference({**REF_CONFIG, **bad})
  with pytest.raises(common.ConversionError, match="pooler_type"):
    bigs.bigs_config_from_reference({**REF_CONFIG, "pooler_type": "mean"}, head="classification")
  bigs.bigs_config_from_reference({**REF_CONFIG, "pooler_type": "mean"})  # fine for MLM
  for change in ({"ssm_mask_padding": True}, {"norm_type": "rmsnorm"}, {"mixer": "attention"}):
    with pytest.raises(common.ConversionError, match=next(iter(change))):
      bigs.bigs_config_to_reference(dataclasses.replace(config, **change))


def _write_reference_folder(folder, ref, tree):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(ref))
  (folder / bigs.WEIGHTS_FILE).write_bytes(serialization.msgpack_serialize(tree))


@pytest.mark.parametrize("head", bigs.HEADS)
def test_folder_round_trip(tmp_path, head):
  ref = {**REF_CONFIG, "decode": False, "use_pykeops_kernel": False}
  tree = make_reference_tree(ref, head)
  _write_reference_folder(tmp_path / "ref", ref, tree)
  checkpoint = bigs.load_reference_bigs(tmp_path / "ref")
  assert checkpoint.head == head
  assert checkpoint.num_classes == (NUM_CLASSES if head == "classification" else None)
  assert checkpoint.config == bigs.bigs_config_from_reference(ref)
  bigs.save_reference_bigs(tmp_path / "out", checkpoint.config, checkpoint.params, base=ref)
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert {k: written[k] for k in ref} == ref
  restored = serialization.msgpack_restore((tmp_path / "out" / bigs.WEIGHTS_FILE).read_bytes())
  assert_trees_equal(restored, tree)


def test_cli_import_export(tmp_path, capsys):
  ref = {**REF_CONFIG, "tie_word_embeddings": False}
  tree = make_reference_tree(ref)
  _write_reference_folder(tmp_path / "ref", ref, tree)
  params_path = str(tmp_path / "bigs.npz")
  assert convert_main(["import", "--family", "bigs", "--hf_dir", str(tmp_path / "ref"),
                       "--output", params_path]) == 0
  sidecar = json.loads((tmp_path / "bigs.config.json").read_text())
  assert (sidecar["family"], sidecar["head"], sidecar["config"]["mixer"]) == ("bigs", "mlm", "bigs")
  config = bigs.bigs_config_from_reference(ref)
  assert_trees_equal(common.load_params(params_path), bigs.params_from_reference(tree, config))
  assert convert_main(["export", "--family", "bigs", "--params", params_path,
                       "--hf_dir", str(tmp_path / "out")]) == 0
  restored = serialization.msgpack_restore((tmp_path / "out" / bigs.WEIGHTS_FILE).read_bytes())
  assert_trees_equal(restored, tree)
  # A folder of another architecture is refused with exit status 2 and the tensor named.
  bad = make_reference_tree(ref)
  del bad["s4_bert"]["encoder"]["layer"]["1"]["bs4"]["C"]
  _write_reference_folder(tmp_path / "bad", ref, bad)
  assert convert_main(["import", "--family", "bigs", "--hf_dir", str(tmp_path / "bad"),
                       "--output", str(tmp_path / "bad.npz")]) == 2
  assert "s4_bert/encoder/layer/1/bs4/C" in capsys.readouterr().err
