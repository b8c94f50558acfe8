"""Task heads on every family learn a fixed batch, ignore padding, and predict in the right form."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from lmlab.wrappers.classification import ClassificationModel
from lmlab.glue.spec import TASKS
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config

ENCODER = EncoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                        max_positions=32, dropout_rate=0.0, attention_dropout_rate=0.0)
CONFIGS = {
    "bert": ENCODER,
    "bigs": dataclasses.replace(ENCODER, mixer="bigs", ssm_state_size=8),
    "enct5": T5Config(vocab_size=64, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                      num_encoder_layers=2, num_decoder_layers=1),
}


def _batch(spec, rows=8, length=12, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 64, (rows, length)).astype(np.int32)
  lengths = rng.randint(5, length + 1, rows)
  real = np.arange(length)[None] < lengths[:, None]
  ids = np.where(real, ids, 0)
  token_types = (np.arange(length)[None] >= (lengths // 2)[:, None]) & real
  if spec.kind == "regression":
    label = rng.uniform(0, 5, rows).astype(np.float32)
  else:
    label = rng.randint(0, max(2, spec.num_classes), rows).astype(np.int32)
  return {"input_ids": ids, "token_type_ids": token_types.astype(np.int32),
          "segment_ids": real.astype(np.int32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)),
          "label": label, "weight": np.ones(rows, np.float32)}


def _fit(model, batch, steps=25, lr=3e-3):
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, 2, 12))(jax.random.PRNGKey(0)))
  optimizer = optax.adam(lr)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    def loss(p):
      sums = model.loss_sums(p, batch)
      return sums["loss_sum"] / sums["weight_sum"]
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for _ in range(steps):
    params, state, value = step(params, state)
    losses.append(float(value))
  return params, losses


# Every family with a classification head, every head kind on one family; the rest: slow.
# (The regression and candidate heads also run end to end in test_finetune_e2e.py.)
_FIT_CASES = [("bert", "glue_mnli"), ("bigs", "glue_mnli"), ("enct5", "glue_mnli")]
_FIT_CASES += [pytest.param(f, t, marks=pytest.mark.slow)
               for f in sorted(CONFIGS) for t in ("glue_stsb", "super_glue_copa")
               if (f, t) not in _FIT_CASES]


@pytest.mark.parametrize("family,task", _FIT_CASES)
def test_head_learns_a_fixed_batch(family, task):
  spec = TASKS[task]
  model = ClassificationModel(CONFIGS[family], spec)
  batch = _batch(spec)
  params, losses = _fit(model, batch)
  assert losses[-1] < 0.5 * losses[0], losses
  predictions = np.asarray(model.predict_batch(params, batch))
  assert predictions.shape == (8,)
  if spec.kind == "classification":
    assert predictions.dtype.kind == "i" and set(predictions) <= set(range(spec.num_classes))
  else:
    assert predictions.dtype.kind == "f"


@pytest.mark.parametrize("family", ["bert", pytest.param("bigs", marks=pytest.mark.slow),
                                    pytest.param("enct5", marks=pytest.mark.slow)])
def test_padding_and_filler_rows_do_not_count(family):
  spec = TASKS["glue_rte"]
  model = ClassificationModel(CONFIGS[family], spec)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), 2, 12))
  batch = _batch(spec, rows=4)
  # Same rows with 6 more padding tokens: same logits.
  wider = {k: np.pad(v, ((0, 0), (0, 6))) if v.ndim == 2 else v for k, v in batch.items()}
  wider["positions"] = np.broadcast_to(np.arange(18, dtype=np.int32), (4, 18))
  np.testing.assert_allclose(np.asarray(model.apply(params, wider)),
                             np.asarray(model.apply(params, batch)), atol=1e-5)
  # A filler row (weight 0) changes no sum.
  sums = model.loss_sums(params, batch)
  filler = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
  filler["weight"] = np.asarray([1, 1, 1, 1, 0], np.float32)
  filled = model.loss_sums(params, filler)
  for key in ("loss_sum", "correct_sum", "weight_sum"):
    np.testing.assert_allclose(float(filled[key]), float(sums[key]), rtol=1e-5)


def test_bad_pooling_and_config_are_refused():
  with pytest.raises(ValueError, match="pooling"):
    ClassificationModel(ENCODER, TASKS["glue_cola"], pooling="max")
  with pytest.raises(TypeError, match="EncoderConfig or T5Config"):
    ClassificationModel({"d_model": 8}, TASKS["glue_cola"])
