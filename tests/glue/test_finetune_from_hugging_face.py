"""Fine-tuning that starts from a Hugging Face folder, and the fine-tuned model exported back.

A tiny random ``BertForSequenceClassification`` is saved with its WordPiece
tokenizer files (offline). Fine-tuning it on (mocked) MRPC must

* tokenize and frame every row exactly as the Hugging Face tokenizer does
  (``[CLS] A [SEP] B [SEP]``, token types, longest-first truncation);
* start from the checkpoint's own classifier: lmlab's logits before the first
  step equal ``transformers``' on the same rows;
* have the same first-step loss whether it starts from the folder or from the
  parameter file ``python -m lmlab.convert import`` writes of it;
* export a folder that ``AutoModelForSequenceClassification`` loads and that
  predicts what lmlab predicts, with the tokenizer files and label names.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch

import hf_folders
from lmlab.convert import __main__ as convert_cli
from lmlab.glue import finetune
from lmlab.glue import rows as finetune_rows
from lmlab.glue import spec as glue_spec
from lmlab.glue import tasks as glue_tasks
from lmlab.glue.config import FinetuneConfig
from lmlab.training import checkpointing
from lmlab.training.config import TrainConfig
from lmlab.training.optimizers import OptimizerConfig
from lmlab.convert.starting_point import load_starting_point

TASK = "glue_mrpc"
LENGTH = 32
ROWS = 8


@pytest.fixture
def mocked_glue(monkeypatch):
  monkeypatch.setattr(glue_tasks, "check_prepared", lambda name, data_dir: None)
  with tfds.testing.mock_data(num_examples=8):
    yield


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  return hf_folders.bert_folder(tmp_path_factory.mktemp("hf") / "bert")


def _configs(tmp_path, init, **overrides):
  config = FinetuneConfig(tasks=[TASK], init_checkpoint_dir=str(init), sequence_length=LENGTH,
                          epochs=None, seeds=(0,), write_test_predictions=False)
  config = dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                          if k in {f.name for f in dataclasses.fields(config)}})
  train = TrainConfig(model_dir=str(tmp_path), train_steps=overrides.get("train_steps", 2),
                      batch_size=ROWS, eval_batch_size=ROWS, log_every=1, progress_bar=False,
                      eval_every=0)
  return config, train, OptimizerConfig(learning_rate=1e-3, warmup_steps=0)


def _first_step_loss(run_dir) -> float:
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return next(r["train/loss"] for r in records if r["step"] == 1 and "train/loss" in r)


def test_rows_and_starting_logits_equal_transformers(tmp_path, bert_dir, mocked_glue):
  import transformers  # pylint: disable=import-outside-toplevel
  start = load_starting_point(str(bert_dir))
  config, train, optimizer = _configs(tmp_path, bert_dir)
  config = finetune.resolve_start(config, start)
  task = finetune.prepare_task(glue_spec.TASKS[TASK], config, train, optimizer, None, start)
  assert task.model.pooling == "cls"  # [CLS] starts every row: BERT's pooled head
  log = finetune_rows.TruncationLog("validation")
  batch, _ = next(iter(task.data.batches("validation", ROWS, log, shuffle=False, seed=0,
                                         repeat=False, limit=ROWS)))

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
  examples = list(tfds.load("glue/mrpc:2.0.0", split="validation").take(ROWS).as_numpy_iterator())
  encoded = tokenizer([e["sentence1"].decode() for e in examples],
                      [e["sentence2"].decode() for e in examples], truncation="longest_first",
                      max_length=LENGTH, padding="max_length", return_tensors="np")
  real = batch["segment_ids"] > 0
  np.testing.assert_array_equal(real, encoded["attention_mask"] > 0)
  np.testing.assert_array_equal(np.where(real, batch["input_ids"], 0), encoded["input_ids"])
  np.testing.assert_array_equal(np.where(real, batch["token_type_ids"], 0),
                                encoded["token_type_ids"])

  fresh = jax.device_get(nn.meta.unbox(task.model.init(jax.random.PRNGKey(1), 1, LENGTH)))
  params = task.init_params(fresh)
  ours = np.asarray(task.model.apply(params, batch))
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(bert_dir)).eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(encoded["input_ids"]),
                   token_type_ids=torch.tensor(encoded["token_type_ids"]),
                   attention_mask=torch.tensor(encoded["attention_mask"])).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.slow  # two fine-tunes and an export (~60 s); the starting logits test is the default one
def test_folder_and_converted_file_agree_and_the_export_predicts_the_same(tmp_path, bert_dir,
                                                                           mocked_glue):
  import transformers  # pylint: disable=import-outside-toplevel
  converted = tmp_path / "converted" / "bert.npz"
  converted.parent.mkdir()
  assert convert_cli.main(["import", "--family", "auto", "--hf_dir", str(bert_dir),
                           "--output", str(converted)]) == 0
  from_file = _configs(tmp_path / "from_file", converted, vocabulary=str(bert_dir), train_steps=1)
  finetune.run_finetune(*from_file)
  from_folder = _configs(tmp_path / "from_folder", bert_dir, export_hugging_face=True,
                         train_steps=3)
  finetune.run_finetune(*from_folder)
  seed_dir = tmp_path / "from_folder" / TASK / "seed_0"
  assert _first_step_loss(seed_dir) == pytest.approx(
      _first_step_loss(tmp_path / "from_file" / TASK / "seed_0"), abs=1e-6)

  exported = seed_dir / finetune.HF_EXPORT_DIR
  for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
    assert (exported / name).exists(), name
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
  assert [model.config.id2label[i] for i in range(2)] == list(glue_spec.TASKS[TASK].label_names)

  start = load_starting_point(str(bert_dir))
  config = finetune.resolve_start(from_folder[0], start)
  task = finetune.prepare_task(glue_spec.TASKS[TASK], config, from_folder[1], from_folder[2],
                               None, start)
  fresh = jax.device_get(nn.meta.unbox(task.model.init(jax.random.PRNGKey(1), 1, LENGTH)))
  best = jax.device_get(checkpointing.restore_best(str(seed_dir), jax.device_put(fresh)))
  log = finetune_rows.TruncationLog("validation")
  for batch, _ in task.data.batches("validation", ROWS, log, shuffle=False, seed=0, repeat=False,
                                    limit=None):
    ours = np.asarray(task.model.apply(best, batch))
    with torch.no_grad():
      theirs = model(input_ids=torch.tensor(batch["input_ids"]),
                     token_type_ids=torch.tensor(batch["token_type_ids"]),
                     attention_mask=torch.tensor(batch["segment_ids"])).logits.numpy()
    real = batch["weight"] > 0
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    np.testing.assert_array_equal(ours[real].argmax(-1), theirs[real].argmax(-1))
