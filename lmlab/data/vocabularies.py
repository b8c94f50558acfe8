"""Vocabularies of the lmlab tasks and their special ids.

Two vocabularies ship with the package: an 8k SentencePiece model trained on
the embedded corpus (``build_vocabulary.py``) and seqio's ``ByteVocabulary``
(UTF-8 bytes offset by 3, as in ByT5). Masked-language modelling needs a mask
id in each: the SentencePiece model has a ``<mask>`` piece; the byte
vocabulary gets one extra id at the top.

Span corruption (T5, ByT5) replaces each noise span by a sentinel: sentinel
``i`` is the ``i``-th id counting down from the top of the vocabulary (T5's
and seqio's convention). For SentencePiece the top ids are ``extra_ids``
added for the purpose (``embedded_vocabulary_with_sentinels``). ByT5 was
released differently: it was pretrained with a plain ``ByteVocabulary()``
(259 ids, no extra ids), so its sentinels are the top *byte* ids 258, 257,
... (bytes 0xFF, 0xFE, ..., which never occur in UTF-8 text), exactly what
the MrT5 reference (``first_sentinel=258``) uses. ``byt5_vocabulary()``
follows that layout; the embedding table still has 384 rows (259 rounded up
to a multiple of 128), of which the checkpoints only ever trained the first
259.
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
BYT5_EMBEDDING_ROWS = 384  # released ByT5: 259 ids padded to a multiple of 128
# Bytes 0xF5..0xFF never occur in valid UTF-8, so the 11 top byte ids can stand for
# sentinels 0..10 without ever meaning text (ByT5's 1024-byte inputs need 9).
BYTE_SENTINELS = 256 - 0xF5
BYT5_LEGACY_EXTRA_IDS = 125  # the old lmlab layout: 259 + 125 = 384 ids, sentinels from 383 down
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
  """Released ByT5's vocabulary: pad 0, EOS 1, UNK 2, byte b = b + 3 (259 ids, no extra ids).

  Sentinel j is id ``258 - j`` (byte ``0xFF - j``), as in ByT5's and MrT5's
  pretraining; see ``num_sentinels`` for how many are safe. Models size
  their embedding to ``BYT5_EMBEDDING_ROWS`` (384) regardless.
  """
  return seqio.ByteVocabulary()


@functools.lru_cache(maxsize=None)
def byt5_legacy_vocabulary() -> seqio.ByteVocabulary:
  """The layout lmlab used before: 259 byte ids plus 125 extra ids (384 ids), sentinel j = 383 - j.

  Not what released ByT5/MrT5 checkpoints saw: their sentinels are 258, 257,
  ..., and rows 259..383 were never trained. Useful only to train from
  scratch with more than ``BYTE_SENTINELS`` noise spans per example (e.g. a
  mean span of 3 bytes) or to keep reading data made for a model pretrained
  with this layout.
  """
  return seqio.ByteVocabulary(extra_ids=BYT5_LEGACY_EXTRA_IDS)


def num_sentinels(vocab: seqio.Vocabulary) -> int:
  """How many sentinels ``vocab`` offers without any of them meaning real text.

  A vocabulary's ``extra_ids`` when it has some. A ``ByteVocabulary``
  without extra ids (released ByT5) uses its top byte ids instead, which is
  safe for the bytes 0xF5..0xFF that UTF-8 never produces: 11 sentinels.
  """
  if vocab.extra_ids:
    return vocab.extra_ids
  if isinstance(vocab, seqio.ByteVocabulary):
    return BYTE_SENTINELS
  return 0


def sentinel_id(vocab: seqio.Vocabulary, index: int) -> int:
  """Id of sentinel ``index`` (0-based): the ``index``-th id counting down from the top.

  This is seqio's (and T5's) convention: sentinel 0 is the last id of the
  vocabulary (``<extra_id_0>`` for SentencePiece, 258 for ByT5's bytes).
  Only ``num_sentinels(vocab)`` of them exist, since lower ids are real
  tokens.

  Raises:
    ValueError: ``index`` is not below ``num_sentinels(vocab)``.
  """
  available = num_sentinels(vocab)
  if not 0 <= index < available:
    raise ValueError(f"Sentinel {index} does not exist: the vocabulary (extra_ids={vocab.extra_ids}) has "
                     f"sentinels 0..{available - 1} only. Use a vocabulary with more extra ids (e.g. "
                     "embedded_vocabulary_with_sentinels() or byt5_legacy_vocabulary()).")
  return vocab.vocab_size - 1 - index


def mask_id(vocab: seqio.Vocabulary) -> int:
  """The id that replaces tokens chosen for masked-language modelling.

  For a ``ByteVocabulary`` this is the top extra id (``byte_vocabulary()``
  has one for the purpose; ``byt5_vocabulary()`` has none).
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
