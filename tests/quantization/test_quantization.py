"""Quantization-aware layers (BitNet b1.58, int8 W8A8): definitions, gradients, packed serving.

The forward passes are checked against their definitions written out here in
numpy, the gradients against the straight-through estimator's (a float
matmul of the dequantized operands), and the packed serving path (Pallas
kernels, interpret mode on CPU) against the quantization-aware layers.
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmlab.models import quantized as q
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig, EncoderForSequenceClassification
from lmlab.models.config import T5Config
from lmlab.models.layers import DenseGeneral
from lmlab.training.partitioning import MeshConfig, Partitioner

KINDS = ("bitlinear", "int8")
LAYER_CLASSES = {"bitlinear": q.BitLinear, "int8": q.Int8Dense}

# (input shape, contracted axes, features, kernel axes): a q/k/v projection, an
# attention output over two axes whose last one (6) is not a multiple of 4 (the
# ternary packing pads it), and a contraction over a non-trailing axis.
CASES = {
    "qkv": ((2, 5, 24), -1, (3, 8), ("embed", "heads", "kv")),
    "out": ((2, 5, 3, 6), (-2, -1), 20, ("heads", "kv", "embed")),
    "middle": ((4, 12, 3), 1, 16, ("embed", "mlp")),
}


def _case(name: str, seed: int = 0):
  shape, axis, features, axes = CASES[name]
  x = jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)
  return x, axis, features, axes


def _layer(kind: str, features, axes, axis, serving: bool = False, **kwargs) -> nn.Module:
  return LAYER_CLASSES[kind](features=features, kernel_axes=axes, axis=axis, serving=serving,
                             **kwargs)


def _init(kind, x, features, axes, axis, **kwargs):
  layer = _layer(kind, features, axes, axis, **kwargs)
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(1), x)["params"])
  # A non-zero bias, so that it is checked too.
  params["bias"] = jnp.asarray(np.random.RandomState(2).randn(*params["bias"].shape), jnp.float32)
  return layer, params


def _as_2d(x, axis, kernel):
  """``x`` as ``[M, K]`` with the contracted axes last, and the kernel as ``[K, N]``."""
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  axes = tuple(a % x.ndim for a in axes)
  trailing = tuple(range(x.ndim - len(axes), x.ndim))
  moved = np.moveaxis(np.asarray(x, np.float32), axes, trailing)
  k = int(np.prod([x.shape[a] for a in axes]))
  w = np.asarray(kernel, np.float32)
  return moved.reshape(-1, k), w.reshape(k, -1), moved.shape[:x.ndim - len(axes)]


def _definition(kind: str, x2d: np.ndarray, w2d: np.ndarray):
  """Integer codes and scales exactly as the docs define them, in numpy."""
  x_scale = np.abs(x2d).max(axis=1) / np.float32(127)
  x_q = np.clip(np.round(x2d / x_scale[:, None]), -127, 127)
  if kind == "bitlinear":
    w_scale = np.mean(np.abs(w2d), dtype=np.float32)
    w_q = np.clip(np.round(w2d / (w_scale + np.float32(1e-5))), -1, 1)
    assert set(np.unique(w_q)) <= {-1, 0, 1}
    w_scale_cols = np.full(w2d.shape[1], w_scale, np.float32)
  else:
    w_scale_cols = np.abs(w2d).max(axis=0) / np.float32(127)
    w_q = np.clip(np.round(w2d / w_scale_cols[None, :]), -127, 127)
  # Exact integer sums (float64 holds them), then the scales.
  acc = (x_q.astype(np.float64) @ w_q.astype(np.float64)).astype(np.float32)
  y = acc * x_scale[:, None].astype(np.float32) * w_scale_cols[None, :]
  return y, x_q * x_scale[:, None], w_q * w_scale_cols[None, :]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_definition(kind, case):
  x, axis, features, axes = _case(case)
  layer, params = _init(kind, x, features, axes, axis)
  y = layer.apply({"params": params}, x)
  x2d, w2d, lead = _as_2d(x, axis, params["kernel"])
  ref, x_deq, w_deq = _definition(kind, x2d, w2d)
  ref = ref.reshape(lead + np.shape(params["bias"])) + np.asarray(params["bias"])
  assert y.shape == ref.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-6, atol=1e-6)
  # Equivalently: a float matmul of the dequantized operands.
  deq = (x_deq @ w_deq).reshape(ref.shape) + np.asarray(params["bias"])
  np.testing.assert_allclose(np.asarray(y), deq, rtol=1e-5, atol=1e-5)
  # It is not the float layer: the quantization changes the output.
  plain = DenseGeneral(features=features, kernel_axes=axes, axis=axis)
  assert np.abs(np.asarray(plain.apply({"params": params}, x)) - ref).max() > 1e-3


def test_bitlinear_weights_are_ternary_times_absmean_and_input_norm_is_optional():
  x, axis, features, axes = _case("qkv")
  layer, params = _init("bitlinear", x, features, axes, axis, input_norm=True)
  x2d, w2d, lead = _as_2d(x, axis, params["kernel"])
  normed = x2d / np.sqrt(np.mean(np.square(x2d), axis=1, keepdims=True) + 1e-6)
  ref, _, w_deq = _definition("bitlinear", normed.astype(np.float32), w2d)
  ref = ref.reshape(lead + features) + np.asarray(params["bias"])
  np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, x)), ref,
                             rtol=2e-6, atol=1e-6)
  scale = np.abs(w2d).mean()
  np.testing.assert_allclose(np.unique(np.round(w_deq / scale, 6)), [-1, 0, 1])


@pytest.mark.parametrize("case", ["qkv", "out"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_is_straight_through(kind, case):
  """d/dx and d/dW equal those of ``x_deq @ W_deq`` (rounding treated as the identity)."""
  x, axis, features, axes = _case(case)
  layer, params = _init(kind, x, features, axes, axis)
  out_shape = jax.eval_shape(lambda p, v: layer.apply({"params": p}, v), params, x).shape
  cotangent = jnp.asarray(np.random.RandomState(3).randn(*out_shape), jnp.float32)

  def loss(p, v):
    return jnp.sum(layer.apply({"params": p}, v) * cotangent)

  grads, grad_x = jax.grad(loss, argnums=(0, 1))(params, x)
  x2d, w2d, _ = _as_2d(x, axis, params["kernel"])
  _, x_deq, w_deq = _definition(kind, x2d, w2d)
  g2d = np.asarray(cotangent).reshape(x2d.shape[0], -1)
  ref_w = (x_deq.T.astype(np.float64) @ g2d).reshape(params["kernel"].shape)
  ref_x2d = g2d.astype(np.float64) @ w_deq.T
  axes_t = (axis,) if isinstance(axis, int) else tuple(axis)
  axes_t = tuple(a % x.ndim for a in axes_t)
  moved_shape = tuple(s for i, s in enumerate(x.shape) if i not in axes_t) + tuple(
      x.shape[a] for a in axes_t)
  ref_x = np.moveaxis(ref_x2d.reshape(moved_shape),
                      tuple(range(x.ndim - len(axes_t), x.ndim)), axes_t)
  np.testing.assert_allclose(np.asarray(grads["kernel"]), ref_w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad_x), ref_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grads["bias"]),
                             np.asarray(cotangent).reshape(-1, *np.shape(params["bias"])).sum(0),
                             rtol=1e-5, atol=1e-5)


def test_ste_value_is_the_code_and_gradient_is_the_identity():
  latent = jnp.asarray([0.3, 5.123456, -7.7, 126.6], jnp.float32)
  code = jnp.asarray([0.0, 1.0, -1.0, 127.0], jnp.float32)
  np.testing.assert_array_equal(np.asarray(q.ste(latent, code)), np.asarray(code))
  grad = jax.grad(lambda v: jnp.sum(q.ste(v, jnp.round(v)) * jnp.arange(4.0)))(latent)
  np.testing.assert_array_equal(np.asarray(grad), [0.0, 1.0, 2.0, 3.0])


# --- packed serving ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_exported_layer_through_pallas_kernels_matches_training_layer(kind, case):
  x, axis, features, axes = _case(case)
  layer, params = _init(kind, x, features, axes, axis)
  serving = _layer(kind, features, axes, axis, serving=True)
  template = jax.eval_shape(lambda r: serving.init(r, x), jax.random.PRNGKey(0))["params"]
  packed = q.export_packed(params, template)
  assert "kernel" not in packed
  name = "kernel_packed" if kind == "bitlinear" else "kernel_int8"
  assert packed[name].dtype == (jnp.uint8 if kind == "bitlinear" else jnp.int8)
  assert packed["kernel_scale"].dtype == jnp.float32
  # Same codes, exact integer sums, the scales applied in the same order: bit for bit.
  trained = np.asarray(layer.apply({"params": params}, x))
  served = np.asarray(serving.apply({"params": packed}, x))
  np.testing.assert_array_equal(served, trained)
  # Logical names carry over: the packed kernel has the float kernel's axes.
  assert template[name].names == axes


def test_ternary_packed_bytes_are_a_sixteenth_of_float32():
  x = jnp.ones((2, 64), jnp.float32)
  layer, params = _init("bitlinear", x, 128, ("embed", "mlp"), -1)
  serving = _layer("bitlinear", 128, ("embed", "mlp"), -1, serving=True)
  template = jax.eval_shape(lambda r: serving.init(r, x), jax.random.PRNGKey(0))["params"]
  packed = q.export_packed(params, template)
  assert packed["kernel_packed"].shape == (16, 128)
  assert q.tree_bytes(params["kernel"]) == 64 * 128 * 4
  assert q.tree_bytes(packed["kernel_packed"]) * 16 == q.tree_bytes(params["kernel"])
  assert q.tree_bytes(packed, lambda path: "kernel" in path) == 64 * 128 // 4 + 4
  int8 = _layer("int8", 128, ("embed", "mlp"), -1, serving=True)
  int8_template = jax.eval_shape(lambda r: int8.init(r, x), jax.random.PRNGKey(0))["params"]
  assert q.tree_bytes(q.export_packed(params, int8_template)["kernel_int8"]) * 4 == 64 * 128 * 4


def test_export_rejects_a_template_of_another_model():
  x = jnp.ones((2, 64), jnp.float32)
  _, params = _init("bitlinear", x, 128, ("embed", "mlp"), -1)
  other = _layer("bitlinear", 96, ("embed", "mlp"), -1, serving=True)
  template = jax.eval_shape(lambda r: other.init(r, x), jax.random.PRNGKey(0))["params"]
  with pytest.raises(ValueError, match="does not"):
    q.export_packed(params, template)


# --- in the networks -----------------------------------------------------------------

TINY = dict(vocab_size=256, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_positions=32,
            dropout_rate=0.0, attention_dropout_rate=0.0)


def _mlm_batch(seed: int = 0, batch: int = 4, length: int = 16) -> dict:
  rng = np.random.RandomState(seed)
  ids = rng.randint(4, 256, size=(batch, length)).astype(np.int32)
  return {"input_ids": ids, "segment_ids": np.ones_like(ids),
          "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1))}


def _init_params(model, *init_args):
  return jax.jit(lambda r: nn.meta.unbox(model.init(r, *init_args)))(jax.random.PRNGKey(0))


def _serving_pair(model, init_args):
  """The serving twin of a model wrapper and its parameter template (shapes only)."""
  serving = type(model)(dataclasses.replace(model.config, quantization_serving=True))
  template = jax.eval_shape(lambda r: serving.init(r, *init_args), jax.random.PRNGKey(0))
  return serving, template


def _paths(tree) -> set[str]:
  return {"/".join(str(k.key) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(tree))[0]}


@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["unrolled", "scan_layers"])
def test_encoder_quantizes_block_layers_only_and_serves_packed(scan):
  model = MaskedLMModel(EncoderConfig(**TINY, dense_quantization="bitlinear", scan_layers=scan))
  float_model = MaskedLMModel(EncoderConfig(**TINY, scan_layers=scan))
  params = _init_params(model, 2, 16)
  if not scan:
    # Drop-in: the same parameter tree and the same initial values as the float model.
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, _init_params(float_model, 2, 16))

  serving, template = _serving_pair(model, (2, 16))
  packed_paths = {p for p in _paths(template) if p.endswith("kernel_packed")}
  prefix = "encoder/layers" if scan else "encoder/layers_0"
  expected = {f"{prefix}/attention/{n}/kernel_packed" for n in ("query", "key", "value", "out")}
  expected |= {f"{prefix}/mlp/{n}/kernel_packed" for n in ("wi", "wo")}
  assert {p for p in packed_paths if p.startswith(prefix + "/")} == expected
  assert len(packed_paths) == (6 if scan else 6 * TINY["num_layers"])
  assert "mlm_head/transform/kernel" in _paths(template)  # the head stays float
  # The packed tree shards with the unchanged rules (fsdp over all devices).
  Partitioner(MeshConfig(ici_shape=(1, -1, 1))).param_shardings(template)

  batch = _mlm_batch()
  packed = q.export_packed(params, template)
  if scan:
    # Compiled: XLA may fuse the float ops around the layers (norms, softmax)
    # differently in the two graphs; a 1-ulp change can move an int8 code.
    trained = np.asarray(jax.jit(model.apply)(params, batch))
    served = np.asarray(jax.jit(serving.apply)(packed, batch))
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(served.argmax(-1), trained.argmax(-1))
  else:
    # Op by op the float parts run identically, so the logits are bit-identical.
    trained = np.asarray(model.apply(params, batch))
    served = np.asarray(serving.apply(packed, batch))
    np.testing.assert_array_equal(served, trained)
  float_logits = np.asarray(jax.jit(float_model.apply)(params, batch))
  assert np.abs(float_logits - trained).max() > 1e-4  # the quantized layers are in use


def test_classifier_and_bigs_build_with_int8_layers():
  cfg = EncoderConfig(**TINY, dense_quantization="int8")
  ids = jnp.asarray(_mlm_batch()["input_ids"])
  classifier = EncoderForSequenceClassification(cfg, num_classes=3)
  variables = jax.jit(classifier.init)(jax.random.PRNGKey(0), ids)
  logits = jax.jit(classifier.apply)(variables, ids)
  assert logits.shape == (4, 3) and bool(jnp.all(jnp.isfinite(logits)))
  serving = EncoderForSequenceClassification(dataclasses.replace(cfg, quantization_serving=True),
                                             num_classes=3)
  paths = _paths(jax.eval_shape(lambda r: serving.init(r, ids), jax.random.PRNGKey(0)))
  assert {"params/pooler/kernel", "params/classifier/kernel"} <= paths
  bigs = MaskedLMModel(dataclasses.replace(cfg, mixer="bigs", norm_position="pre",
                                           ssm_state_size=4))
  params = _init_params(bigs, 2, 16)
  served_bigs, template = _serving_pair(bigs, (2, 16))
  int8_paths = {p for p in _paths(template) if p.endswith("kernel_int8")}
  assert len(int8_paths) == 7 * TINY["num_layers"]  # every BiGS projection
  batch = _mlm_batch()
  trained = np.asarray(jax.jit(bigs.apply)(params, batch))
  served = np.asarray(jax.jit(served_bigs.apply)(q.export_packed(params, template), batch))
  assert np.all(np.isfinite(trained))
  np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-5)


def _enc_dec_batch(batch: int = 2, length_in: int = 12, length_out: int = 6) -> dict:
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, 256, size=(batch, length_in)).astype(np.int32)
  targets = rng.randint(2, 256, size=(batch, length_out)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {
      "encoder_input_tokens": inputs, "encoder_segment_ids": np.ones_like(inputs),
      "encoder_positions": np.tile(np.arange(length_in, dtype=np.int32), (batch, 1)),
      "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones(targets.shape, np.float32),
      "decoder_segment_ids": np.ones_like(targets),
      "decoder_positions": np.tile(np.arange(length_out, dtype=np.int32), (batch, 1)),
  }


@pytest.mark.slow  # the encoder runs the same layers by default
def test_t5_with_bitlinear_runs_and_serves_packed():
  cfg = T5Config(vocab_size=256, d_model=32, num_heads=2, head_dim=8, d_ff=64,
                 num_encoder_layers=1, num_decoder_layers=1, dense_quantization="bitlinear")
  model = EncoderDecoderModel(cfg)
  params = _init_params(model, 2)
  batch = _enc_dec_batch()
  sums = jax.jit(model.loss_sums)(params, batch)
  loss = float(sums["loss_sum"] / sums["weight_sum"])
  assert np.isfinite(loss) and 4.0 < loss < 7.0, loss  # ~ln(256) at init
  grads = jax.jit(jax.grad(lambda p: model.loss_sums(p, batch)["loss_sum"]))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))

  serving, template = _serving_pair(model, (2,))
  paths = _paths(template)
  assert "decoder/logits_dense/kernel" in paths  # the vocabulary projection stays float
  assert "decoder/layers_0/cross_attention/query/kernel_packed" in paths
  assert len([p for p in paths if p.endswith("kernel_packed")]) == 7 + 11
  served = jax.jit(serving.loss_sums)(q.export_packed(params, template), batch)
  np.testing.assert_allclose(float(served["loss_sum"]), float(sums["loss_sum"]), rtol=1e-5)


def test_unknown_dense_quantization_is_a_clear_error():
  with pytest.raises(ValueError, match=r"EncoderConfig.dense_quantization='int4' is not one of "
                                       r"\('none', 'bitlinear', 'int8'\)"):
    EncoderConfig(dense_quantization="int4")
  with pytest.raises(ValueError, match=r"T5Config.dense_quantization='ternary' is not one of"):
    T5Config(dense_quantization="ternary")
  serving_float = MaskedLMModel(EncoderConfig(**TINY, quantization_serving=True))
  with pytest.raises(ValueError, match="quantization_serving=True needs dense_quantization"):
    serving_float.init(jax.random.PRNGKey(0), 1, 8)


def test_unknown_dense_quantization_from_the_command_line(tmp_path, tiny_run_in_process):
  code, stderr = tiny_run_in_process(tmp_path, "--gin.EncoderConfig.dense_quantization='int4'")
  assert code == 2 and "dense_quantization='int4' is not one of" in stderr, stderr


# --- training on the embedded corpus -------------------------------------------------

TINY_BITNET_RUN = (
    "--gin.EncoderConfig.d_model=64",
    "--gin.EncoderConfig.num_layers=1",
    "--gin.EncoderConfig.d_ff=128",
    "--gin.EncoderConfig.max_positions=64",
    "--gin.SEQUENCE_LENGTH=64",
    "--gin.BATCH_SIZE=16",
    "--gin.WARMUP_STEPS=5",
    "--gin.TRAIN_STEPS=60",
    "--gin.TrainConfig.eval_steps=3",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.log_every=10",
    "--gin.TrainConfig.checkpoint_every=1000",
    "--gin.TrainConfig.progress_bar=False",
)


@pytest.mark.slow  # a 500-step CLI recipe run; BitLinear, packing and serving are unit-tested above
def test_bitnet_quickstart_trains_and_its_packed_export_predicts_the_same(tmp_path, cli_run):
  proc = cli_run("--gin_file=runs/bitnet_quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                 *TINY_BITNET_RUN)
  assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval/loss"] for r in records if "eval/loss" in r]
  assert len(evals) == 2 and evals[-1] < evals[0] - 1.0, evals
  assert "EncoderConfig.dense_quantization = 'bitlinear'" in (tmp_path / "config.gin").read_text()

  # The checkpoint written by the run, and the run's own model config.
  state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "60" / "state")
  params = jax.tree_util.tree_map(jnp.asarray, state["params"])
  from lmlab import main as cli  # pylint: disable=import-outside-toplevel
  cli.parse_gin([str(tmp_path / "config.gin")], [], [])
  model = gin.query_parameter("run.model").scoped_configurable_fn()
  gin.clear_config(clear_constants=True)
  vocab = params["encoder"]["embeddings"]["token_embedder"]["embedding"].shape[0]
  model = model.with_vocab_size(vocab)
  assert model.config.dense_quantization == "bitlinear"

  serving, template = _serving_pair(model, (1, 64))
  packed = q.export_packed(params, template)
  blocks = lambda path: path.startswith("encoder/layers_") and "kernel" in path
  float_bytes, packed_bytes = q.tree_bytes(params, blocks), q.tree_bytes(packed, blocks)
  assert packed_bytes < float_bytes / 15.9, (float_bytes, packed_bytes)

  # A validation batch of the corpus (masked, packed rows).
  from lmlab.data import pipeline  # pylint: disable=import-outside-toplevel
  dataset = pipeline.get_dataset("lmlab.embedded_mlm", "validation", 64, 4, shuffle=False, seed=0,
                                 repeat=False)
  batch = next(iter(dataset.as_numpy_iterator()))
  # Op by op (see the encoder test): identical logits, so identical predictions.
  trained = np.asarray(model.apply(params, batch))
  served = np.asarray(serving.apply(packed, batch))
  np.testing.assert_array_equal(served, trained)
  masked = batch["loss_weights"] > 0
  accuracy = np.mean(served.argmax(-1)[masked] == batch["targets"][masked])
  assert accuracy > 0.02, accuracy  # the packed model predicts, not just agrees
