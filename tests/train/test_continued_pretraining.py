"""Continued pretraining from Hugging Face folders: the first loss is transformers' loss, then it falls.

A tiny random ``BertForMaskedLM`` (WordPiece tokenizer) and ``T5ForConditionalGeneration``
(SentencePiece + 100 sentinels) are saved with their tokenizer files; the CLI
starts a train run from each folder (``--init_checkpoint``) with nothing else
about the model given. The network and the vocabulary come from the folder.
The loss of step 1 (dropout is off) must equal the loss PyTorch computes on the
same batch — rebuilt here from the same seed — and later steps must lower it.
Packed rows hold several documents (segments) that lmlab keeps apart with
segment ids; transformers is given each segment on its own, which is the same
computation.
"""

from __future__ import annotations

import gin
import numpy as np
import pytest
import torch

import hf_folders
from lmlab import main as cli
from lmlab import runs
from lmlab.data.corpus import CorpusTask
from lmlab.training.config import DataConfig
from lmlab.convert.starting_point import load_starting_point

TRAIN_STEPS = 20


def _text_file(tmp_path) -> str:
  """A user's corpus: one document per line."""
  path = tmp_path / "my_corpus.txt"
  path.write_text("\n".join(hf_folders.corpus_lines(300)) + "\n", encoding="utf-8")
  return str(path)


def _corpus(tmp_path, objective: str) -> CorpusTask:
  return CorpusTask(name=f"lmlab.test_continued_{objective}", train_files=(_text_file(tmp_path),),
                    objective=objective)


def _corpus_flags(corpus: CorpusTask) -> list[str]:
  return [f"--gin.MIXTURE_OR_TASK_NAME='{corpus.name}'", "--gin.DataConfig.corpus=@CorpusTask()",
          f"--gin.CorpusTask.name='{corpus.name}'",
          f"--gin.CorpusTask.train_files={list(corpus.train_files)!r}",
          f"--gin.CorpusTask.objective='{corpus.objective}'"]


def _run(tmp_path, gin_file: str, folder, *bindings: str):
  argv = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
          f"--init_checkpoint={folder}", f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=8",
          "--gin.WARMUP_STEPS=2", "--gin.TrainConfig.log_every=1",
          "--gin.TrainConfig.eval_every=0", "--gin.DataConfig.eval_split=''",
          "--gin.TrainConfig.progress_bar=False", *bindings]
  try:
    return cli.main(argv)
  finally:
    gin.clear_config(clear_constants=True)


def _first_batch(data: DataConfig, folder, model_dir) -> dict:
  """The first training batch of the run, rebuilt from the same seed."""
  start = load_starting_point(str(folder))
  _, resolved = runs.prepare(None, data, str(model_dir), start)
  batch = next(iter(runs.train_dataset(resolved, 8)))
  return {k: v.numpy() for k, v in batch.items()}


def _cross_entropy(logits: torch.Tensor, targets: np.ndarray, weights: np.ndarray) -> float:
  log_probs = torch.log_softmax(logits.double(), dim=-1).numpy()
  picked = np.take_along_axis(log_probs, targets[:, None].astype(np.int64), axis=-1)[:, 0]
  return float(-(picked * weights).sum())


def _segments(segment_ids: np.ndarray):
  for s in np.unique(segment_ids):
    if s > 0:
      yield np.nonzero(segment_ids == s)[0]


@pytest.fixture(scope="module")
def bert_mlm_dir(tmp_path_factory):
  return hf_folders.bert_folder(tmp_path_factory.mktemp("hf") / "bert", architecture="BertForMaskedLM")


def test_bert_folder_continues_masked_lm_pretraining(tmp_path, bert_mlm_dir):
  import transformers  # pylint: disable=import-outside-toplevel
  folder = bert_mlm_dir
  corpus = _corpus(tmp_path, "mlm")
  summary = _run(tmp_path, "runs/quickstart.gin", folder, "--gin.SEQUENCE_LENGTH=32",
                 "--gin.LEARNING_RATE=5e-3",
                 *_corpus_flags(corpus))
  batch = _first_batch(DataConfig(corpus=corpus, sequence_length=32, eval_split=""), folder,
                       tmp_path / "rebuild")
  cls_id = 2  # [CLS] of hf_folders.BERT_SPECIALS: every document starts with it
  assert all(batch["input_ids"][r, idx[0]] == cls_id for r in range(8)
             for idx in _segments(batch["segment_ids"][r]))
  model = transformers.BertForMaskedLM.from_pretrained(str(folder)).eval()
  total, weight = 0.0, 0.0
  with torch.no_grad():
    for r in range(8):
      for idx in _segments(batch["segment_ids"][r]):
        np.testing.assert_array_equal(batch["positions"][r, idx], np.arange(len(idx)))
        logits = model(input_ids=torch.tensor(batch["input_ids"][r, idx][None])).logits[0]
        total += _cross_entropy(logits, batch["targets"][r, idx], batch["loss_weights"][r, idx])
        weight += float(batch["loss_weights"][r, idx].sum())
  assert weight > 0
  assert summary.first_train_loss == pytest.approx(total / weight, abs=2e-4)
  assert summary.final_train_loss < summary.first_train_loss - 0.2


