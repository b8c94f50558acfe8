"""lmlab.convert.auto: every released layout imports with Hugging Face's outputs, and exports back.

Each layout is a tiny random model saved the way its class saves itself
(``save_pretrained``, or a hand-built sentence-transformers folder), read by
``load_hf_checkpoint`` alone, and run by lmlab on the same inputs as the
PyTorch model: hidden states for base models, MLM logits for MLM heads,
classification logits for classifiers, encoder states and decoder logits for
T5. The folders are written once per module.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from lmlab.convert import ConversionError, auto, bigs, common
from lmlab.convert.__main__ import main as convert_main
from lmlab.models.config import EncoderConfig, T5Config
from lmlab.models.encoder import Encoder, EncoderForMaskedLM, EncoderForSequenceClassification
from lmlab.models.encoder_decoder import EncoderDecoder
from lmlab.training.pretrained import graft_pretrained

TOLERANCE = 1e-4
BERT_SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
LABELS = ("negative", "neutral", "positive")
T5_SIZES = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)
# config.json entries as the released families write them (sizes shrunk).
T5_LAYOUTS = {
    "t5_v1_0": (transformers.T5Config, transformers.T5ForConditionalGeneration,
                dict(feed_forward_proj="relu", tie_word_embeddings=True)),
    "t5_v1_1": (transformers.T5Config, transformers.T5ForConditionalGeneration,
                dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "flan_t5": (transformers.T5Config, transformers.T5ForConditionalGeneration,
                dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                     task_specific_params={"summarization": {"prefix": "summarize: "}})),
    "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration,
            dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 tokenizer_class="T5Tokenizer")),
    "byt5": (transformers.T5Config, transformers.T5ForConditionalGeneration,
             dict(vocab_size=384, num_layers=3, num_decoder_layers=1,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                  tokenizer_class="ByT5Tokenizer")),
    "t5_encoder": (transformers.T5Config, transformers.T5EncoderModel,
                   dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}
MEASURED: dict[str, float] = {}  # layout -> max abs error, printed at the end (pytest -s).


def _max_error(name: str, got, want) -> float:
  error = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
  MEASURED[name] = max(error, MEASURED.get(name, 0.0))
  return error


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
  yield
  for name, error in sorted(MEASURED.items()):
    print(f"max abs error {name}: {error:.2e}")


# --- building and saving tiny models --------------------------------------------------------


def _perturbed(model):
  """``model`` in eval mode with biases and norms moved off 0/1 (so a mix-up shows) and
  classifier weights large enough that its logits are of order one."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
        param.add_(0.1 * torch.randn_like(param))
      elif name.startswith("classifier") and param.ndim == 2:
        param.copy_(torch.randn_like(param) * param.shape[1]**-0.5)
  return model.eval()


def random_params(model, *init_args, seed: int = 0):
  """Random float32 parameters shaped like ``model.init`` (built without running it)."""
  rng = np.random.RandomState(seed)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *init_args)["params"])
  return jax.tree_util.tree_map(
      lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _bert_family(model_type: str, cls_name: str, seed: int = 0, **overrides):
  torch.manual_seed(seed)
  config_cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
                "xlm-roberta": transformers.XLMRobertaConfig}[model_type]
  sizes = dict(BERT_SIZES) if model_type == "bert" else dict(BERT_SIZES, type_vocab_size=1)
  return _perturbed(getattr(transformers, cls_name)(config_cls(**sizes, **overrides)))


