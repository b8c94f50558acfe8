"""Vocabularies of the lmlab tasks and their special ids.

Two vocabularies ship with the package: an 8k SentencePiece model trained on
the embedded corpus (``build_vocabulary.py``) and seqio's ``ByteVocabulary``
(UTF-8 bytes offset by 3, as in ByT5). Masked-language modelling needs a mask
id in each: the SentencePiece model has a ``<mask>`` piece; the byte
vocabulary gets one extra id at the top.

Span corruption (T5, ByT5) replaces each noise span by a sentinel. seqio puts
a vocabulary's ``extra_ids`` at the top of the id range, and sentinel ``i`` is
the ``i``-th id counting down from the top, so the ``*_with_sentinels`` /
``byt5_vocabulary`` variants below add enough extra ids that no sentinel can
be mistaken for a real token.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Union

import numpy as np
import seqio

SPM_PATH = pathlib.Path(__file__).parent / "assets" / "spm" / "embedded_8k.model"
MASK_PIECE = "<mask>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
BYTE_OFFSET = 3  # ByteVocabulary: ids 0..2 are pad/eos/unk, byte b is id b + 3
SPM_SENTINELS = 100  # T5's number of extra ids
BYT5_SENTINELS = 125  # 259 byte ids + 125 = 384, ByT5's (padded) embedding size
SENTENCE_END_CHARS = (".", "!", "?")
CLOSING_CHARS = "\"')]}\u2019\u201d\u00bb"  # may follow a sentence end: ."  ?)  !'


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


@functools.lru_cache(maxsize=None)
def embedded_vocabulary_with_sentinels() -> seqio.SentencePieceVocabulary:
  """The 8k SentencePiece model plus 100 sentinel ids at the top (T5 span corruption).

  Ids below 8192 are exactly those of ``embedded_vocabulary()`` (including
  the ``<mask>`` piece); ids 8192..8291 are ``<extra_id_99>``..``<extra_id_0>``.
  """
  if not SPM_PATH.exists():
    raise FileNotFoundError(f"{SPM_PATH} is missing: rebuild it with `python -m lmlab.data.build_vocabulary`.")
  return seqio.SentencePieceVocabulary(str(SPM_PATH), extra_ids=SPM_SENTINELS)


@functools.lru_cache(maxsize=None)
def byt5_vocabulary() -> seqio.ByteVocabulary:
  """ByT5's vocabulary: pad 0, EOS 1, UNK 2, byte b = b + 3, then 125 sentinels (384 ids)."""
  return seqio.ByteVocabulary(extra_ids=BYT5_SENTINELS)


def sentinel_id(vocab: seqio.Vocabulary, index: int) -> int:
  """Id of sentinel ``index`` (0-based): the ``index``-th id counting down from the top.

  This is seqio's (and T5's) convention: sentinel 0 is ``<extra_id_0>``, the
  last id of the vocabulary. Only the vocabulary's ``extra_ids`` may serve as
  sentinels, since lower ids are real tokens.

  Raises:
    ValueError: ``index`` is not below ``vocab.extra_ids``.
  """
  if not 0 <= index < vocab.extra_ids:
    raise ValueError(f"Sentinel {index} does not exist: the vocabulary has extra_ids={vocab.extra_ids}, "
                     f"so sentinels 0..{vocab.extra_ids - 1} are available. Use a vocabulary with more "
                     "extra ids (e.g. embedded_vocabulary_with_sentinels() or byt5_vocabulary()).")
  return vocab.vocab_size - 1 - index


def mask_id(vocab: seqio.Vocabulary) -> int:
  """The id that replaces tokens chosen for masked-language modelling.

  For a ``ByteVocabulary`` this is the top extra id; in ``byt5_vocabulary()``
  that id is also sentinel 0, which T5-style models read as "something is
  missing here" anyway.
  """
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
  # Sentinels (extra ids, at the top) are not ordinary tokens.
  return mask_id(vocab) + 1, vocab.tokenizer.get_piece_size() - vocab.extra_ids


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
  table[size - vocab.extra_ids:] = True
  return table


def sentence_end_table(vocab: seqio.Vocabulary) -> np.ndarray:
  """Boolean per id: can this token end a sentence?

  A token can end a sentence when its text ends in ".", "!" or "?", possibly
  followed by closing quotes or brackets (SentencePiece has pieces such as
  ``."`` and ``?'``). The denoising code only accepts such a token as a
  sentence end when the next token starts a word (or the row ends), so
  "3.14" or "e.g.," do not split a sentence. Special ids and sentinels never
  end a sentence.
  """
  table = np.zeros(vocab.vocab_size, bool)
  if isinstance(vocab, seqio.ByteVocabulary):
    for char in SENTENCE_END_CHARS:
      table[ord(char) + BYTE_OFFSET] = True
    return table
  tokenizer = vocab.tokenizer
  for i in range(tokenizer.get_piece_size() - vocab.extra_ids):
    if tokenizer.is_control(i) or tokenizer.is_unknown(i) or tokenizer.is_byte(i):
      continue
    text = tokenizer.id_to_piece(i).lstrip("\u2581").rstrip(CLOSING_CHARS)
    table[i] = text.endswith(SENTENCE_END_CHARS)
  return table


def encode_text(vocab: seqio.Vocabulary, text: Union[str, bytes]) -> list[int]:
  """Token ids of ``text`` (no EOS), refusing input that is not valid UTF-8.

  Raw bytes (say, a line read from a file in binary mode) are decoded as
  UTF-8 first. Invalid bytes would otherwise be replaced silently or fail
  deep inside a tokenizer; here they raise an error saying where they are.

  Raises:
    ValueError: ``text`` is bytes that are not valid UTF-8, or a string that
      cannot be written as UTF-8 (lone surrogates).
  """
  if isinstance(text, (bytes, bytearray)):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"Input is not valid UTF-8 ({e.reason} at byte {e.start}: "
                       f"{bytes(text)[e.start:e.end]!r}); re-encode it as UTF-8.") from e
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"Input has characters that cannot be written as UTF-8 ({e.reason} at character "
                     f"{e.start}); remove them or decode the source text correctly.") from e
  return [int(i) for i in vocab.encode(text)]
