"""The analytic model FLOPs (MFU's numerator) agree with XLA's count of the compiled forward pass.

For each family the wrapper's ``forward_flops`` is compared with
``cost_analysis()["flops"]`` of the jitted forward-and-loss computation, at
widths where matmuls dominate as they do at real sizes (XLA also counts
norms, activations, softmax and the loss, which the analytic count leaves
out by convention): they must agree within 10%. XLA's count of the lowered
(unoptimised) module is used, so nothing is compiled.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import numpy as np
import pytest
from testlib import mlm_batch

from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.wrappers.classification import ClassificationModel
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel

ROWS, LENGTH = 2, 128
ENCODER = EncoderConfig(vocab_size=1024, d_model=256, num_layers=1, num_heads=4, d_ff=1024,
                        max_positions=LENGTH, dropout_rate=0.0, attention_dropout_rate=0.0)
T5 = T5Config(vocab_size=1024, d_model=256, num_heads=4, head_dim=64, d_ff=1024,
              num_encoder_layers=1, num_decoder_layers=1)
Spec = collections.namedtuple("Spec", "kind num_classes")


def _xla_flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


def assert_flops_match_xla(model, batch):
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ROWS, LENGTH))
  xla = _xla_flops(lambda p, b: model.loss_sums(p, b)["loss_sum"], params, batch)
  analytic = model.forward_flops({k: np.shape(v) for k, v in batch.items()})
  assert analytic == pytest.approx(xla, rel=0.10), (analytic, xla)
  assert model.train_flops({k: np.shape(v) for k, v in batch.items()}) == 3 * analytic


@pytest.mark.parametrize("variant", ["full_head", "gathered_head", "gated_rmsnorm", "bigs"])
def test_masked_lm_flops_match_xla(variant):
  config, fraction = ENCODER, None
  if variant == "gathered_head":
    fraction = 0.2
  elif variant == "gated_rmsnorm":
    config = dataclasses.replace(config, mlp_activation="gated_gelu", norm_type="rmsnorm",
                                 position_scheme="rope", tie_output_embedding=False)
  elif variant == "bigs":
    config = dataclasses.replace(config, mixer="bigs", position_scheme="learned")
  batch = mlm_batch(0, rows=ROWS, length=LENGTH, vocab=1024)
  assert_flops_match_xla(MaskedLMModel(config, max_prediction_fraction=fraction), batch)


def test_t5_flops_match_xla():
  rows, enc_len, dec_len = ROWS, LENGTH, 32
  rng = np.random.RandomState(0)
  ids = lambda n: rng.randint(2, 1024, (rows, n)).astype(np.int32)
  ones = lambda n: np.ones((rows, n), np.int32)
  positions = lambda n: np.tile(np.arange(n, dtype=np.int32), (rows, 1))
  batch = {"encoder_input_tokens": ids(enc_len), "encoder_segment_ids": ones(enc_len),
           "encoder_positions": positions(enc_len), "decoder_input_tokens": ids(dec_len),
           "decoder_target_tokens": ids(dec_len),
           "decoder_loss_weights": ones(dec_len).astype(np.float32),
           "decoder_segment_ids": ones(dec_len), "decoder_positions": positions(dec_len)}
  assert_flops_match_xla(EncoderDecoderModel(T5, z_loss=0.0), batch)


@pytest.mark.parametrize("family", ["encoder", "enct5"])
def test_classifier_flops_match_xla(family):
  config = ENCODER if family == "encoder" else dataclasses.replace(T5, num_decoder_layers=1)
  model = ClassificationModel(config, Spec("classification", 3))
  batch = {"input_ids": np.full((ROWS, LENGTH), 5, np.int32),
           "token_type_ids": np.zeros((ROWS, LENGTH), np.int32),
           "segment_ids": np.ones((ROWS, LENGTH), np.int32),
           "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (ROWS, 1)),
           "label": np.zeros((ROWS,), np.int32), "weight": np.ones((ROWS,), np.float32)}
  assert_flops_match_xla(model, batch)