@pytest.mark.slow  # a T5 CLI run (~20 s); the BERT run is the default one
def test_t5_folder_continues_span_corruption_pretraining(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  folder = hf_folders.t5_folder(tmp_path / "t5")
  lengths = "{'inputs': 32, 'targets': 8}"
  corpus = _corpus(tmp_path, "span_corruption")
  summary = _run(tmp_path, "runs/t5_quickstart.gin", folder, f"--gin.TASK_FEATURE_LENGTHS={lengths}",
                 "--gin.OptimizerConfig.warmup_steps=2", *_corpus_flags(corpus))
  batch = _first_batch(DataConfig(corpus=corpus, task_feature_lengths={"inputs": 32, "targets": 8},
                                  eval_split=""), folder, tmp_path / "rebuild")
  model = transformers.T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
  total, weight = 0.0, 0.0
  with torch.no_grad():
    for r in range(8):
      for s in np.unique(batch["encoder_segment_ids"][r]):
        if s == 0:
          continue
        enc = np.nonzero(batch["encoder_segment_ids"][r] == s)[0]
        dec = np.nonzero(batch["decoder_segment_ids"][r] == s)[0]
        assert batch["decoder_input_tokens"][r, dec[0]] == 0  # decoding starts from pad, as in T5
        logits = model(input_ids=torch.tensor(batch["encoder_input_tokens"][r, enc][None]),
                       decoder_input_ids=torch.tensor(batch["decoder_input_tokens"][r, dec][None])
                       ).logits[0]
        total += _cross_entropy(logits, batch["decoder_target_tokens"][r, dec],
                                batch["decoder_loss_weights"][r, dec])
        weight += float(batch["decoder_loss_weights"][r, dec].sum())
  assert weight > 0
  assert summary.first_train_loss == pytest.approx(total / weight, abs=2e-4)
  assert summary.final_train_loss < summary.first_train_loss - 0.2


def test_a_vocabulary_larger_than_the_embedding_is_refused(tmp_path, bert_mlm_dir):
  start = load_starting_point(str(bert_mlm_dir))
  data = DataConfig(mixture_or_task_name="lmlab.embedded_mlm", vocabulary="embedded")
  with pytest.raises(ValueError, match=r"has 8192 ids but the network's embedding has only \d+ rows"):
    runs.prepare(None, data, str(tmp_path), start)


def test_a_folder_without_tokenizer_files_is_refused_naming_them(tmp_path, bert_mlm_dir):
  import shutil  # pylint: disable=import-outside-toplevel
  bare = tmp_path / "no_tokenizer"
  bare.mkdir()
  for name in ("config.json", "model.safetensors"):
    shutil.copy(bert_mlm_dir / name, bare / name)
  start = load_starting_point(str(bare))
  data = DataConfig(mixture_or_task_name="lmlab.embedded_mlm")
  with pytest.raises(FileNotFoundError, match=r"vocab\.txt") as error:
    runs.prepare(None, data, str(tmp_path / "run"), start)
  assert str(bare) in str(error.value)


def test_a_t5_encoder_folder_starts_a_full_model_with_a_fresh_decoder(tmp_path):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from lmlab.wrappers.encoder_decoder import EncoderDecoderModel  # pylint: disable=import-outside-toplevel
  start = load_starting_point(str(hf_folders.t5_folder(tmp_path / "t5_encoder", encoder_only=True)))
  assert "decoder" in start.missing
  model = EncoderDecoderModel(start.network)
  fresh = jax.device_get(nn.meta.unbox(model.init(jax.random.PRNGKey(0), 1)))
  params = runs.graft_start(model, start)(fresh)
  np.testing.assert_array_equal(params["encoder"]["final_norm"]["scale"],
                                start.params["encoder"]["final_norm"]["scale"])
  np.testing.assert_array_equal(params["decoder"]["final_norm"]["scale"],
                                fresh["decoder"]["final_norm"]["scale"])
