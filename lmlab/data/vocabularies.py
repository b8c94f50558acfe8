"""Vocabularies of the lmlab tasks and their special ids.

Two vocabularies ship with the package: an 8k SentencePiece model trained on
the embedded corpus (``build_vocabulary.py``) and seqio's ``ByteVocabulary``
(UTF-8 bytes offset by 3, as in ByT5). Masked-language modelling needs a mask
id in each: the SentencePiece model has a ``<mask>`` piece; the byte
vocabulary gets one extra id at the top.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import seqio

SPM_PATH = pathlib.Path(__file__).parent / "assets" / "spm" / "embedded_8k.model"
MASK_PIECE = "<mask>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BYTE_OFFSET = 3  # ByteVocabulary: ids 0..2 are pad/eos/unk, byte b is id b + 3


@functools.lru_cache(maxsize=None)
def embedded_vocabulary() -> seqio.SentencePieceVocabulary:
  """The 8k SentencePiece vocabulary trained on the embedded corpus."""
  if not SPM_PATH.exists():
    raise FileNotFoundError(f"{SPM_PATH} is missing: rebuild it with `python -m lmlab.data.build_vocabulary`.")
  return seqio.SentencePieceVocabulary(str(SPM_PATH))


@functools.lru_cache(maxsize=None)
def byte_vocabulary() -> seqio.ByteVocabulary:
  """UTF-8 bytes, with one extra id (the top one) used as the mask token."""
  return seqio.ByteVocabulary(extra_ids=1)


def mask_id(vocab: seqio.Vocabulary) -> int:
  """The id that replaces tokens chosen for masked-language modelling."""
  if isinstance(vocab, seqio.ByteVocabulary):
    if vocab.extra_ids < 1:
      raise ValueError("ByteVocabulary needs extra_ids >= 1 to hold a mask id; use byte_vocabulary().")
    return vocab.vocab_size - 1
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    piece_id = vocab.tokenizer.piece_to_id(MASK_PIECE)
    if piece_id == vocab.tokenizer.unk_id():
      raise ValueError(f"SentencePiece model {vocab.sentencepiece_model_file} has no {MASK_PIECE!r} piece.")
    return piece_id
  raise TypeError(f"No mask id is defined for {type(vocab).__name__}.")


def random_token_range(vocab: seqio.Vocabulary) -> tuple[int, int]:
  """[low, high) ids of ordinary tokens, used for BERT's random replacement."""
  if isinstance(vocab, seqio.ByteVocabulary):
    return BYTE_OFFSET, BYTE_OFFSET + 256
  return mask_id(vocab) + 1, vocab.tokenizer.get_piece_size()


def word_start_table(vocab: seqio.Vocabulary) -> np.ndarray:
  """Boolean per id: does this token start a new word?

  SentencePiece marks word starts with a leading "▁". For bytes a word is a
  run of non-space bytes, so the table marks whitespace bytes; the masking
  code treats the byte after whitespace as the word start (see
  ``preprocessors.word_ids``). Special ids count as word starts so they never
  glue two words together.
  """
  size = vocab.vocab_size
  table = np.zeros(size, bool)
  if isinstance(vocab, seqio.ByteVocabulary):
    for byte in b" \t\n\r":
      table[byte + BYTE_OFFSET] = True
    table[:BYTE_OFFSET] = True
    table[BYTE_OFFSET + 256:] = True
    return table
  tokenizer = vocab.tokenizer
  for i in range(tokenizer.get_piece_size()):
    piece = tokenizer.id_to_piece(i)
    table[i] = piece.startswith("\u2581") or tokenizer.is_control(i) or tokenizer.is_unknown(i)
  table[mask_id(vocab)] = True
  return table