def _write_sentence_transformers(root, transformer_path: str, pooling: str) -> None:
  """The files sentence-transformers writes around its transformer module."""
  modules = [{"idx": 0, "name": "0", "path": transformer_path,
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"},
             {"idx": 2, "name": "2", "path": "2_Normalize",
              "type": "sentence_transformers.models.Normalize"}]
  os.makedirs(os.path.join(root, "1_Pooling"), exist_ok=True)
  os.makedirs(os.path.join(root, "2_Normalize"), exist_ok=True)
  with open(os.path.join(root, "modules.json"), "w") as f:
    json.dump(modules, f)
  with open(os.path.join(root, "config_sentence_transformers.json"), "w") as f:
    json.dump({"__version__": {"sentence_transformers": "3.0.1"}, "prompts": {},
               "default_prompt_name": None, "similarity_fn_name": "cosine"}, f)
  with open(os.path.join(root, transformer_path, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": 32, "do_lower_case": False}, f)
  modes = {key: False for key, _ in auto._ST_POOLING_MODES}  # pylint: disable=protected-access
  modes[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pooling]] = True
  with open(os.path.join(root, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": BERT_SIZES["hidden_size"], **modes,
               "include_prompt": True}, f)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A BERT WordPiece tokenizer folder (tokenizer.json, tokenizer_config.json, vocab.txt)."""
  folder = tmp_path_factory.mktemp("tokenizer")
  vocab = folder / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
                             + [f"w{i}" for i in range(93)]) + "\n")
  transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
  return folder


@pytest.fixture(scope="module")
def bert_layouts(tmp_path_factory):
  """name -> (folder, PyTorch model) for every BERT-family layout, saved once."""
  root = tmp_path_factory.mktemp("bert_layouts")
  labels = dict(num_labels=3, id2label=dict(enumerate(LABELS)),
                label2id={name: i for i, name in enumerate(LABELS)})
  models = {
      "BertModel": _bert_family("bert", "BertModel"),
      "BertForPreTraining": _bert_family("bert", "BertForPreTraining"),
      "BertForMaskedLM": _bert_family("bert", "BertForMaskedLM"),
      "BertForSequenceClassification": _bert_family("bert", "BertForSequenceClassification",
                                                    **labels),
      "RobertaModel": _bert_family("roberta", "RobertaModel"),
      "RobertaForMaskedLM": _bert_family("roberta", "RobertaForMaskedLM"),
      "RobertaForSequenceClassification": _bert_family(
          "roberta", "RobertaForSequenceClassification", num_labels=2),
      "XLMRobertaModel": _bert_family("xlm-roberta", "XLMRobertaModel"),
  }
  layouts = {}
  for name, model in models.items():
    model.save_pretrained(root / name)
    layouts[name] = (str(root / name), model)
  # sentence-transformers: the BertModel at the root (mean pooling) and in 0_Transformer (cls).
  shutil.copytree(root / "BertModel", root / "st_root")
  _write_sentence_transformers(root / "st_root", "", "mean")
  shutil.copytree(root / "BertModel", root / "st_nested" / "0_Transformer")
  _write_sentence_transformers(root / "st_nested", "0_Transformer", "cls")
  layouts["st_root"] = (str(root / "st_root"), models["BertModel"])
  layouts["st_nested"] = (str(root / "st_nested"), models["BertModel"])
  return layouts


@pytest.fixture(scope="module")
def t5_layouts(tmp_path_factory):
  """name -> (folder, PyTorch model) of every T5-family layout, saved once."""
  root = tmp_path_factory.mktemp("t5_layouts")
  layouts = {}
  for name, (config_cls, model_cls, extra) in T5_LAYOUTS.items():
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**T5_SIZES, **extra})).eval()
    with torch.no_grad():
      for param_name, param in model.named_parameters():
        if "layer_norm" in param_name:
          param.copy_(torch.randn_like(param))
      if not extra["tie_word_embeddings"] and hasattr(model, "lm_head"):
        vocab, width = model.lm_head.weight.shape  # An output projection of its own.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, width) * width**-0.5)
    model.save_pretrained(root / name)
    layouts[name] = (str(root / name), model)
  return layouts


# --- running both sides ---------------------------------------------------------------------


def bert_inputs(config: EncoderConfig, length: int = 16):
  """Two rows, the second right-padded from 3/4 of the length, and token types."""
  rng = np.random.RandomState(0)
  ids = rng.randint(5, config.vocab_size, (2, length)).astype(np.int32)
  ids[1, 3 * length // 4:] = config.pad_id
  types = rng.randint(0, config.num_token_types, ids.shape).astype(np.int32)
  return ids, types, ids != config.pad_id


def hf_run(model, ids, types, pad_id):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(ids != pad_id, dtype=torch.long),
                 token_type_ids=torch.tensor(types, dtype=torch.long))


@functools.lru_cache(maxsize=None)
def lmlab_bert(config: EncoderConfig, kind: str, num_classes: int = 0):
  """Jitted ``(params, ids, types) -> outputs`` of the lmlab network of ``kind``."""
  if kind == "hidden":
    model = Encoder(config)
    return jax.jit(lambda p, ids, t: model.apply({"params": p["encoder"]}, ids, token_type_ids=t))
  if kind == "mlm":
    model = EncoderForMaskedLM(config)
  else:
    model = EncoderForSequenceClassification(config, num_classes, pooling="cls")
  return jax.jit(lambda p, ids, t: model.apply({"params": p}, ids, token_type_ids=t))


def pooled(params, hidden):
  """lmlab's cls pooler ``tanh(h_0 W + b)`` (what Hugging Face calls pooler_output)."""
  pooler = params["pooler"]
  return np.tanh(np.asarray(hidden)[:, 0] @ pooler["kernel"] + pooler["bias"])


def t5_batch(vocab_size: int):
  rng = np.random.RandomState(1)
  enc = rng.randint(2, vocab_size, (2, 20)).astype(np.int32)
  enc[1, 14:] = 0
  dec = rng.randint(2, vocab_size, (2, 12)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


@functools.lru_cache(maxsize=None)
def lmlab_t5(config: T5Config, decoder: bool):
  model = EncoderDecoder(config)

  @jax.jit
  def forward(params, enc, dec):
    encoded, _ = model.apply({"params": params}, enc, method="encode")
    logits = model.apply({"params": params}, enc, dec)[0] if decoder else None
    return encoded, logits

  return forward


def hf_t5_run(model, enc, dec):
  """(encoder states, logits or None) of a Hugging Face T5 (or T5 encoder)."""
  with torch.no_grad():
    mask = torch.tensor(enc != 0, dtype=torch.long)
    if isinstance(model, (transformers.T5EncoderModel, transformers.MT5EncoderModel)):
      return model(input_ids=torch.tensor(enc, dtype=torch.long),
                   attention_mask=mask).last_hidden_state.numpy(), None
    out = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=mask,
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


# --- BERT family ----------------------------------------------------------------------------

EXPECTED_BERT = {  # name -> (model_type, architecture, heads, missing)
    "BertModel": ("bert", "BertModel", ("pooler",), ("mlm_head",)),
    "BertForPreTraining": ("bert", "BertForPreTraining", ("mlm_head", "pooler"), ()),
    "BertForMaskedLM": ("bert", "BertForMaskedLM", ("mlm_head",), ("pooler",)),
    "BertForSequenceClassification": ("bert", "BertForSequenceClassification",
                                      ("pooler", "classifier"), ("mlm_head",)),
    "RobertaModel": ("roberta", "RobertaModel", ("pooler",), ("mlm_head",)),
    "RobertaForMaskedLM": ("roberta", "RobertaForMaskedLM", ("mlm_head",), ("pooler",)),
    "RobertaForSequenceClassification": ("roberta", "RobertaForSequenceClassification",
                                         ("pooler", "classifier"), ("mlm_head",)),
    "XLMRobertaModel": ("xlm-roberta", "XLMRobertaModel", ("pooler",), ("mlm_head",)),
    "st_root": ("bert", "sentence-transformers/BertModel", ("pooler",), ("mlm_head",)),
    "st_nested": ("bert", "sentence-transformers/BertModel", ("pooler",), ("mlm_head",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_BERT))
def test_bert_family_layout_matches_pytorch(bert_layouts, name):
  folder, hf = bert_layouts[name]
  assert auto.is_hf_folder(folder)
  checkpoint = auto.load_hf_checkpoint(folder)
  model_type, architecture, heads, missing = EXPECTED_BERT[name]
  assert (checkpoint.family, checkpoint.model_type, checkpoint.architecture) == (
      "bert", model_type, architecture)
  assert (checkpoint.heads, checkpoint.missing) == (heads, missing)
  assert set(checkpoint.params) == {"encoder", *heads}
  config, params = checkpoint.network, checkpoint.params
  ids, types, valid = bert_inputs(config)
  out = hf_run(hf, ids, types, config.pad_id)
  if "classifier" in heads:
    logits = lmlab_bert(config, "classifier", len(hf.config.id2label))(params, ids, types)
    assert _max_error(name, logits, out.logits.numpy()) <= TOLERANCE
  elif "mlm_head" in heads:
    logits = np.asarray(lmlab_bert(config, "mlm")(params, ids, types))
    want = out.prediction_logits if name == "BertForPreTraining" else out.logits
    assert _max_error(name, logits[valid], want.numpy()[valid]) <= TOLERANCE
  else:
    hidden = np.asarray(lmlab_bert(config, "hidden")(params, ids, types))
    assert _max_error(name, hidden[valid], out.last_hidden_state.numpy()[valid]) <= TOLERANCE
  if "pooler" in heads and "classifier" not in heads:
    hidden = lmlab_bert(config, "hidden")(params, ids, types)
    base = hf.bert if name == "BertForPreTraining" else hf
    want = hf_run(base, ids, types, config.pad_id).pooler_output.numpy()
    assert _max_error(name, pooled(params, hidden), want) <= TOLERANCE


def test_reported_extras(bert_layouts):
  """Class names, pooling, dropped parts and the folder of each kind of checkpoint."""
  classifier = auto.load_hf_checkpoint(bert_layouts["BertForSequenceClassification"][0])
  assert classifier.label_names == LABELS and classifier.pooling == "cls"
  # RobertaForSequenceClassification was built with generic LABEL_<i> names.
  assert auto.load_hf_checkpoint(
      bert_layouts["RobertaForSequenceClassification"][0]).label_names is None
  pretraining = auto.load_hf_checkpoint(bert_layouts["BertForPreTraining"][0])
  assert pretraining.dropped == ("cls.seq_relationship",)
  nested = auto.load_hf_checkpoint(bert_layouts["st_nested"][0])
  assert nested.pooling == "cls" and nested.dropped == ("2_Normalize",)
  assert nested.folder == os.path.join(bert_layouts["st_nested"][0], "0_Transformer")
  assert nested.hf_config["model_type"] == "bert"
  at_root = auto.load_hf_checkpoint(bert_layouts["st_root"][0])
  assert at_root.pooling == "mean" and os.path.samefile(at_root.folder, bert_layouts["st_root"][0])


def test_scanned_import_and_export(bert_layouts, tmp_path):
  folder = bert_layouts["BertForMaskedLM"][0]
  flat = auto.load_hf_checkpoint(folder)
  scanned = auto.load_hf_checkpoint(folder, scan_layers=True)
  assert scanned.network == dataclasses.replace(flat.network, scan_layers=True)
  assert scanned.params["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 64)
  auto.export_hf_checkpoint(tmp_path, scanned.network, scanned.params, model_type="bert")
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  original, again = (load_file(os.path.join(f, common.WEIGHTS_FILE)) for f in (folder, tmp_path))
  assert sorted(again) == sorted(original)
  for name, tensor in original.items():
    assert np.array_equal(again[name], tensor), name


# --- T5 family ------------------------------------------------------------------------------

EXPECTED_T5 = {  # name -> (model_type, architecture, tied output, activation)
    "t5_v1_0": ("t5", "T5ForConditionalGeneration", True, "relu"),
    "t5_v1_1": ("t5", "T5ForConditionalGeneration", False, "gated_gelu_tanh"),
    "flan_t5": ("t5", "T5ForConditionalGeneration", False, "gated_gelu_tanh"),
    "mt5": ("mt5", "MT5ForConditionalGeneration", False, "gated_gelu_tanh"),
    "byt5": ("t5", "T5ForConditionalGeneration", False, "gated_gelu_tanh"),
    "t5_encoder": ("t5", "T5EncoderModel", False, "gated_gelu_tanh"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_T5))
def test_t5_family_layout_matches_pytorch(t5_layouts, name):
  folder, hf = t5_layouts[name]
  checkpoint = auto.load_hf_checkpoint(folder)
  model_type, architecture, tied, activation = EXPECTED_T5[name]
  config = checkpoint.network
  assert (checkpoint.family, checkpoint.model_type, checkpoint.architecture) == (
      "t5", model_type, architecture)
  assert (config.tie_word_embeddings, config.mlp_activation) == (tied, activation)
  encoder_only = name == "t5_encoder"
  assert checkpoint.heads == (() if encoder_only else ("decoder", "lm_head"))
  assert checkpoint.missing == (("decoder", "lm_head") if encoder_only else ())
  assert ("decoder" in checkpoint.params) != encoder_only and checkpoint.pooling is None
  enc, dec = t5_batch(config.vocab_size)
  hf_encoded, hf_logits = hf_t5_run(hf, enc, dec)
  encoded, logits = lmlab_t5(config, not encoder_only)(checkpoint.params, enc, dec)
  encoded = np.asarray(encoded)
  assert _max_error(name, encoded[0], hf_encoded[0]) <= TOLERANCE
  assert _max_error(name, encoded[1, :14], hf_encoded[1, :14]) <= TOLERANCE
  if not encoder_only:
    assert _max_error(name, logits, hf_logits) <= TOLERANCE


def test_t5_encoder_grafts_onto_a_fresh_decoder(t5_layouts):
  """An encoder-only import fills the encoder of a full network; the decoder stays fresh."""
  checkpoint = auto.load_hf_checkpoint(t5_layouts["t5_encoder"][0])
  ids = np.ones((1, 4), np.int32)
  fresh = jax.eval_shape(EncoderDecoder(checkpoint.network).init, jax.random.PRNGKey(0), ids, ids)
  grafted, initialised, unused = graft_pretrained(
      fresh["params"], checkpoint.params, required_prefixes=("token_embedder", "encoder"))
  assert unused == []
  assert initialised and all(p.startswith("decoder/") for p in initialised)
  # Boxes (sharding names) are kept; values are the imported ones.
  assert isinstance(grafted["encoder"]["final_norm"]["scale"], nn.Partitioned)
  params = common.flatten(nn.meta.unbox(grafted))
  for path, value in common.flatten(checkpoint.params).items():
    np.testing.assert_array_equal(np.asarray(params[path]), value)
  assert not any(path[0] == "decoder" for path in common.flatten(checkpoint.params))
  with pytest.raises(ValueError, match="shape"):
    graft_pretrained(fresh["params"], {"token_embedder": {"embedding": np.zeros((3, 3), np.float32)}},
                     required_prefixes=("token_embedder",))


# --- BiGS routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", bigs.HEADS)
def test_bigs_reference_folder_is_routed(tmp_path, head):
  config = EncoderConfig(mixer="bigs", vocab_size=50, d_model=16, num_layers=2, num_heads=1,
                         d_ff=24, norm_position="pre", max_positions=32, ssm_state_size=4,
                         dropout_rate=0.0, attention_dropout_rate=0.0)
  shapes = bigs.abstract_bigs_params(config, head, num_classes=2)
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  bigs.save_reference_bigs(tmp_path, config, params, head=head)
  assert auto.is_hf_folder(tmp_path)
  checkpoint = auto.load_hf_checkpoint(tmp_path)
  assert (checkpoint.family, checkpoint.model_type, checkpoint.pooling) == ("bigs", "bigs", "mean")
  assert checkpoint.heads == (("mlm_head",) if head == "mlm" else ("pooler", "classifier"))
  assert checkpoint.architecture == bigs.ARCHITECTURES[head]
  flat = common.flatten(checkpoint.params)
  for path, value in common.flatten(params).items():
    np.testing.assert_array_equal(flat[path], value)
  auto.export_hf_checkpoint(tmp_path / "again", checkpoint.network, checkpoint.params,
                            model_type="BiGS")
  assert bigs.load_reference_bigs(tmp_path / "again").head == head


# --- export round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BertForSequenceClassification",
                                  "RobertaForSequenceClassification"])
def test_classifier_export_loads_with_auto_class(bert_layouts, tokenizer_dir, tmp_path, name):
  """lmlab -> folder -> AutoModelForSequenceClassification: same logits, labels, tokenizer."""
  checkpoint = auto.load_hf_checkpoint(bert_layouts[name][0])
  num_classes = checkpoint.params["classifier"]["kernel"].shape[-1]
  labels = LABELS[:num_classes] if num_classes < 3 else ("a", "b", "c")
  auto.export_hf_checkpoint(tmp_path, checkpoint.network, checkpoint.params,
                            model_type=checkpoint.model_type, hf_config=checkpoint.hf_config,
                            label_names=labels, tokenizer_dir=tokenizer_dir)
  reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path, output_loading_info=True)
  assert type(reloaded).__name__ == name and not info["missing_keys"]
  assert not info["unexpected_keys"]
  assert reloaded.config.id2label == dict(enumerate(labels))
  config = checkpoint.network
  ids, types, _ = bert_inputs(config)
  want = lmlab_bert(config, "classifier", num_classes)(checkpoint.params, ids, types)
  got = hf_run(reloaded.eval(), ids, types, config.pad_id).logits.numpy()
  assert _max_error(f"export {name}", got, want) <= TOLERANCE
  for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
    assert (tmp_path / file).read_bytes() == (tokenizer_dir / file).read_bytes()
  tokenize = lambda folder: transformers.AutoTokenizer.from_pretrained(folder)("hello w7")
  assert tokenize(tmp_path)["input_ids"] == tokenize(tokenizer_dir)["input_ids"]
  assert auto.load_hf_checkpoint(tmp_path).label_names == labels


def test_mlm_import_fine_tuned_exports_as_classifier(bert_layouts, tmp_path):
  """RobertaForMaskedLM -> graft onto a fresh classifier -> RobertaForSequenceClassification."""
  checkpoint = auto.load_hf_checkpoint(bert_layouts["RobertaForMaskedLM"][0])
  config = checkpoint.network
  model = EncoderForSequenceClassification(config, 2, pooling=checkpoint.pooling)
  grafted, initialised, unused = graft_pretrained(
      random_params(model, np.ones((1, 4), np.int32)), checkpoint.params,
      required_prefixes=("encoder",))
  assert {p.split("/")[0] for p in initialised} == {"pooler", "classifier"}
  assert {p.split("/")[0] for p in unused} == {"mlm_head"}
  auto.export_hf_checkpoint(tmp_path, config, grafted, model_type="roberta",
                            hf_config=checkpoint.hf_config)
  reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path, output_loading_info=True)
  assert type(reloaded) is transformers.RobertaForSequenceClassification
  assert not info["missing_keys"] and not info["unexpected_keys"]
  ids, types, _ = bert_inputs(config)
  want = lmlab_bert(config, "classifier", 2)(grafted, ids, types)
  got = hf_run(reloaded.eval(), ids, types, config.pad_id).logits.numpy()
  assert _max_error("export RobertaForSequenceClassification (grafted)", got, want) <= TOLERANCE


@pytest.mark.parametrize("name", ["t5_v1_1", "mt5", "t5_encoder"])
def test_t5_export_loads_with_from_pretrained(t5_layouts, tmp_path, name):
  checkpoint = auto.load_hf_checkpoint(t5_layouts[name][0])
  auto.export_hf_checkpoint(tmp_path, checkpoint.network, checkpoint.params,
                            model_type=checkpoint.model_type, hf_config=checkpoint.hf_config)
  cls = {"t5_v1_1": transformers.T5ForConditionalGeneration,
         "mt5": transformers.MT5ForConditionalGeneration,
         "t5_encoder": transformers.T5EncoderModel}[name]
  assert common.read_hf_config(tmp_path)["architectures"] == [cls.__name__]
  reloaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  config = checkpoint.network
  enc, dec = t5_batch(config.vocab_size)
  encoded, logits = hf_t5_run(reloaded.eval(), enc, dec)
  want_encoded, want_logits = lmlab_t5(config, name != "t5_encoder")(checkpoint.params, enc, dec)
  assert _max_error(f"export {name}", encoded[0], want_encoded[0]) <= TOLERANCE
  if logits is not None:
    assert _max_error(f"export {name}", logits, want_logits) <= TOLERANCE
  again = auto.load_hf_checkpoint(tmp_path)
  assert (again.model_type, again.architecture) == (checkpoint.model_type,
                                                    checkpoint.architecture)
  assert again.network == config


# --- CLI --------------------------------------------------------------------------------------


def test_cli_auto_import_and_export_with_tokenizer(bert_layouts, tokenizer_dir, tmp_path):
  params = str(tmp_path / "st.npz")
  assert convert_main(["import", "--family", "auto", "--hf_dir", bert_layouts["st_nested"][0],
                       "--output", params]) == 0
  sidecar = json.loads((tmp_path / "st.config.json").read_text())
  assert sidecar["family"] == "bert"
  assert sidecar["architecture"] == "sentence-transformers/BertModel"
  assert sidecar["pooling"] == "cls" and sidecar["missing"] == ["mlm_head"]
  assert convert_main(["export", "--params", params, "--hf_dir", str(tmp_path / "out"),
                       "--tokenizer_dir", str(tokenizer_dir)]) == 0
  assert (tmp_path / "out" / "tokenizer.json").exists()
  reloaded = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
  original = bert_layouts["st_nested"][1]
  for key, tensor in original.state_dict().items():
    assert torch.equal(reloaded.state_dict()[key], tensor), key
  # A family that does not match is refused with exit status 2.
  assert convert_main(["import", "--family", "t5", "--hf_dir", bert_layouts["BertModel"][0],
                       "--output", str(tmp_path / "wrong.npz")]) == 2


def test_cli_export_label_names(bert_layouts, tmp_path):
  params = str(tmp_path / "c.msgpack")
  assert convert_main(["import", "--hf_dir", bert_layouts["BertForSequenceClassification"][0],
                       "--output", params]) == 0
  assert convert_main(["export", "--params", params, "--hf_dir", str(tmp_path / "kept")]) == 0
  assert common.read_hf_config(tmp_path / "kept")["id2label"] == dict(
      (str(i), name) for i, name in enumerate(LABELS))
  assert convert_main(["export", "--params", params, "--hf_dir", str(tmp_path / "renamed"),
                       "--label_names", "x, y, z"]) == 0
  assert common.read_hf_config(tmp_path / "renamed")["label2id"] == {"x": 0, "y": 1, "z": 2}
  assert convert_main(["export", "--params", params, "--hf_dir", str(tmp_path / "bad"),
                       "--label_names", "x,y"]) == 2


# --- errors -------------------------------------------------------------------------------------


def _config_only(folder, **config) -> str:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  return str(folder)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_unknown_model_type_is_named(tmp_path, model_type):
  folder = _config_only(tmp_path, model_type=model_type)
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(ConversionError, match=rf"model_type='{model_type}'.*'bert'.*'t5'.*'bigs'"):
    auto.load_hf_checkpoint(folder)
  with pytest.raises(ConversionError, match=model_type):
    auto.export_hf_checkpoint(tmp_path / "out", T5Config(vocab_size=8), {},
                              model_type=model_type)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    auto.load_hf_checkpoint(tmp_path / "nowhere")
  os.makedirs(tmp_path / "empty")
  assert not auto.is_hf_folder(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"No config\.json.*model\.safetensors"):
    auto.load_hf_checkpoint(tmp_path / "empty")
  folder = _config_only(tmp_path / "no_weights", model_type="bert")
  assert not auto.is_hf_folder(folder)
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*index\.json"):
    auto.load_hf_checkpoint(folder)
  assert not auto.is_hf_folder(tmp_path / "nowhere")
  assert not auto.is_hf_folder(os.path.join(folder, "config.json"))


def test_pytorch_bin_only_says_how_to_convert(tmp_path):
  folder = _config_only(tmp_path, model_type="bert", architectures=["BertForMaskedLM"])
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  assert auto.is_hf_folder(folder)  # So that callers hand it over and get the advice below.
  with pytest.raises(ConversionError, match=r"pytorch_model\.bin.*safetensors.*"
                     r"transformers\.BertForMaskedLM\.from_pretrained.*save_pretrained"):
    auto.load_hf_checkpoint(folder)


def test_export_refuses_what_does_not_fit(bert_layouts, tokenizer_dir, tmp_path):
  checkpoint = auto.load_hf_checkpoint(bert_layouts["BertForSequenceClassification"][0])
  args = (tmp_path / "out", checkpoint.network, checkpoint.params)
  with pytest.raises(ConversionError, match="2 label_names for a classifier with 3 outputs"):
    auto.export_hf_checkpoint(*args, model_type="bert", label_names=["a", "b"])
  with pytest.raises(ConversionError, match="needs a T5Config"):
    auto.export_hf_checkpoint(*args, model_type="t5")
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    auto.export_hf_checkpoint(*args, model_type="bert", tokenizer_dir=tmp_path / "none")
  assert not (tmp_path / "out").exists()  # Nothing written before the checks.
  headless = {"encoder": checkpoint.params["encoder"]}
  with pytest.raises(ConversionError, match="no classifier"):
    auto.export_hf_checkpoint(tmp_path / "out", checkpoint.network, headless, model_type="bert",
                              label_names=LABELS)


def test_sharded_safetensors(bert_layouts, tmp_path):
  """A folder saved in shards (model.safetensors.index.json) imports like the single file."""
  _, hf = bert_layouts["BertForMaskedLM"]
  hf.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / common.WEIGHTS_INDEX_FILE).exists() and auto.is_hf_folder(tmp_path)
  sharded = common.flatten(auto.load_hf_checkpoint(tmp_path).params)
  single = common.flatten(auto.load_hf_checkpoint(bert_layouts["BertForMaskedLM"][0]).params)
  assert sorted(sharded) == sorted(single)
  for path, value in single.items():
    np.testing.assert_array_equal(sharded[path], value)
