"""Hugging Face T5 <-> lmlab EncoderDecoder conversion: parity, round trips, errors."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from lmlab.convert import ConversionError, common, hf_t5
from lmlab.convert.__main__ import main as convert_main
from lmlab.models.encoder_decoder import EncoderDecoder

# Tiny versions of the three released layouts.
HF_CONFIGS = {
    "t5_v1_1": dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                    num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False),
    "byt5": dict(vocab_size=384, d_model=48, d_kv=8, d_ff=96, num_layers=3,
                 num_decoder_layers=1, num_heads=4, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False),
    "t5_v1_0": dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    feed_forward_proj="relu", tie_word_embeddings=True),
}
# Longer than max_distance (128), so the far log-scale buckets are used.
ENCODER_LENGTH, DECODER_LENGTH, PADDED_FROM = 150, 140, 100
TOLERANCE = 1e-4
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_hf_t5(name: str, seed: int = 0, **overrides):
  """A random T5 in eval mode with random norm scales.

  Random (sign-mixed) scales make a mixed-up norm show up, and they keep the
  tied v1.0 model from greedily repeating its input token forever, which
  would make the decoding comparison vacuous.
  """
  torch.manual_seed(seed)
  kwargs = dict(HF_CONFIGS[name], dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                eos_token_id=1, **overrides)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs)).eval()
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if "layer_norm" in param_name:
        param.copy_(torch.randn_like(param))
    if not kwargs["tie_word_embeddings"]:
      # transformers 5 ties lm_head to the embedding even for v1.1; give it its own weights.
      vocab, width = model.lm_head.weight.shape
      model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, width) * width**-0.5)
  return model


def state_of(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def case(request):
  """(name, hf model, hf state dict, lmlab config, lmlab params) of one layout."""
  hf = make_hf_t5(request.param)
  state = state_of(hf)
  config = hf_t5.t5_config_from_hf(hf.config.to_dict())
  return request.param, hf, state, config, hf_t5.params_from_hf(state, config)


def batch(vocab_size: int):
  rng = np.random.RandomState(1)
  enc = rng.randint(2, vocab_size, (2, ENCODER_LENGTH)).astype(np.int32)
  enc[1, PADDED_FROM:] = 0
  dec = rng.randint(2, vocab_size, (2, DECODER_LENGTH)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


def hf_forward(hf, enc, dec):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(enc, dtype=torch.long),
             attention_mask=torch.tensor(enc != 0, dtype=torch.long),
             decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


@functools.lru_cache(maxsize=None)
def lmlab_forward(config):
  """Jitted ``(params, enc, dec) -> (encoder output, logits)`` of the lmlab network."""
  model = EncoderDecoder(config)

  @jax.jit
  def forward(params, enc, dec):
    encoded, _ = model.apply({"params": params}, enc, method="encode")
    logits, _ = model.apply({"params": params}, enc, dec)
    return encoded, logits

  return forward


def test_config_mapping(case):
  name, hf, _, config, _ = case
  hf_config = hf.config
  assert config.vocab_size == hf_config.vocab_size and config.vocab_multiple == 1
  assert (config.d_model, config.head_dim, config.d_ff, config.num_heads) == (
      hf_config.d_model, hf_config.d_kv, hf_config.d_ff, hf_config.num_heads)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (
      hf_config.num_layers, hf_config.num_decoder_layers)
  assert config.mlp_activation == ("relu" if name == "t5_v1_0" else "gated_gelu_tanh")
  assert config.tie_word_embeddings == (name == "t5_v1_0")
  assert hf_t5.t5_config_from_hf(hf_t5.t5_config_to_hf(config)) == config
  kept = hf_t5.t5_config_to_hf(config, base={"tokenizer_class": "T5Tokenizer", "d_model": 7})
  assert kept["tokenizer_class"] == "T5Tokenizer" and kept["d_model"] == config.d_model


def test_params_match_lmlab_init_tree(case):
  *_, config, params = case
  expected = common.flatten(hf_t5.abstract_t5_params(config))
  flat = common.flatten(params)
  assert list(sorted(flat)) == list(sorted(expected))
  for path, spec in expected.items():
    assert flat[path].shape == spec.shape and flat[path].dtype == np.float32, path


def test_encoder_outputs_and_logits_match(case):
  _, hf, _, config, params = case
  enc, dec = batch(config.vocab_size)
  hf_encoded, hf_logits = hf_forward(hf, enc, dec)
  encoded, logits = (np.asarray(x) for x in lmlab_forward(config)(params, enc, dec))
  assert np.abs(encoded[0] - hf_encoded[0]).max() <= TOLERANCE
  assert np.abs(encoded[1, :PADDED_FROM] - hf_encoded[1, :PADDED_FROM]).max() <= TOLERANCE
  assert np.abs(logits - hf_logits).max() <= TOLERANCE


def test_export_reproduces_state_dict(case):
  _, _, state, config, params = case
  exported = hf_t5.params_to_hf(params, config)
  assert sorted(exported) == sorted(state)
  for name, tensor in state.items():
    assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name


def test_save_then_from_pretrained(case, tmp_path):
  _, hf, state, config, params = case
  hf_t5.save_hf_t5(tmp_path, config, params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  for name, tensor in state_of(reloaded).items():
    assert np.array_equal(tensor, state[name]), name
  enc, dec = batch(config.vocab_size)
  np.testing.assert_array_equal(hf_forward(reloaded, enc, dec)[1], hf_forward(hf, enc, dec)[1])
  # And back through the folder reader.
  config_again, params_again = hf_t5.load_hf_t5(tmp_path)
  assert config_again == config
  for path, value in common.flatten(params).items():
    assert np.array_equal(common.flatten(params_again)[path], value), path


def test_greedy_decoding_matches_generate(case):
  decoding = pytest.importorskip("lmlab.wrappers.decoding", reason="lmlab.wrappers.decoding is not written yet")
  _, hf, _, config, params = case
  steps = 12
  enc, _ = batch(config.vocab_size)
  enc = enc[:, :40].copy()
  enc[1, 25:] = 0
  mask = torch.tensor(enc != 0, dtype=torch.long)
  with torch.no_grad():
    free_run = hf.generate(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=mask,
                           do_sample=False, num_beams=1, max_new_tokens=steps,
                           eos_token_id=None).numpy()
  # A token that row 1 first emits at step 3 or later becomes EOS, so that row
  # stops early (the other usually runs on to the length limit).
  emitted = [int(t) for t in free_run[1, 1:]]
  eos_id = next((t for i, t in enumerate(emitted) if i >= 2 and t not in emitted[:i] and t != 0),
                config.eos_id)
  with torch.no_grad():
    expected = hf.generate(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=mask,
                           do_sample=False, num_beams=1, max_new_tokens=steps,
                           eos_token_id=eos_id, pad_token_id=0).numpy()[:, 1:]

  model = EncoderDecoder(config)

  @jax.jit
  def decode(params, enc):
    variables = {"params": params}
    encoded, gate = model.apply(variables, enc, method="encode")
    segment_ids = jnp.asarray(enc != config.pad_id, jnp.int32)
    cache = model.apply(variables, encoded, segment_ids, gate, steps, method="init_cache")

    def tokens_to_logits(ids, cache, position):
      return model.apply(variables, ids, cache, position, method="decode_step")

    return decoding.greedy_decode(tokens_to_logits, cache, batch_size=enc.shape[0],
                                  max_decode_length=steps, eos_id=eos_id, start_id=0)

  result = decode(params, enc)
  tokens = np.asarray(result.tokens)
  for row in range(2):
    want = list(expected[row])
    if eos_id in want:
      want = want[:want.index(eos_id) + 1]
    assert list(tokens[row, :len(want)]) == want, row
    assert int(result.lengths[row]) == len(want), row


def test_transformers5_tied_unscaled_file(tmp_path):
  """A v1.1 model saved by transformers 5 has no lm_head.weight: the embedding is used."""
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
      **HF_CONFIGS["t5_v1_1"], dropout_rate=0.0)).eval()
  hf.save_pretrained(tmp_path)
  config, params = hf_t5.load_hf_t5(tmp_path)
  assert not config.tie_word_embeddings
  if "lm_head.weight" not in common.read_hf_folder(tmp_path)[1]:  # transformers >= 5
    np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                  params["token_embedder"]["embedding"].T)
  enc, dec = batch(config.vocab_size)
  _, logits = lmlab_forward(config)(params, enc, dec)
  assert np.abs(np.asarray(logits) - hf_forward(hf, enc, dec)[1]).max() <= TOLERANCE


def test_bert_checkpoint_is_refused(tmp_path):
  torch.manual_seed(0)
  bert = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=32))
  config = hf_t5.t5_config_from_hf(make_hf_t5("t5_v1_1").config.to_dict())
  with pytest.raises(ValueError, match=r"'shared\.weight'.*missing"):
    hf_t5.params_from_hf(state_of(bert), config)
  bert.save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="model_type='bert'"):
    hf_t5.load_hf_t5(tmp_path)


def test_other_d_ff_names_first_mismatched_tensor():
  state = state_of(make_hf_t5("t5_v1_1", d_ff=128))
  config = hf_t5.t5_config_from_hf(make_hf_t5("t5_v1_1").config.to_dict())
  with pytest.raises(ConversionError) as error:  # a ValueError
    hf_t5.params_from_hf(state, config)
  message = str(error.value)
  assert "'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'" in message
  assert "(128, 32)" in message and "(64, 32)" in message


def test_other_layer_counts_are_refused():
  small = hf_t5.t5_config_from_hf(make_hf_t5("t5_v1_1").config.to_dict())
  deeper = state_of(make_hf_t5("t5_v1_1", num_layers=3))
  with pytest.raises(ValueError, match=r"unexpected tensor 'encoder\.block\.2\.layer\.0\."):
    hf_t5.params_from_hf(deeper, small)
  with pytest.raises(ValueError,
                     match=r"'encoder\.block\.2\.layer\.0\.SelfAttention\.q\.weight'.*missing"):
    hf_t5.params_from_hf(state_of(make_hf_t5("t5_v1_1")),
                         dataclasses.replace(small, num_encoder_layers=3))


def test_tied_config_with_separate_lm_head_is_refused():
  hf = make_hf_t5("t5_v1_0")
  state = state_of(hf)
  state["lm_head.weight"] = state["lm_head.weight"] + 1.0
  config = hf_t5.t5_config_from_hf(hf.config.to_dict())
  with pytest.raises(ValueError, match="'lm_head.weight' differs from 'shared.weight'"):
    hf_t5.params_from_hf(state, config)


@pytest.mark.parametrize("hf_config, message", [
    ({"model_type": "t5", "feed_forward_proj": "gelu"}, "feed_forward_proj='gelu'"),
    ({"model_type": "umt5"}, "model_type='umt5'"),
])
def test_unsupported_configs(hf_config, message):
  with pytest.raises(ValueError, match=message):
    hf_t5.t5_config_from_hf(hf_config)


def test_mrt5_export_is_refused():
  config = dataclasses.replace(
      hf_t5.t5_config_from_hf(HF_CONFIGS["t5_v1_1"] | {"model_type": "t5"}), delete_gate_layer=1)
  with pytest.raises(ValueError, match="delete gate"):
    hf_t5.t5_config_to_hf(config)


@pytest.mark.parametrize("suffix", [".npz", ".msgpack"])
def test_cli_round_trip(tmp_path, suffix):
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  hf = make_hf_t5("t5_v1_1")
  hf.save_pretrained(tmp_path / "hf")
  params_path = str(tmp_path / f"params{suffix}")
  import_args = ["import", "--family", "t5", "--hf_dir", str(tmp_path / "hf"),
                 "--output", params_path]
  if suffix == ".npz":  # Once as a real `python -m` process.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "lmlab.convert", *import_args], cwd=REPO_ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
  else:
    assert convert_main(import_args) == 0
  assert (tmp_path / "params.config.json").exists()
  assert convert_main(["export", "--family", "t5", "--params", params_path,
                       "--hf_dir", str(tmp_path / "out")]) == 0
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, tensor in original.items():
    assert np.array_equal(exported[name], tensor), name
  assert convert_main(["import", "--family", "bert", "--hf_dir", str(tmp_path / "hf"),
                       "--output", str(tmp_path / "wrong.npz")]) == 2
