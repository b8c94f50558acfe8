"""BERT's WordPiece vocabulary (``vocab.txt``) as a seqio vocabulary that tokenizes inside tf.data.

The ids are those of Hugging Face's ``BertTokenizer`` built from the same
files (with ``add_special_tokens=False``), for cased and uncased checkpoints
alike. Tokenization runs in TensorFlow ops, so a tf.data pipeline stays
parallel and its iterators stay checkpointable:

1. Special tokens written in the text (``[MASK]``, ``[SEP]``, ...) are cut
   out first and keep their ids, as Hugging Face matches them in raw text.
2. The rest is normalized and split into words as ``BertNormalizer`` and
   ``BertPreTokenizer`` do (``bert_text``): control characters dropped,
   accents stripped and lowercased when the checkpoint is uncased, CJK
   ideographs and punctuation made words of their own.
3. Each word becomes pieces by greedy longest-match-first WordPiece
   (tensorflow-text's ``FastWordpieceTokenizer``): the first piece as is, the
   following ones with the ``##`` prefix; a word without such a split, or
   longer than ``max_input_chars_per_word`` characters, becomes ``[UNK]``.

Decoding joins the pieces as Hugging Face's WordPiece decoder does: a space
before each token except those continuing a word (``##``), no space before
``. , ! ?``. Padding, ``[CLS]`` and ``[SEP]`` are left out of the text (seqio
decodes up to the first EOS, which here is ``[SEP]``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from lmlab.data import bert_text, vocabulary_base

PREFIX = "##"
MAX_INPUT_CHARS_PER_WORD = 100
MAX_BYTES_PER_WORD = 1 << 20  # the character limit is applied before; this only has to be out of the way


@dataclasses.dataclass(frozen=True)
class WordPieceSettings:
  """How a BERT checkpoint tokenizes (its ``tokenizer_config.json`` / ``tokenizer.json``).

  Attributes:
    lowercase: ``do_lower_case``: True for uncased checkpoints.
    strip_accents: None follows ``lowercase`` (as BERT does).
    handle_chinese_chars: ``tokenize_chinese_chars``.
    clean_text: Drop control characters and turn whitespace into spaces.
    unk_token, sep_token, pad_token, cls_token, mask_token: The special
      tokens; ``mask_token`` may be None.
    extra_special_tokens: Further special tokens of the vocabulary (matched
      in the text like the others).
    continuing_subword_prefix: Marks pieces that continue a word.
    max_input_chars_per_word: Longer words become the unknown token.
    decoder_cleanup: Remove the space before ``. , ! ?`` when decoding (the
      WordPiece decoder's ``cleanup``).
    clean_up_tokenization_spaces: Also apply Hugging Face's clean-up to the
      whole decoded text (contractions; ``tokenizer_config.json``).
  """
  lowercase: bool = True
  strip_accents: Optional[bool] = None
  handle_chinese_chars: bool = True
  clean_text: bool = True
  unk_token: str = "[UNK]"
  sep_token: str = "[SEP]"
  pad_token: str = "[PAD]"
  cls_token: str = "[CLS]"
  mask_token: Optional[str] = "[MASK]"
  extra_special_tokens: tuple[str, ...] = ()
  continuing_subword_prefix: str = PREFIX
  max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD
  decoder_cleanup: bool = True
  clean_up_tokenization_spaces: bool = False


def read_vocab_txt(data: bytes) -> list[str]:
  """The tokens of a ``vocab.txt``, one per line (id = line number), without the line breaks.

  Lines end at ``\\n``, ``\\r\\n`` or ``\\r``, as Python's text files (and so
  Hugging Face) read them; nothing else is stripped.
  """
  with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f.readlines()]


def _regex_literal(text: str) -> str:
  """An RE2 pattern matching exactly ``text``."""
  return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


class WordPieceVocabulary(vocabulary_base.TokenizerFileVocabulary):
  """A BERT WordPiece vocabulary with Hugging Face's ids; see the module docstring.

  Attributes:
    tokens: The token of each id.
    settings: How text is normalized and split.
  """

  def __init__(self, tokens: Sequence[str], settings: WordPieceSettings = WordPieceSettings(), *,
               pair_separator: Sequence[str] = ()):
    """Makes the vocabulary.

    Args:
      tokens: The token of each id (``vocab.txt``'s lines). A token listed
        twice has the id of its last line, as in Hugging Face.
      settings: The checkpoint's settings.
      pair_separator: Tokens between sentence A's ``[SEP]`` and sentence B
        (none for BERT).

    Raises:
      ValueError: A special token is missing from ``tokens``.
    """
    super().__init__()
    self.tokens = list(tokens)
    self.settings = settings
    self._ids = {token: i for i, token in enumerate(self.tokens)}
    self._pair_separator = tuple(pair_separator)
    for role in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
      token = getattr(settings, role)
      if token is not None and token not in self._ids:
        raise ValueError(f"The WordPiece vocabulary has no {role} {token!r} (settings: {settings}); give the "
                         "checkpoint's tokenizer_config.json or the right special token names.")
    missing = [t for t in (*settings.extra_special_tokens, *self._pair_separator) if t not in self._ids]
    if missing:
      raise ValueError(f"Special tokens {missing} are not in the WordPiece vocabulary; lmlab cannot give them ids.")

  @functools.cached_property
  def name(self) -> str:
    return "wordpiece_" + vocabulary_base.digest("\n".join(self.tokens), repr(self.settings),
                                              repr(self._pair_separator))

  def __getstate__(self):
    state = self.__dict__.copy()
    for cached in ("_model_buffer", "_tables", "name", "_special", "_token_bytes", "_encode_function"):
      state.pop(cached, None)
    return state

  def _id(self, token: Optional[str]) -> Optional[int]:
    return None if token is None else self._ids[token]

  @functools.cached_property
  def _special(self) -> vocabulary_base.SpecialTokens:
    s = self.settings
    return vocabulary_base.SpecialTokens(
        pad_id=self._id(s.pad_token), eos_id=self._id(s.sep_token), unk_id=self._id(s.unk_token),
        mask_id=self._id(s.mask_token), cls_id=self._id(s.cls_token),
        pair_separator=tuple(self._ids[t] for t in self._pair_separator))

  def special_tokens(self) -> vocabulary_base.SpecialTokens:
    return self._special

  def _special_token_strings(self) -> list[str]:
    s = self.settings
    roles = (s.unk_token, s.sep_token, s.pad_token, s.cls_token, s.mask_token, *s.extra_special_tokens)
    return sorted({t for t in roles if t}, key=lambda t: (-len(t), t))  # longest first: leftmost-longest match

  def reserved_ids(self) -> frozenset[int]:
    return self._special.ids | {self._ids[t] for t in self._special_token_strings()}

  def pieces(self) -> list[str]:
    return list(self.tokens)

  @property
  def _base_vocab_size(self) -> int:
    return len(self.tokens)

  def word_start_table(self) -> np.ndarray:
    """A token starts a word unless it continues one (``##...``); special tokens are words."""
    prefix = self.settings.continuing_subword_prefix
    table = np.array([not t.startswith(prefix) for t in self.tokens], bool)
    table[list(self.reserved_ids())] = True
    return table

  def sentence_end_table(self) -> np.ndarray:
    prefix = self.settings.continuing_subword_prefix
    table = np.array([vocabulary_base.ends_sentence(t[len(prefix):] if t.startswith(prefix) else t)
                      for t in self.tokens], bool)
    table[list(self.reserved_ids())] = False
    return table

  # Encoding.

  @functools.cached_property
  def _tables(self) -> bert_text.CharacterTables:
    s = self.settings
    strip = s.lowercase if s.strip_accents is None else s.strip_accents
    return bert_text.character_tables(lowercase=s.lowercase, strip_accents=strip,
                                      handle_chinese_chars=s.handle_chinese_chars, clean_text=s.clean_text)

  @functools.cached_property
  def _model_buffer(self) -> bytes:
    # tensorflow-text wants unique tokens; an earlier duplicate (Hugging Face keeps the last id) and the
    # empty token get stand-ins with a space, which no word contains.
    unique = [t if t and self._ids[t] == i else f" unused {i}" for i, t in enumerate(self.tokens)]
    return tf_text.build_fast_wordpiece_model(
        unique, MAX_BYTES_PER_WORD, self.settings.continuing_subword_prefix, self.settings.unk_token,
        True, False)

  @functools.cached_property
  def _encode_function(self):
    return tf.function(self._encode_batch, input_signature=[tf.TensorSpec([None], tf.string)])

  def _encode(self, s: str) -> list[int]:
    return self._encode_function(tf.constant([s]))[0].numpy().tolist()

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Ids of a string scalar (1-D int32) or of a 1-D batch of strings (ragged ``[batch, None]``)."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      return self._encode_batch(s[None])[0]
    if s.shape.rank == 1:
      return self._encode_batch(s)
    raise ValueError(f"WordPieceVocabulary.encode_tf takes a string scalar or vector, got shape {s.shape}.")

  def _encode_batch(self, texts: tf.Tensor) -> tf.RaggedTensor:
    specials = self._special_token_strings()
    pattern = "|".join(_regex_literal(t) for t in specials)
    segments = tf_text.regex_split(texts, pattern, keep_delim_regex_pattern=pattern)  # [texts, segments]
    flat = segments.flat_values
    is_special = tf.reduce_any(flat[:, None] == tf.constant(specials)[None, :], axis=1)
    words = bert_text.words(tf.where(is_special, "", flat), self._tables)  # [segments, words]
    too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.settings.max_input_chars_per_word
    words = words.with_flat_values(tf.where(too_long, self.settings.unk_token, words.flat_values))
    special_words = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(flat, is_special),
                                                     tf.cast(is_special, tf.int64))
    words = tf.concat([special_words, words], axis=1)
    wordpiece = tf_text.FastWordpieceTokenizer(model_buffer=self._model_buffer, token_out_type=tf.int32)
    ids = wordpiece.tokenize(words).merge_dims(1, 2)  # [segments, ids]
    return tf.RaggedTensor.from_row_splits(ids, segments.row_splits).merge_dims(1, 2)

  # Decoding.

  def _hidden_ids(self) -> list[int]:
    """Ids decoding leaves out: padding and the framing tokens."""
    special = self._special
    return sorted({special.pad_id, special.eos_id, *([special.cls_id] if special.cls_id is not None else [])})

  def _decode(self, ids: Sequence[int]) -> str:
    hidden = set(self._hidden_ids())
    prefix = self.settings.continuing_subword_prefix
    unk = self._special.unk_id
    parts: list[str] = []
    for i in ids:
      i = int(i)
      if i in hidden:
        continue
      token = self.tokens[i] if 0 <= i < len(self.tokens) else self.tokens[unk]
      if parts:
        token = token[len(prefix):] if token.startswith(prefix) else " " + token
      parts.append(vocabulary_base.clean_up_spaces(token) if self.settings.decoder_cleanup else token)
    text = "".join(parts)
    return vocabulary_base.clean_up_spaces(text) if self.settings.clean_up_tokenization_spaces else text

  @functools.cached_property
  def _token_bytes(self) -> list[bytes]:
    return [t.encode("utf-8") for t in self.tokens]

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Text of a 1-D id tensor (a string scalar) or of a batch of them (``[..., length]``)."""
    ids = tf.convert_to_tensor(ids)
    shape = tf.shape(ids)
    rows = tf.reshape(ids, [-1, shape[-1]])
    rows = tf.where((rows >= 0) & (rows < len(self.tokens)), rows, self._special.unk_id)
    keep = tf.reduce_all(rows[:, :, None] != tf.constant(self._hidden_ids(), rows.dtype), axis=-1)
    tokens = tf.ragged.boolean_mask(tf.gather(tf.constant(self._token_bytes), rows), keep)
    flat = tokens.flat_values
    is_first = tf.ragged.range(tokens.row_lengths()).flat_values == 0
    prefix = "^" + _regex_literal(self.settings.continuing_subword_prefix)
    continues = tf.strings.regex_full_match(flat, prefix + ".*")
    rest = tf.strings.regex_replace(flat, prefix, "", replace_global=False)
    parts = tf.where(is_first, flat, tf.where(continues, rest, " " + flat))
    if self.settings.decoder_cleanup:
      parts = _clean_up_spaces_tf(parts)
    text = tf.strings.reduce_join(tokens.with_flat_values(parts), axis=-1)
    if self.settings.clean_up_tokenization_spaces:
      text = _clean_up_spaces_tf(text)
    return tf.reshape(text, shape[:-1])


def _clean_up_spaces_tf(text: tf.Tensor) -> tf.Tensor:
  """``vocabulary_base.clean_up_spaces`` on a string tensor."""
  for old, new in vocabulary_base.CLEAN_UP_REPLACEMENTS:
    text = tf.strings.regex_replace(text, _regex_literal(old), new.replace("\\", "\\\\"))
  return text
