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

Released checkpoints come with their own tokenizer files. ``load_vocabulary``
reads them (a SentencePiece ``.model``, BERT's ``vocab.txt``, a Hugging Face
``tokenizer.json`` or a model folder holding them; see ``tokenizer_files``) and
gives a seqio vocabulary whose ids are those of the Hugging Face tokenizer.
Each vocabulary names its special ids in a ``SpecialTokens`` (``special_tokens``):
what ends a document, what starts an encoder input, what masks a token.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Optional, Union

import numpy as np
import seqio
import tensorflow as tf

from lmlab.data import tokenizer_files
# Re-exported: the rest of lmlab finds these here.
# pylint: disable-next=unused-import
from lmlab.data.vocabulary_base import (CLOSING_CHARS, SENTENCE_END_CHARS, SpecialTokens, TokenizerFileVocabulary,
                                        clean_up_spaces, digest, ends_sentence)

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


def _sentencepiece_mask_id(vocab: seqio.SentencePieceVocabulary) -> Optional[int]:
  piece_id = vocab.tokenizer.piece_to_id(MASK_PIECE)
  return None if piece_id == vocab.tokenizer.unk_id() else piece_id


def special_tokens(vocab: seqio.Vocabulary) -> SpecialTokens:
  """The special ids of any vocabulary lmlab uses (see ``SpecialTokens``).

  * lmlab's SentencePiece model and T5's ``spiece.model``: pad 0, EOS 1, UNK
    2, mask the ``<mask>`` piece (None without one), no cls.
  * ``ByteVocabulary``: pad 0, EOS 1, UNK 2, mask the top extra id
    (``byte_vocabulary()``; None for ``byt5_vocabulary()``), no cls.
  * Vocabularies of tokenizer files (WordPiece, tokenizer.json): those of the
    files, e.g. BERT's ``[PAD]``, ``[SEP]``, ``[UNK]``, ``[MASK]``, ``[CLS]``.

  Raises:
    ValueError: A SentencePiece model without an EOS piece.
  """
  if isinstance(vocab, TokenizerFileVocabulary):
    return vocab.special_tokens()
  if isinstance(vocab, seqio.ByteVocabulary):
    mask = vocab.vocab_size - 1 if vocab.extra_ids >= 1 else None
    return SpecialTokens(PAD_ID, EOS_ID, UNK_ID, mask, None)
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    sp = vocab.tokenizer
    if sp.eos_id() < 0:
      raise ValueError(f"SentencePiece model {vocab.sentencepiece_model_file} has no EOS piece; train it with "
                       "eos_id=1 (as T5 and lmlab do).")
    pad = sp.pad_id() if sp.pad_id() >= 0 else PAD_ID
    unk = sp.unk_id() if sp.unk_id() >= 0 else None
    return SpecialTokens(pad, sp.eos_id(), unk, _sentencepiece_mask_id(vocab), None)
  eos = EOS_ID if vocab.eos_id is None else int(vocab.eos_id)
  return SpecialTokens(int(vocab.pad_id), eos, vocab.unk_id, None, None)


def mask_id(vocab: seqio.Vocabulary) -> int:
  """The id that replaces tokens chosen for masked-language modelling.

  For a ``ByteVocabulary`` this is the top extra id (``byte_vocabulary()``
  has one for the purpose; ``byt5_vocabulary()`` has none); for
  SentencePiece the ``<mask>`` piece; for tokenizer files their mask token.

  Raises:
    ValueError: The vocabulary has no mask token.
  """
  mask = special_tokens(vocab).mask_id
  if mask is not None:
    return mask
  if isinstance(vocab, seqio.ByteVocabulary):
    raise ValueError("ByteVocabulary needs extra_ids >= 1 to hold a mask id; use byte_vocabulary().")
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    raise ValueError(f"SentencePiece model {vocab.sentencepiece_model_file} has no {MASK_PIECE!r} piece; train "
                     f"one with user_defined_symbols=[{MASK_PIECE!r}] (python -m lmlab.data.build_vocabulary).")
  raise ValueError(f"Vocabulary {vocabulary_name(vocab)} has no mask token; masked-language modelling needs one.")


