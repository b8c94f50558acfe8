"""Tiny Hugging Face model folders (random weights + tokenizer files) built offline for tests.

Each builder trains a small tokenizer on the embedded corpus (or reuses the
shipped SentencePiece model), creates a randomly initialised ``transformers``
model of a tiny configuration, and saves both with ``save_pretrained`` into one
folder: exactly what a user downloads from the Hub, minus the size. Dropout is
off so that losses computed by lmlab and by PyTorch can be compared.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
from typing import Optional

import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EMBEDDED = REPO_ROOT / "lmlab" / "data" / "assets" / "embedded" / "train.txt.gz"
SPM_MODEL = REPO_ROOT / "lmlab" / "data" / "assets" / "spm" / "embedded_8k.model"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_lines(limit: int = 2000) -> list[str]:
  """The first lines of the embedded corpus (public-domain text)."""
  with gzip.open(EMBEDDED, "rt", encoding="utf-8") as f:
    return [line.strip() for _, line in zip(range(limit), f) if line.strip()]


def wordpiece_vocab(folder: pathlib.Path, size: int = 600, lowercase: bool = True) -> pathlib.Path:
  """Trains a WordPiece vocabulary on the corpus and writes ``folder/vocab.txt``."""
  from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
  tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
  tokenizer.train_from_iterator(corpus_lines(), vocab_size=size, special_tokens=BERT_SPECIALS,
                                show_progress=False)
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save_model(str(folder))
  return folder / "vocab.txt"


def bert_folder(folder: pathlib.Path, architecture: str = "BertForSequenceClassification",
                num_labels: int = 2, seed: int = 0, id2label: Optional[dict] = None) -> pathlib.Path:
  """A tiny BERT (``architecture`` from transformers) with its WordPiece tokenizer files."""
  import transformers  # pylint: disable=import-outside-toplevel
  vocab_file = wordpiece_vocab(folder)
  # transformers 5 reads the file from `vocab`, 4 from `vocab_file`.
  tokenizer = transformers.BertTokenizerFast(vocab=str(vocab_file), vocab_file=str(vocab_file),
                                             do_lower_case=True)
  assert len(tokenizer) == sum(1 for _ in open(vocab_file, encoding="utf-8")), len(tokenizer)
  tokenizer.save_pretrained(str(folder))
  config = transformers.BertConfig(
      vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, num_labels=num_labels,
      **({"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}
         if id2label else {}))
  torch.manual_seed(seed)
  model = getattr(transformers, architecture)(config).eval()
  model.save_pretrained(str(folder), safe_serialization=True)
  return folder


def t5_folder(folder: pathlib.Path, seed: int = 0, encoder_only: bool = False) -> pathlib.Path:
  """A tiny T5 v1.1 (gated-GELU, untied) with the shipped 8k SentencePiece model + 100 sentinels.

  ``encoder_only`` saves a ``T5EncoderModel`` (no decoder) instead.
  """
  import transformers  # pylint: disable=import-outside-toplevel
  folder.mkdir(parents=True, exist_ok=True)
  # What released T5 folders ship for the tokenizer: the SentencePiece model and a config
  # naming the 100 sentinels (<extra_id_0> is the last id).
  shutil.copy(SPM_MODEL, folder / "spiece.model")
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "T5Tokenizer", "extra_ids": 100, "eos_token": "</s>", "pad_token": "<pad>",
       "unk_token": "<unk>", "legacy": True}), encoding="utf-8")
  config = transformers.T5Config(
      vocab_size=8320, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2,
      num_heads=2, relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  torch.manual_seed(seed)
  architecture = transformers.T5EncoderModel if encoder_only else transformers.T5ForConditionalGeneration
  model = architecture(config).eval()
  model.save_pretrained(str(folder), safe_serialization=True)
  return folder
