"""Sharded training on 8 fake CPU devices (set in conftest.py) matches one device.

Each mesh preset trains the tiny encoder a few steps through the real
``Trainer``; losses and parameters must equal the single-device run, and
every parameter must be laid out as the rules table says.
"""

from __future__ import annotations

import dataclasses
import math

import gin
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmlab import main as cli
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.partitioning import DEFAULT_RULES, MeshConfig, Partitioner, per_device_bytes
from lmlab.training.config import TrainConfig
from lmlab.training.trainer import Trainer

CONFIG = EncoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                       max_positions=32, dropout_rate=0.0, attention_dropout_rate=0.0)
LENGTH, BATCH, STEPS = 16, 16, 4

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _batch(seed: int) -> dict:
  rng = np.random.RandomState(seed)
  targets = rng.randint(4, 256, size=(BATCH, LENGTH)).astype(np.int32)
  weights = (rng.rand(BATCH, LENGTH) < 0.3).astype(np.float32)
  segment_ids = (np.arange(LENGTH)[None] < rng.randint(LENGTH // 2, LENGTH + 1, (BATCH, 1)))
  segment_ids = segment_ids.astype(np.int32)
  weights *= segment_ids
  return {"input_ids": np.where(weights > 0, 3, targets) * segment_ids, "targets": targets,
          "loss_weights": weights, "segment_ids": segment_ids,
          "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1))}


def _trainer(tmp_path, mesh: MeshConfig, accum_steps: int = 1, model_config=CONFIG) -> Trainer:
  config = TrainConfig(model_dir=str(tmp_path), train_steps=10, batch_size=BATCH,
                       grad_accum_steps=accum_steps, async_checkpointing=False)
  optimizer = OptimizerConfig(learning_rate=3e-3, warmup_steps=0, schedule="constant")
  return Trainer(MaskedLMModel(model_config, max_prediction_fraction=0.5), optimizer, config,
                 Partitioner(mesh))


def _train(trainer: Trainer):
  state, _ = trainer.initial_state(LENGTH)
  losses = []
  for step in range(STEPS):
    state, metrics = trainer.train_step(state, _batch(0))  # a fixed batch, so the loss must fall
    losses.append(float(metrics["loss_sum"]) / float(metrics["weight_sum"]))
  return state, losses


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  return _train(_trainer(tmp_path_factory.mktemp("one"), MeshConfig(num_devices=1)))


PRESETS = {
    "dp8": ((8, 1, 1), 1),
    "fsdp8_accum2": ((1, 8, 1), 2),
    "fsdp4_tp2": ((1, 4, 2), 1),
}


# Accumulation under FSDP is slow here (accumulation itself is tested by default).
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "fsdp8_accum2"
                                  else n for n in PRESETS])
def test_preset_matches_single_device(name, tmp_path, single_device_run):
  ici_shape, accum = PRESETS[name]
  trainer = _trainer(tmp_path, MeshConfig(ici_shape=ici_shape), accum)
  state, losses = _train(trainer)
  ref_state, ref_losses = single_device_run
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  for (path, got), (_, want) in zip(_leaves(state.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))

  # Layout: every parameter (and its Adam moments) is split as the rules say.
  data, fsdp, tensor = ici_shape
  expected = {
      "attention/query/kernel": (P("fsdp", "tensor", None), (32 // fsdp, 2 // tensor, 16)),
      "attention/out/kernel": (P("tensor", None, "fsdp"), (2 // tensor, 16, 32 // fsdp)),
      "mlp/wi/kernel": (P("fsdp", "tensor"), (32 // fsdp, 64 // tensor)),
      "token_embedder/embedding": (P("tensor", "fsdp"), (256 // tensor, 32 // fsdp)),
      "mlp_norm/scale": (P("fsdp"), (32 // fsdp,)),
  }
  adam = state.opt_state[-1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  for tree in (state.params, adam.mu, adam.nu):
    flat = {"/".join(str(k.key) for k in path): leaf for path, leaf in _leaves(tree)}
    for suffix, (spec, shard_shape) in expected.items():
      leaf = next(v for k, v in flat.items() if k.endswith(suffix))
      assert leaf.sharding.spec == spec, (suffix, leaf.sharding.spec)
      assert {s.data.shape for s in leaf.addressable_shards} == {shard_shape}, suffix
  total = sum(math.prod(x.shape) * 4 for x in jax.tree_util.tree_leaves(state.params))
  per_device = per_device_bytes(state.params)
  if fsdp * tensor == 1:
    assert per_device == total
  else:  # all but the few 1-D, non-embed parameters (biases of heads/vocab) split
    assert per_device < total / (fsdp * tensor) * 1.2


@pytest.mark.slow  # scan/remat equivalence and sharding each have default tests
def test_scanned_rematerialised_layers_shard_and_match_one_device(tmp_path):
  config = dataclasses.replace(CONFIG, scan_layers=True, remat_policy="full")
  ref_state, ref_losses = _train(_trainer(tmp_path / "one", MeshConfig(num_devices=1), 1, config))
  state, losses = _train(_trainer(tmp_path / "mesh", MeshConfig(ici_shape=(1, 4, 2)), 1, config))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for (path, got), (_, want) in zip(_leaves(state.params), _leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))
  query = state.params["encoder"]["layers"]["attention"]["query"]["kernel"]
  assert query.shape == (2, 32, 2, 16)  # stacked: the "layers" axis stays whole
  assert query.sharding.spec == P(None, "fsdp", "tensor", None)
  assert {s.data.shape for s in query.addressable_shards} == {(2, 8, 1, 16)}


def test_checkpoint_written_under_fsdp_restores_on_other_meshes(tmp_path):
  saver = _trainer(tmp_path, MeshConfig(ici_shape=(1, 8, 1)))
  state, _ = saver.initial_state(LENGTH)
  state, _ = saver.train_step(state, _batch(0))
  saver.checkpointer.save(1, state)
  saver.checkpointer.close()
  saved = jax.device_get(state.params)
  for mesh in (MeshConfig(num_devices=1), MeshConfig(ici_shape=(2, 4, 1))):
    loader = _trainer(tmp_path, mesh)
    restored, resumed = loader.initial_state(LENGTH)
    loader.checkpointer.close()
    assert resumed and int(restored.step) == 1
    for (path, got), (_, want) in zip(_leaves(restored.params), _leaves(saved)):
      np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
    got_mesh = jax.tree_util.tree_leaves(restored.params)[0].sharding.mesh
    assert dict(got_mesh.shape) == dict(loader.partitioner.mesh.shape)
    # The restored arrays carry the new run's shardings, not the saved ones.
    for got, want in zip(jax.tree_util.tree_leaves(restored),
                         jax.tree_util.tree_leaves(loader.state_shardings)):
      assert got.sharding.is_equivalent_to(want, got.ndim)


def test_presets_in_gin_build_their_mesh():
  shapes = {"data_parallel.gin": (8, 1, 1), "fsdp.gin": (1, 8, 1), "fsdp_tensor.gin": (1, 4, 2)}
  for filename, shape in shapes.items():
    cli.parse_gin([f"partitioning/{filename}"], [], [])
    mesh = Partitioner(MeshConfig()).mesh
    assert tuple(mesh.shape.values()) == shape, filename
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    gin.clear_config(clear_constants=True)


@pytest.mark.parametrize("mesh, message", [
    (MeshConfig(ici_shape=(3, -1, 1)), "does not divide the 8 devices"),
    (MeshConfig(ici_shape=(2, 2, 1)), "needs 4 devices per slice/host but there are 8"),
    (MeshConfig(ici_shape=(-1, -1, 1)), "at most one -1"),
    (MeshConfig(dcn_shape=(3, 1, 1)), "does not divide the 8 devices"),
    (MeshConfig(rules=DEFAULT_RULES + (("embed", "model"),)), "names mesh axis 'model'"),
])
def test_bad_mesh_is_refused_at_start(mesh, message):
  with pytest.raises(ValueError, match=message):
    Partitioner(mesh)


def test_batch_not_divisible_by_data_parallel_size_is_refused(tmp_path):
  config = TrainConfig(model_dir=str(tmp_path), train_steps=1, batch_size=12)
  with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the data-parallel size 8"):
    Trainer(MaskedLMModel(CONFIG), OptimizerConfig(), config, Partitioner(MeshConfig()))
  config = TrainConfig(model_dir=str(tmp_path), train_steps=1, batch_size=16, grad_accum_steps=4)
  with pytest.raises(ValueError, match=r"batch_size // grad_accum_steps=4 is not divisible"):
    Trainer(MaskedLMModel(CONFIG), OptimizerConfig(), config, Partitioner(MeshConfig()))


def test_parameter_without_rule_is_refused(tmp_path):
  rules = tuple(rule for rule in DEFAULT_RULES if rule[0] != "mlp")
  trainer = _trainer(tmp_path, MeshConfig(rules=rules))
  with pytest.raises(ValueError, match=r"mlp/wi/(kernel|bias) has logical axis 'mlp' with no partitioning rule"):
    trainer.initial_state(LENGTH)