def random_token_range(vocab: seqio.Vocabulary) -> tuple[int, int]:
  """[low, high) ids of ordinary tokens, used for BERT's random replacement.

  Bytes: the 256 byte ids. SentencePiece: the ids after the leading special
  pieces (pad, EOS, UNK, ``<mask>``) up to the sentinels. Tokenizer files: the
  longest run of ids without a special token (BERT: after ``[MASK]``; RoBERTa:
  between ``<unk>`` and ``<mask>``).
  """
  if isinstance(vocab, seqio.ByteVocabulary):
    return BYTE_OFFSET, BYTE_OFFSET + 256
  if isinstance(vocab, TokenizerFileVocabulary):
    return vocab.random_token_range()
  # Sentinels (extra ids, at the top) are not ordinary tokens.
  high = vocab.tokenizer.get_piece_size() - vocab.extra_ids
  leading = [i for i in special_tokens(vocab).ids | {vocab.tokenizer.bos_id()} if 0 <= i < high]
  return max(leading, default=-1) + 1, high


def word_start_table(vocab: seqio.Vocabulary) -> np.ndarray:
  """Boolean per id: does this token start a new word?

  SentencePiece marks word starts with a leading "▁". For bytes a word is a
  run of non-space bytes, so the table marks whitespace bytes; the masking
  code treats the byte after whitespace as the word start (see
  ``preprocessors.word_ids``). Special ids count as word starts so they never
  glue two words together.
  """
  if isinstance(vocab, TokenizerFileVocabulary):
    return vocab.word_start_table()
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
  mask = _sentencepiece_mask_id(vocab)
  if mask is not None:
    table[mask] = True
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
  if isinstance(vocab, TokenizerFileVocabulary):
    return vocab.sentence_end_table()
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


NAMED_VOCABULARIES = {
    "embedded": embedded_vocabulary,
    "embedded_sentinels": embedded_vocabulary_with_sentinels,
    "bytes": byte_vocabulary,
    "byt5": byt5_vocabulary,
}


def load_vocabulary(spec: str) -> seqio.Vocabulary:
  """The vocabulary a name or a path stands for; the same spec always gives the same object.

  Args:
    spec: One of ``NAMED_VOCABULARIES`` (``"embedded"``, ``"embedded_sentinels"``,
      ``"bytes"``, ``"byt5"``), or the path of a tokenizer file or of a
      Hugging Face model folder: a SentencePiece ``.model`` (T5's
      ``spiece.model``, with the folder's sentinels), BERT's ``vocab.txt``, a
      ``tokenizer.json``, or a folder holding one of them (see
      ``tokenizer_files.load``). Settings come from the folder's
      ``tokenizer_config.json`` and ``special_tokens_map.json``.

  Raises:
    FileNotFoundError: ``spec`` is neither a name nor an existing path, or a
      folder holds no tokenizer file (the message lists the names looked for).
    ValueError: The files are of a kind lmlab cannot reproduce.
  """
  if spec in NAMED_VOCABULARIES:
    return NAMED_VOCABULARIES[spec]()
  path = spec if "://" in spec else os.path.abspath(os.path.expanduser(spec))
  return _load_path(path)


@functools.lru_cache(maxsize=None)
def _load_path(path: str) -> seqio.Vocabulary:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} is neither a vocabulary name ({', '.join(NAMED_VOCABULARIES)}) nor an existing "
                            "tokenizer file or model folder.")
  return tokenizer_files.load(path)


def vocabulary_name(vocab: seqio.Vocabulary) -> str:
  """A short stable identifier of a vocabulary, to name seqio tasks derived from it.

  Named vocabularies keep their names (``embedded``, ``embedded_sentinels``,
  ``bytes``, ``byt5``); others are their kind and a digest of their files'
  contents and settings, e.g. ``spm_1a2b3c4d5e6f_x100`` (100 sentinels),
  ``wordpiece_...``, ``bpe_...``. Equal names mean equal ids for any text.
  """
  if isinstance(vocab, TokenizerFileVocabulary):
    return vocab.name
  if isinstance(vocab, seqio.ByteVocabulary):
    return {0: "byt5", 1: "bytes"}.get(vocab.extra_ids, f"bytes_x{vocab.extra_ids}")
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    model = vocab.sentencepiece_model_file
    if os.path.abspath(model) == str(SPM_PATH):
      return {0: "embedded", SPM_SENTINELS: "embedded_sentinels"}.get(vocab.extra_ids,
                                                                      f"embedded_x{vocab.extra_ids}")
    with tf.io.gfile.GFile(model, "rb") as f:
      name = f"spm_{digest(f.read())}"
    return name + (f"_x{vocab.extra_ids}" if vocab.extra_ids else "")
  raise TypeError(f"vocabulary_name does not know {type(vocab).__name__}; use one of lmlab's vocabularies "
                  "(load_vocabulary).")
