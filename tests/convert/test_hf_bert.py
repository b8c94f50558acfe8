"""Hugging Face BERT/RoBERTa (MLM, pooler, sequence classifier) <-> lmlab conversion."""

from __future__ import annotations

import dataclasses
import functools
import types as types_module

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from lmlab.convert import common, hf_bert
from lmlab.convert.__main__ import main as convert_main
from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import EncoderForMaskedLM, EncoderForSequenceClassification
from lmlab.wrappers.classification import ClassificationModel

SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)
TOLERANCE = 1e-4


def make_hf(model_type: str, seed: int = 0, cls=None, **overrides):
  """A random model (MLM unless ``cls``) in eval mode; biases and norms perturbed from 0/1."""
  torch.manual_seed(seed)
  if model_type == "roberta":
    config = transformers.RobertaConfig(**{**SIZES, "type_vocab_size": 1, **overrides})
    model = (cls or transformers.RobertaForMaskedLM)(config)
  else:
    model = (cls or transformers.BertForMaskedLM)(transformers.BertConfig(**{**SIZES, **overrides}))
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
        param.add_(0.1 * torch.randn_like(param))
  return model.eval()


def state_of(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def inputs(config: EncoderConfig, length: int):
  """Ids with the second row right-padded from 3/4 of the length, and token types."""
  rng = np.random.RandomState(0)
  ids = rng.randint(3, config.vocab_size, (2, length)).astype(np.int32)
  valid = np.ones_like(ids, dtype=bool)
  valid[1, 3 * length // 4:] = False
  ids[~valid] = config.pad_id
  types = rng.randint(0, config.num_token_types, ids.shape).astype(np.int32)
  return ids, types, valid


def hf_logits(model, ids, types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(ids != model.config.pad_token_id, dtype=torch.long),
                 token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()


@functools.lru_cache(maxsize=None)
def mlm_logits(config: EncoderConfig):
  """Jitted ``(params, ids, token_type_ids) -> logits`` of the lmlab network."""
  model = EncoderForMaskedLM(config)
  return jax.jit(lambda params, ids, types: model.apply({"params": params}, ids,
                                                         token_type_ids=types))


@pytest.fixture(scope="module", params=("bert", "roberta"))
def case(request):
  """(model type, hf model, hf state dict, lmlab config, lmlab params)."""
  hf = make_hf(request.param)
  state = state_of(hf)
  config = hf_bert.bert_config_from_hf(hf.config.to_dict())
  return request.param, hf, state, config, hf_bert.params_from_hf(state, config, request.param)


def test_config_mapping(case):
  model_type, hf, _, config, _ = case
  assert (config.vocab_size, config.d_model, config.num_layers, config.num_heads, config.d_ff) == (
      100, 32, 2, 4, 64)
  assert config.mlp_activation == "gelu" and config.norm_eps == hf.config.layer_norm_eps
  assert config.pad_id == hf.config.pad_token_id
  # RoBERTa's first pad_token_id + 1 = 2 position rows are dropped.
  assert config.max_positions == (38 if model_type == "roberta" else 40)
  hf_dict = hf_bert.bert_config_to_hf(config, model_type)
  assert hf_dict["max_position_embeddings"] == 40
  assert hf_bert.bert_config_from_hf(hf_dict) == config


def test_mlm_logits_match(case):
  _, hf, _, config, params = case
  # Full length: the last lmlab position must map onto the last Hugging Face row.
  ids, types, valid = inputs(config, config.max_positions)
  logits = np.asarray(mlm_logits(config)(params, ids, types))
  expected = hf_logits(hf, ids, types)
  assert np.abs(logits[valid] - expected[valid]).max() <= TOLERANCE


def test_export_reproduces_state_dict(case):
  model_type, _, state, config, params = case
  exported = hf_bert.params_to_hf(params, config, model_type)
  assert sorted(exported) == sorted(state)
  for name, tensor in state.items():
    if model_type == "roberta" and name.endswith("position_embeddings.weight"):
      # Rows 0..pad_id are not part of the lmlab model; export writes zeros,
      # which matches Hugging Face's (zero, untrained) pad row.
      np.testing.assert_array_equal(exported[name][2:], tensor[2:])
      np.testing.assert_array_equal(exported[name][1], tensor[1])
      assert not exported[name][0].any()
      continue
    assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name


def test_save_then_from_pretrained(case, tmp_path):
  model_type, hf, _, config, params = case
  hf_bert.save_hf_bert(tmp_path, config, params, model_type)
  cls = transformers.AutoModelForMaskedLM
  reloaded = cls.from_pretrained(tmp_path).eval()
  assert type(reloaded) is type(hf)
  ids, types, _ = inputs(config, 24)
  # Every position, pads included: the rows export zeroes are never read.
  np.testing.assert_array_equal(hf_logits(reloaded, ids, types), hf_logits(hf, ids, types))
  assert hf_bert.hf_model_type(tmp_path) == model_type
  config_again, params_again = hf_bert.load_hf_bert(tmp_path)
  assert config_again == config
  for path, value in common.flatten(params).items():
    assert np.array_equal(common.flatten(params_again)[path], value), path


def test_untied_decoder():
  hf = make_hf("bert", tie_word_embeddings=False)
  state = state_of(hf)
  config = hf_bert.bert_config_from_hf(hf.config.to_dict())
  assert not config.tie_output_embedding
  params = hf_bert.params_from_hf(state, config)
  assert set(params["mlm_head"]) == {"transform", "norm", "decoder"}
  ids, types, valid = inputs(config, 20)
  logits = np.asarray(mlm_logits(config)(params, ids, types))
  assert np.abs(logits[valid] - hf_logits(hf, ids, types)[valid]).max() <= TOLERANCE
  exported = hf_bert.params_to_hf(params, config)
  for name, tensor in state.items():
    if name != "cls.predictions.bias":  # unused by Hugging Face when untied
      assert np.array_equal(exported[name], tensor), name


def test_scanned_layers():
  """Import into and export from a ``scan_layers`` (stacked) parameter tree."""
  model_type = "bert"  # Stacking does not depend on the model type.
  state = state_of(make_hf(model_type))
  config = hf_bert.bert_config_from_hf(make_hf(model_type).config.to_dict())
  params = hf_bert.params_from_hf(state, config, model_type)
  scanned = dataclasses.replace(config, scan_layers=True)
  stacked = hf_bert.params_from_hf(state, scanned, model_type)
  assert stacked["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 64)
  ids, types, _ = inputs(config, 20)
  np.testing.assert_allclose(
      mlm_logits(scanned)(stacked, ids, types), mlm_logits(config)(params, ids, types),
      atol=1e-6)
  back = hf_bert.params_to_hf(stacked, scanned, model_type)
  for name, tensor in hf_bert.params_to_hf(params, config, model_type).items():
    assert np.array_equal(back[name], tensor), name


def test_pretraining_extras_and_old_names_are_accepted():
  hf = make_hf("bert")
  state = state_of(hf)
  config = hf_bert.bert_config_from_hf(hf.config.to_dict())
  expected = hf_bert.params_from_hf(state, config)
  assert set(expected) == {"encoder", "mlm_head"}  # BertForMaskedLM has no pooler
  pooler = np.random.RandomState(0).randn(32, 32).astype(np.float32)
  state["bert.pooler.dense.weight"] = pooler
  state["bert.pooler.dense.bias"] = np.ones((32,), np.float32)
  state["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)
  state["bert.embeddings.LayerNorm.gamma"] = state.pop("bert.embeddings.LayerNorm.weight")
  got = hf_bert.params_from_hf(state, config)
  # The pooler is kept (for fine-tuning); next-sentence weights are dropped.
  assert set(got) == {"encoder", "mlm_head", "pooler"}
  np.testing.assert_array_equal(got["pooler"]["kernel"], pooler.T)
  np.testing.assert_array_equal(got["pooler"]["bias"], np.ones(32))
  for path, value in common.flatten(expected).items():
    assert np.array_equal(common.flatten(got)[path], value), path
  with pytest.raises(ValueError, match=r"'bert\.pooler\.dense\.bias'.*missing"):
    hf_bert.params_from_hf({k: v for k, v in state.items() if k != "bert.pooler.dense.bias"},
                           config)


def _pooled_and_logits(config, params, num_classes, ids, types):
  """lmlab ``pooling="cls"``: the pooled output ``tanh(pooler(h_0))`` and the logits."""
  model = EncoderForSequenceClassification(config, num_classes, pooling="cls")
  logits, state = model.apply({"params": params}, ids, token_type_ids=types,
                              capture_intermediates=True, mutable=["intermediates"])
  pooled = np.tanh(np.asarray(state["intermediates"]["pooler"]["__call__"][0]))
  return pooled, np.asarray(logits)


def _hf_pooled_and_logits(hf, ids, types):
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(ids != hf.config.pad_token_id, dtype=torch.long),
                token_type_ids=torch.tensor(types, dtype=torch.long))
  with torch.no_grad():
    pooled = hf.bert(**kwargs).pooler_output.numpy()
    logits = hf(**kwargs).logits.numpy() if hasattr(hf, "classifier") else None
  return pooled, logits


def test_sequence_classifier_imports_pooler_and_classifier(tmp_path):
  """A saved BertForSequenceClassification: lmlab's pooled [CLS] and logits equal Hugging Face's."""
  hf = make_hf("bert", cls=transformers.BertForSequenceClassification, num_labels=3)
  hf.save_pretrained(tmp_path / "hf")
  config, params = hf_bert.load_hf_bert(tmp_path / "hf")
  assert set(params) == {"encoder", "pooler", "classifier"}
  assert params["classifier"]["kernel"].shape == (32, 3)
  ids, types, _ = inputs(config, 24)
  pooled, logits = _pooled_and_logits(config, params, 3, ids, types)
  hf_pooled, hf_logits_ = _hf_pooled_and_logits(hf, ids, types)
  assert np.abs(pooled - hf_pooled).max() <= TOLERANCE
  assert np.abs(logits - hf_logits_).max() <= TOLERANCE
  # Round trip: the pooler and classifier are written back unchanged.
  hf_bert.save_hf_bert(tmp_path / "out", config, params)
  assert common.read_hf_config(tmp_path / "out")["architectures"] == [
      "BertForSequenceClassification"]
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
  assert type(reloaded) is transformers.BertForSequenceClassification
  original, again = state_of(hf), state_of(reloaded.eval())
  assert sorted(again) == sorted(original)
  for name, tensor in original.items():
    assert np.array_equal(again[name], tensor), name
  np.testing.assert_array_equal(_hf_pooled_and_logits(reloaded, ids, types)[1], hf_logits_)
  # The fine-tuning wrapper with pooling="cls" computes the same logits from these parameters.
  spec = types_module.SimpleNamespace(kind="classification", num_classes=3)
  wrapper = ClassificationModel(config, spec, pooling="cls")
  batch = {"input_ids": ids, "token_type_ids": types, "segment_ids": (ids != 0).astype(np.int32),
           "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)}
  assert np.abs(np.asarray(wrapper.apply(params, batch)) - hf_logits_).max() <= TOLERANCE


def test_pretraining_checkpoint_pooler_starts_the_fine_tune(tmp_path):
  """BertForPreTraining (encoder, pooler, MLM, NSP): the pooler survives import and export."""
  hf = make_hf("bert", cls=transformers.BertForPreTraining)
  state = state_of(hf)
  config = hf_bert.bert_config_from_hf(hf.config.to_dict())
  params = hf_bert.params_from_hf(state, config)
  assert set(params) == {"encoder", "mlm_head", "pooler"}
  # A fine-tune grafts encoder and pooler onto a fresh head: its pooled output is BERT's.
  fresh = nn.meta.unbox(EncoderForSequenceClassification(config, 2, pooling="cls").init(
      jax.random.PRNGKey(0), np.ones((1, 4), np.int32)))["params"]
  grafted = dict(fresh, encoder=params["encoder"], pooler=params["pooler"])
  ids, types, _ = inputs(config, 24)
  pooled, _ = _pooled_and_logits(config, grafted, 2, ids, types)
  assert np.abs(pooled - _hf_pooled_and_logits(hf, ids, types)[0]).max() <= TOLERANCE
  # Export keeps the pooler (the next-sentence head was dropped at import).
  exported = hf_bert.params_to_hf(params, config)
  kept = {k: v for k, v in state.items() if not k.startswith("cls.seq_relationship.")}
  assert sorted(exported) == sorted(kept)
  for name, tensor in kept.items():
    assert np.array_equal(exported[name], tensor), name
  hf_bert.save_hf_bert(tmp_path, config, params)
  reloaded = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
  np.testing.assert_array_equal(reloaded.bert.pooler.dense.weight.detach().numpy(),
                                state["bert.pooler.dense.weight"])
  assert hf_bert.load_hf_bert(tmp_path)[1].keys() == params.keys()


def test_wrong_architecture_names_first_tensor():
  small = hf_bert.bert_config_from_hf(make_hf("bert").config.to_dict())
  wider = state_of(make_hf("bert", intermediate_size=128))
  with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.0\.intermediate\.dense\.weight' "
                     r"has shape \(128, 32\), expected \(64, 32\)"):
    hf_bert.params_from_hf(wider, small)
  with pytest.raises(ValueError, match=r"'bert\.embeddings\.word_embeddings\.weight'.*missing"):
    hf_bert.params_from_hf(state_of(make_hf("roberta")), small, "bert")
  deeper = state_of(make_hf("bert", num_hidden_layers=3))
  with pytest.raises(ValueError, match=r"unexpected tensor 'bert\.encoder\.layer\.2\."):
    hf_bert.params_from_hf(deeper, small)


@pytest.mark.parametrize("hf_config, message", [
    ({"model_type": "bert", "hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
    ({"model_type": "bert", "hidden_act": "relu"}, "hidden_act='relu'"),
    ({"model_type": "bert", "position_embedding_type": "relative_key"}, "relative_key"),
    ({"model_type": "t5"}, "model_type='t5'"),
])
def test_unsupported_configs(hf_config, message):
  with pytest.raises(ValueError, match=message):
    hf_bert.bert_config_from_hf(hf_config)


@pytest.mark.parametrize("change", [
    dict(norm_position="pre"), dict(position_scheme="rope"), dict(mlp_activation="gated_gelu"),
    dict(use_bias=False), dict(norm_type="rmsnorm"),
])
def test_unsupported_lmlab_layouts_are_refused(change):
  config = dataclasses.replace(EncoderConfig(vocab_size=64, d_model=32, num_heads=4), **change)
  with pytest.raises(ValueError, match="no Hugging Face bert equivalent"):
    hf_bert.bert_config_to_hf(config)


def test_cli_round_trip_roberta(tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  hf = make_hf("roberta")
  with torch.no_grad():  # Row 0 is never read; zero it so the files can match exactly.
    hf.roberta.embeddings.position_embeddings.weight[0].zero_()
  hf.save_pretrained(tmp_path / "hf")
  assert convert_main(["import", "--family", "bert", "--hf_dir", str(tmp_path / "hf"),
                       "--output", str(tmp_path / "p.msgpack")]) == 0
  assert convert_main(["export", "--family", "bert", "--params", str(tmp_path / "p.msgpack"),
                       "--hf_dir", str(tmp_path / "out")]) == 0
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    assert np.array_equal(exported[name], tensor), name
  config = common.read_hf_config(tmp_path / "out")
  assert config["model_type"] == "roberta" and config["bos_token_id"] == 0
