"""End-to-end fine-tuning on mocked GLUE/SuperGLUE data for each family.

TFDS's ``mock_data`` generates random examples from the real feature specs, so
every code path (tasks, heads, training, validation with the official metrics,
best-checkpoint selection, leaderboard files, the multi-seed summary) runs as on
real data; the scores themselves are meaningless. The pretraining checkpoint is
a freshly initialised model saved the way the trainer saves one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from lmlab.glue import config as finetune_configs
from lmlab.glue import finetune, leaderboard
from lmlab.glue import spec as glue_spec
from lmlab.glue import tasks as glue_tasks
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config
from lmlab.glue.task_data import TaskData
from lmlab.training import checkpointing
from lmlab.training.config import TrainConfig
from lmlab.training.partitioning import MeshConfig, Partitioner
from lmlab.training.preemption import PreemptedError
from lmlab.training.trainer import NonFiniteLossError
from lmlab.training.optimizers import OptimizerConfig

MOCK_EXAMPLES = 6
NETWORKS = {
    "bert": EncoderConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64, max_positions=64),
    "bigs": EncoderConfig(d_model=32, num_layers=2, d_ff=64, max_positions=64, mixer="bigs",
                          ssm_state_size=8),
    "t5": T5Config(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=2,
                   num_decoder_layers=2),
}


def _pretrained_dir(tmp_path, family: str) -> str:
  directory = tmp_path / f"pretrained_{family}"
  if directory.exists():
    return str(directory)
  net = NETWORKS[family]
  wrapper = (EncoderDecoderModel(net.with_vocab_size(8292)) if family == "t5"
             else MaskedLMModel(net.with_vocab_size(8192)))
  params = jax.device_get(nn.meta.unbox(wrapper.init(jax.random.PRNGKey(0), 1, 16)))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "checkpoints" / "5" / "state", {"params": params})
  checkpointer.wait_until_finished()
  return str(directory)


def _config(tmp_path, family, tasks, **overrides):
  """``(FinetuneConfig, TrainConfig, OptimizerConfig)`` of a tiny run; overrides go to their owner."""
  base = dict(model_dir=str(tmp_path / "finetune"), tasks=tasks, network=NETWORKS[family],
              init_checkpoint_dir=_pretrained_dir(tmp_path, family), sequence_length=48,
              target_length=6, batch_size=8, eval_batch_size=8, train_steps=4, epochs=None,
              eval_every=2, seeds=(0,), learning_rate=1e-3, progress_bar=False, log_every=1)
  finetune_config, train, optimizer = finetune_configs.for_task(
      "all", finetune_configs.FinetuneConfig(tasks=tasks, per_task={"all": {**base, **overrides}}),
      TrainConfig(model_dir="", train_steps=0), OptimizerConfig())
  return dataclasses.replace(finetune_config, per_task={}), train, optimizer


def _run(configs, **kwargs):
  return finetune.run_finetune(*configs, **kwargs)


@pytest.fixture
def mocked_glue(monkeypatch):
  # Mocked datasets are never "prepared" on disk; the preparedness check has its own test.
  monkeypatch.setattr(glue_tasks, "check_prepared", lambda name, data_dir: None)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield


def _test_ids(spec, split):
  """The ids a submission must list: one per example, or per group for candidate tasks.

  Mocked ids are random and may repeat; candidate rows sharing an id form one group.
  """
  ids = []
  for example in tfds.load(spec.tfds_name, split=split).as_numpy_iterator():
    idx = example["idx"]
    ids.append(int(idx["query"]) if spec.kind == "entity_ranking" else
               int(idx["paragraph"]) if spec.kind == "answer_scoring" else int(idx))
  return sorted(set(ids)) if spec.kind in finetune_candidate_kinds() else sorted(ids)


def finetune_candidate_kinds():
  return ("multiple_choice", "answer_scoring", "entity_ranking")


def _check_leaderboard(model_dir, spec):
  for split, name in zip(spec.test_splits, spec.leaderboard_files):
    rows = leaderboard.read_submission(os.path.join(model_dir, "leaderboard", name))
    ids = [int(r[0]) for r in rows] if name.endswith(".tsv") else [r["idx"] for r in rows]
    assert ids == _test_ids(spec, split), name


def test_encoder_mnli_two_seeds_keep_best_and_write_glue_files(tmp_path, mocked_glue):
  config = _config(tmp_path, "bert", ["glue_mnli"], seeds=(0, 1))
  summary = _run(config)
  for seed in (0, 1):
    run_dir = tmp_path / "finetune" / "glue_mnli" / f"seed_{seed}"
    result = json.loads((run_dir / "result.json").read_text())
    best = max(result["history"], key=lambda h: h["main"])
    assert result["best_step"] == best["step"]  # the first of equal scores is kept
    assert set(result["validation"]) == {"accuracy_matched", "accuracy_mismatched", "main"}
    assert (run_dir / "best").is_dir()
  for spec in (glue_spec.TASKS["glue_mnli"], glue_spec.TASKS["glue_ax"]):
    _check_leaderboard(config[1].model_dir, spec)
  text = (tmp_path / "finetune" / "summary.md").read_text()
  assert "| glue_mnli | accuracy_matched | 2 |" in text
  assert summary["tasks"]["glue_mnli"][1]["seed"] == 1
  # A finished seed is not trained again.
  again = _run(config)
  assert again["tasks"] == summary["tasks"]


def test_bigs_regression_head_writes_sts_b_scores(tmp_path, mocked_glue):
  config = _config(tmp_path, "bigs", ["glue_stsb"])
  _run(config)
  spec = glue_spec.TASKS["glue_stsb"]
  _check_leaderboard(config[1].model_dir, spec)
  rows = leaderboard.read_submission(os.path.join(config[1].model_dir, "leaderboard", "STS-B.tsv"))
  assert all(np.isfinite(float(r[1])) for r in rows)


@pytest.mark.parametrize("head,task", [
    ("text_to_text", "super_glue_boolq"),
    pytest.param("enct5", "glue_rte", marks=pytest.mark.slow)])  # EncT5 head: unit-tested too
def test_t5_fine_tunes_text_to_text_and_with_the_enct5_head(tmp_path, mocked_glue, head, task):
  config = _config(tmp_path, "t5", [task], head=head)
  summary = _run(config)
  assert summary["tasks"][task][0]["head"] == head
  spec = glue_spec.TASKS[task]
  _check_leaderboard(config[1].model_dir, spec)
  if task == "super_glue_boolq":
    rows = leaderboard.read_submission(os.path.join(config[1].model_dir, "leaderboard",
                                                    "BoolQ.jsonl"))
    assert {r["label"] for r in rows} <= {"true", "false"}


@pytest.mark.parametrize("task", [pytest.param("super_glue_copa", marks=pytest.mark.slow),
                                  pytest.param("super_glue_record", marks=pytest.mark.slow),
                                  pytest.param("super_glue_multirc", marks=pytest.mark.slow)])
def test_candidate_tasks_pick_one_answer_per_group(tmp_path, mocked_glue, task):
  config = _config(tmp_path, "bert", [task])
  _run(config)
  _check_leaderboard(config[1].model_dir, glue_spec.TASKS[task])


def test_bad_inputs_fail_before_training(tmp_path):
  with pytest.raises(ValueError, match="Unknown GLUE/SuperGLUE task"):
    _run(_config(tmp_path, "bert", ["glue_nope"]))
  with pytest.raises(ValueError, match="predicted by the glue_mnli model"):
    _run(_config(tmp_path, "bert", ["glue_ax"]))
  with pytest.raises(FileNotFoundError, match="tfds build glue/rte"):
    _run(_config(tmp_path, "bert", ["glue_rte"], tfds_data_dir=str(tmp_path)))
  assert not (tmp_path / "finetune" / "glue_rte").exists()


def test_wrong_checkpoint_and_too_long_rows_are_refused(tmp_path, mocked_glue):
  t5_dir = _pretrained_dir(tmp_path, "t5")
  with pytest.raises(ValueError, match="another model family"):
    _run(_config(tmp_path, "bert", ["glue_rte"], init_checkpoint_dir=t5_dir))
  with pytest.raises(ValueError, match="longer than the model allows"):
    _run(_config(tmp_path, "bert", ["glue_rte"], sequence_length=128))
  wide = dataclasses.replace(NETWORKS["bert"], d_ff=48)
  with pytest.raises(ValueError, match="has shape"):
    _run(_config(tmp_path, "bert", ["glue_rte"], network=wide))


def test_command_line_finetune_mode(tmp_path, mocked_glue, capsys):
  """``python -m lmlab.main --run_mode=finetune`` with the shipped gin files (random init)."""
  from lmlab import main as cli  # pylint: disable=import-outside-toplevel
  result = cli.main([
      "--run_mode=finetune", "--gin_file=models/tiny.gin", "--gin_file=finetune/glue.gin",
      f"--gin.MODEL_DIR='{tmp_path}'", "--gin.PRETRAINED_DIR=None",
      "--gin.FinetuneConfig.tasks=['glue_rte']", "--gin.FinetuneConfig.seeds=[0]",
      "--gin.FinetuneConfig.epochs=None", "--gin.FinetuneConfig.per_task={}",
      "--gin.TrainConfig.train_steps=2",
      "--gin.TrainConfig.batch_size=8", "--gin.TrainConfig.eval_batch_size=8",
      "--gin.TrainConfig.progress_bar=False", "--gin.FinetuneConfig.sequence_length=32"])
  assert result["tasks"]["glue_rte"][0]["train_steps"] == 2
  assert "| glue_rte | accuracy | 1 |" in capsys.readouterr().out
  assert (tmp_path / "leaderboard" / "RTE.tsv").exists()


# ---------------------------------------------------------------------------
# Fine-tuning is a Trainer run: sharding, resume, preemption, NaN guard, logs.


def _records(run_dir) -> list[dict]:
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run_dir) -> list[float]:
  return [r["train/loss"] for r in _records(run_dir) if "train/loss" in r]


@pytest.mark.slow  # ~40 s; fine-tuning runs the Trainer, whose mesh equivalence tests/train/test_sharding.py covers
def test_finetune_on_an_fsdp_tensor_mesh_equals_one_device(tmp_path, mocked_glue):
  losses, scores = {}, {}
  for name, mesh in (("one", MeshConfig(num_devices=1)), ("mesh", MeshConfig(ici_shape=(1, 4, 2)))):
    config = _config(tmp_path / name, "bert", ["glue_rte"], train_steps=4,
                     write_test_predictions=False)
    summary = _run(config, partitioner=Partitioner(mesh))
    run_dir = tmp_path / name / "finetune" / "glue_rte" / "seed_0"
    losses[name] = _train_losses(run_dir)
    scores[name] = [h["main"] for h in summary["tasks"]["glue_rte"][0]["history"]]
    assert (run_dir / "tensorboard").is_dir()
  assert len(losses["one"]) == 4
  np.testing.assert_allclose(losses["mesh"], losses["one"], rtol=1e-5)
  assert scores["mesh"] == scores["one"]


def _preempt_at_batch(index: int):
  """A ``TaskData.train_batches`` that sends this process SIGTERM when batch ``index`` is fetched."""
  original = TaskData.train_batches

  def train_batches(self, *args, **kwargs):
    source = original(self, *args, **kwargs)

    def from_step(start):
      for i, batch in enumerate(source(start), start):
        if i == index:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch
    return from_step
  return train_batches


@pytest.mark.slow  # ~50 s: keeps the default suite under 12 minutes on 2 cores
def test_sigterm_mid_seed_saves_and_the_restart_ends_bitwise_equal(tmp_path, mocked_glue,
                                                                    monkeypatch):
  assert threading.current_thread() is threading.main_thread()  # where SIGTERM is handled
  kwargs = dict(train_steps=6, checkpoint_every=100, keep_train_checkpoints=True,
                write_test_predictions=False)
  reference = _config(tmp_path / "ref", "bert", ["glue_rte"], **kwargs)
  _run(reference)
  cut = _config(tmp_path / "cut", "bert", ["glue_rte"], **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(TaskData, "train_batches", _preempt_at_batch(3))
    with pytest.raises(PreemptedError, match="after step 4"):
      _run(cut)
  run_dir = tmp_path / "cut" / "finetune" / "glue_rte" / "seed_0"
  assert checkpointing.latest_step(str(run_dir)) == 4
  assert not (run_dir / "result.json").exists()
  resumed = _run(cut)["tasks"]["glue_rte"][0]
  expected = json.loads((tmp_path / "ref" / "finetune" / "glue_rte" / "seed_0" /
                         "result.json").read_text())
  assert resumed["history"] == expected["history"]
  assert resumed["best_step"] == expected["best_step"]
  _, got = checkpointing.load_params(str(run_dir))
  _, want = checkpointing.load_params(str(tmp_path / "ref" / "finetune" / "glue_rte" / "seed_0"))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    assert np.array_equal(a, b), jax.tree_util.keystr(path)
  ref_losses = _train_losses(tmp_path / "ref" / "finetune" / "glue_rte" / "seed_0")
  assert _train_losses(run_dir) == ref_losses  # steps 1-4, then 5-6 after the restart


def test_a_non_finite_fine_tuning_loss_stops_naming_the_step(tmp_path, mocked_glue):
  config = _config(tmp_path, "bert", ["glue_rte"], learning_rate=1e30, clip_grad_norm=None,
                   train_steps=4)
  with pytest.raises(NonFiniteLossError, match=r"at step \d"):
    _run(config)
  assert not (tmp_path / "finetune" / "glue_rte" / "seed_0" / "result.json").exists()
