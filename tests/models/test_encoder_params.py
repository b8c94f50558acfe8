"""Parameter metadata, golden shapes and parameter counts of the encoder models.

Shapes are obtained with ``jax.eval_shape`` so no weights are materialised,
which keeps even the BERT-base count instant.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.models import EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification

ALLOWED_AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "token_types",
                "positions"}
TINY = EncoderConfig(vocab_size=128, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                     max_positions=16, dropout_rate=0.0, attention_dropout_rate=0.0)
VARIANTS = {
    "post_layernorm_learned": {},
    "pre_rmsnorm_rope_gated": dict(norm_position="pre", norm_type="rmsnorm",
                                   position_scheme="rope", mlp_activation="gated_silu"),
    "alibi_gated_gelu_untied": dict(position_scheme="alibi", mlp_activation="gated_gelu",
                                    tie_output_embedding=False),
    "crammed_no_bias": dict(norm_position="pre", mlp_activation="gated_gelu", use_bias=False,
                            num_token_types=0),
    "rmsnorm_relu_no_embedding_norm_untied_no_bias": dict(
        norm_type="rmsnorm", mlp_activation="relu", embedding_norm=False,
        tie_output_embedding=False, use_bias=False),
}


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def _abstract_params(module: nn.Module, length: int = 8):
  ids = jnp.ones((2, length), jnp.int32)
  return jax.eval_shape(lambda rng: module.init(rng, ids), jax.random.key(0))["params"]


def _boxes(tree) -> dict[str, nn.LogicallyPartitioned]:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]
  return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
  return {path: tuple(box.value.shape) for path, box in _boxes(_abstract_params(module)).items()}


def _models(cfg: EncoderConfig):
  return [EncoderForMaskedLM(cfg), EncoderForSequenceClassification(cfg, 3, pooling="mean"),
          EncoderForSequenceClassification(cfg, 2, pooling="cls")]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_has_logical_axis_names(variant):
  cfg = dataclasses.replace(TINY, **VARIANTS[variant])
  for model in _models(cfg):
    for path, leaf in _boxes(_abstract_params(model)).items():
      assert _is_box(leaf), f"{path} is not LogicallyPartitioned"
      assert len(leaf.names) == len(leaf.value.shape), (path, leaf.names, leaf.value.shape)
      # None (replicated) is used only for the tiny num_classes axis of the classifier.
      named = {n for n in leaf.names if n is not None}
      assert named <= ALLOWED_AXES, (path, leaf.names)
      if None in leaf.names:
        assert path.startswith("classifier/"), (path, leaf.names)


def test_golden_parameter_shapes_post_ln_bert():
  shapes = _shapes(EncoderForMaskedLM(dataclasses.replace(TINY, num_layers=1)))
  layer = "encoder/layers_0"
  want = {
      "encoder/embeddings/token_embedder/embedding": (128, 16),
      "encoder/embeddings/position_embedder/embedding": (16, 16),
      "encoder/embeddings/token_type_embedder/embedding": (2, 16),
      "encoder/embeddings/norm/scale": (16,),
      "encoder/embeddings/norm/bias": (16,),
      f"{layer}/attention/query/kernel": (16, 2, 8),
      f"{layer}/attention/query/bias": (2, 8),
      f"{layer}/attention/key/kernel": (16, 2, 8),
      f"{layer}/attention/key/bias": (2, 8),
      f"{layer}/attention/value/kernel": (16, 2, 8),
      f"{layer}/attention/value/bias": (2, 8),
      f"{layer}/attention/out/kernel": (2, 8, 16),
      f"{layer}/attention/out/bias": (16,),
      f"{layer}/attention_norm/scale": (16,),
      f"{layer}/attention_norm/bias": (16,),
      f"{layer}/mlp/wi/kernel": (16, 32),
      f"{layer}/mlp/wi/bias": (32,),
      f"{layer}/mlp/wo/kernel": (32, 16),
      f"{layer}/mlp/wo/bias": (16,),
      f"{layer}/mlp_norm/scale": (16,),
      f"{layer}/mlp_norm/bias": (16,),
      "mlm_head/transform/kernel": (16, 16),
      "mlm_head/transform/bias": (16,),
      "mlm_head/norm/scale": (16,),
      "mlm_head/norm/bias": (16,),
      "mlm_head/bias": (128,),
  }
  assert shapes == want


def test_golden_parameter_shapes_crammed_classifier():
  cfg = dataclasses.replace(TINY, num_layers=1, **VARIANTS["crammed_no_bias"])
  shapes = _shapes(EncoderForSequenceClassification(cfg, num_classes=3))
  layer = "encoder/layers_0"
  want = {
      "encoder/embeddings/token_embedder/embedding": (128, 16),
      "encoder/embeddings/position_embedder/embedding": (16, 16),
      "encoder/embeddings/norm/scale": (16,),
      f"{layer}/attention/query/kernel": (16, 2, 8),
      f"{layer}/attention/key/kernel": (16, 2, 8),
      f"{layer}/attention/value/kernel": (16, 2, 8),
      f"{layer}/attention/out/kernel": (2, 8, 16),
      f"{layer}/attention_norm/scale": (16,),
      f"{layer}/mlp/wi_0/kernel": (16, 32),
      f"{layer}/mlp/wi_1/kernel": (16, 32),
      f"{layer}/mlp/wo/kernel": (32, 16),
      f"{layer}/mlp_norm/scale": (16,),
      "encoder/final_norm/scale": (16,),
      "pooler/kernel": (16, 16),
      "classifier/kernel": (16, 3),
  }
  assert shapes == want


def test_untied_decoder_and_rope_alibi_have_no_position_table():
  cfg = dataclasses.replace(TINY, tie_output_embedding=False, position_scheme="rope")
  shapes = _shapes(EncoderForMaskedLM(cfg))
  assert shapes["mlm_head/decoder/kernel"] == (16, 128)
  assert shapes["mlm_head/decoder/bias"] == (128,)
  assert "mlm_head/bias" not in shapes
  assert not any("position_embedder" in path for path in shapes)


def test_bert_base_parameter_count_matches_huggingface():
  # HF BertForMaskedLM(bert-base-uncased) has 109,514,298 parameters: the
  # encoder (no pooler), the MLM transform dense + LayerNorm, and a decoder
  # tied to the word embeddings plus a 30522-wide bias. Our layout is the same
  # tensor for tensor (q/k/v kernels are [768, 12, 64] instead of [768, 768]),
  # so the counts must agree exactly.
  cfg = EncoderConfig(vocab_size=30522, max_positions=512, num_token_types=2,
                      tie_output_embedding=True)
  params = _abstract_params(EncoderForMaskedLM(cfg), length=16)
  total = sum(int(np.prod(box.value.shape)) for box in _boxes(params).values())
  assert total == 109_514_298


def test_missing_vocab_size_asks_for_with_vocab_size():
  cfg = dataclasses.replace(TINY, vocab_size=None)
  with pytest.raises(ValueError, match="with_vocab_size"):
    _abstract_params(EncoderForMaskedLM(cfg))
  params = _abstract_params(EncoderForMaskedLM(cfg.with_vocab_size(100)))
  assert params["mlm_head"]["bias"].value.shape == (128,)
