"""A Hugging Face ``tokenizer.json`` (RoBERTa's and GPT-2's byte-level BPE, ...) as a seqio vocabulary.

The Rust ``tokenizers`` library itself tokenizes, so the ids are Hugging
Face's by construction (``add_special_tokens=False``: the special tokens that
frame an encoder input are lmlab's to add; see ``SpecialTokens``). Inside
tf.data it runs through ``tf.numpy_function(..., stateful=False)``: the
function is pure, which lets tf.data checkpoint iterators over it (the
library holds no state between calls), at the price of holding Python's lock
while it runs (the library parallelizes a batch of texts by itself).

Special tokens come from the checkpoint's ``tokenizer_config.json`` /
``special_tokens_map.json`` (``roles``), else from the file: its
post-processor says which token starts an encoder input (``<s>``), which one
ends a text (``</s>``) and what goes between the texts of a pair (RoBERTa's
second ``</s>``).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from lmlab.data import vocabulary_base

logger = logging.getLogger(__name__)

ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
WORD_START_MARKS = ("\u0120", "\u2581")  # "Ġ": byte-level space; "▁": SentencePiece-style space
KINDS = {"BPE": "bpe", "WordPiece": "wordpiece_json", "Unigram": "unigram", "WordLevel": "wordlevel"}


def parse(json_text: str):
  """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``'s text, with truncation and padding off.

  Raises:
    ValueError: The library cannot read it.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  try:
    tokenizer = tokenizers.Tokenizer.from_str(json_text)
  except Exception as e:  # pylint: disable=broad-except  (the library raises plain Exceptions)
    raise ValueError(f"Not a tokenizer.json the tokenizers library can read: {e}") from e
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer


def framing(tokenizer) -> Optional[tuple[Optional[int], int, tuple[int, ...]]]:
  """How the file's post-processor frames encoder inputs: ``(cls_id, eos_id, pair_separator)``.

  Read off the library's own encoding of a pair of texts. None when the
  post-processor adds no special tokens (GPT-2) or frames inputs in a way
  ``SpecialTokens`` cannot express (e.g. only a leading ``<s>``).
  """
  single = tokenizer.encode("a", add_special_tokens=True)
  pair = tokenizer.encode("a", "b", add_special_tokens=True)

  def parts(encoding, sequences):
    ids, seq = encoding.ids, encoding.sequence_ids
    positions = {s: [i for i, x in enumerate(seq) if x == s] for s in sequences}
    if any(not p for p in positions.values()):
      return None
    bounds = [(p[0], p[-1]) for p in positions.values()]
    cuts = [0] + [b for first, last in bounds for b in (first, last + 1)] + [len(ids)]
    return [ids[a:b] for a, b in zip(cuts[0::2], cuts[1::2])]

  single_parts, pair_parts = parts(single, (0,)), parts(pair, (0, 1))
  if single_parts is None or pair_parts is None:
    return None
  if not any(single_parts) and not any(pair_parts):
    return None
  prefix, suffix = single_parts
  pair_prefix, middle, pair_suffix = pair_parts
  if (len(prefix) <= 1 and len(suffix) == 1 and pair_prefix == prefix and pair_suffix == suffix
      and middle[:1] == suffix):
    return (prefix[0] if prefix else None), suffix[0], tuple(middle[1:])
  logger.warning("The tokenizer's post-processor frames inputs as %s (pairs: %s), which lmlab's SpecialTokens "
                 "cannot express; lmlab frames them as [eos] after each text instead.", single_parts, pair_parts)
  return None


class TokenizerJsonVocabulary(vocabulary_base.TokenizerFileVocabulary):
  """Any ``tokenizer.json``, tokenized by the ``tokenizers`` library; see the module docstring.

  Attributes:
    json_text: The file's contents.
    roles: Special token strings by role (``bos``, ``eos``, ``unk``, ``sep``,
      ``pad``, ``cls``, ``mask``) from the checkpoint's configuration.
    clean_up_tokenization_spaces: Apply Hugging Face's clean-up of spaces to
      decoded text (``tokenizer_config.json``; off by default, as in
      transformers 5).
  """

  def __init__(self, json_text: str, roles: Optional[Mapping[str, Optional[str]]] = None, *,
               clean_up_tokenization_spaces: bool = False):
    """Makes the vocabulary.

    Raises:
      ValueError: The file is not a tokenizer, has no token to end a text, or
        a role names a token that is not in it.
    """
    super().__init__()
    self.json_text = json_text
    self.roles = {role: token for role, token in (roles or {}).items() if token}
    self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
    unknown = set(self.roles) - set(ROLES)
    if unknown:
      raise ValueError(f"Unknown special token roles {sorted(unknown)}; use {ROLES}.")
    missing = {role: token for role, token in self.roles.items() if self.tokenizer.token_to_id(token) is None}
    if missing:
      raise ValueError(f"Special tokens {missing} are not in the tokenizer.json; check the checkpoint's "
                       "tokenizer_config.json / special_tokens_map.json.")
    self.special_tokens()  # fail early

  @functools.cached_property
  def tokenizer(self):
    """The ``tokenizers.Tokenizer`` (without truncation or padding)."""
    return parse(self.json_text)

  @functools.cached_property
  def model_type(self) -> str:
    """The file's model: ``BPE``, ``WordPiece``, ``Unigram`` or ``WordLevel``."""
    return json.loads(self.json_text)["model"].get("type", "BPE")

  @functools.cached_property
  def name(self) -> str:
    kind = KINDS.get(self.model_type, self.model_type.lower())
    return f"{kind}_" + vocabulary_base.digest(self.json_text, json.dumps(self.roles, sort_keys=True),
                                            str(self.clean_up_tokenization_spaces))

  def __getstate__(self):
    state = {k: v for k, v in self.__dict__.items()
             if k in ("json_text", "roles", "clean_up_tokenization_spaces", "_extra_ids")}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  # Special tokens.

  def _role_id(self, role: str) -> Optional[int]:
    token = self.roles.get(role)
    return None if token is None else self.tokenizer.token_to_id(token)

  @functools.cached_property
  def _special(self) -> vocabulary_base.SpecialTokens:
    frame = framing(self.tokenizer)
    if frame is not None:
      cls, eos, pair_separator = frame
    else:
      cls, pair_separator = None, ()
      eos = next((i for i in (self._role_id("eos"), self._role_id("sep")) if i is not None), None)
      if eos is None:
        raise ValueError("The tokenizer.json adds no end-of-text token and the checkpoint's configuration "
                         "names none (eos_token / sep_token in tokenizer_config.json); lmlab needs one.")
    unk = self._role_id("unk")
    if unk is None:
      model_unk = json.loads(self.json_text)["model"].get("unk_token")
      unk = self.tokenizer.token_to_id(model_unk) if model_unk else None
    pad = self._role_id("pad")
    return vocabulary_base.SpecialTokens(pad_id=eos if pad is None else pad, eos_id=eos, unk_id=unk,
                                      mask_id=self._role_id("mask"), cls_id=cls, pair_separator=pair_separator)

  def special_tokens(self) -> vocabulary_base.SpecialTokens:
    """Special ids; without a padding token (GPT-2) padding is the end-of-text id."""
    return self._special

  def reserved_ids(self) -> frozenset[int]:
    added = self.tokenizer.get_added_tokens_decoder()
    return self._special.ids | {i for i, token in added.items() if token.special}

  # Tokens.

  @property
  def _base_vocab_size(self) -> int:
    return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

  def pieces(self) -> list[str]:
    return [self.tokenizer.id_to_token(i) or "" for i in range(self.vocab_size)]

  @functools.cached_property
  def _token_texts(self) -> list[str]:
    """The text of each token alone, as decoding gives it."""
    return self.tokenizer.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)

  def word_start_table(self) -> np.ndarray:
    """Tokens that begin with a space (``Ġ``, ``▁`` or decoded whitespace) start words, as do added tokens.

    For a WordPiece model, every token but the ``##`` continuations does.
    """
    pieces = self.pieces()
    if self.model_type == "WordPiece":
      prefix = json.loads(self.json_text)["model"].get("continuing_subword_prefix", "##")
      table = np.array([not p.startswith(prefix) for p in pieces], bool)
    else:
      table = np.array([p.startswith(WORD_START_MARKS) or t[:1].isspace()
                        for p, t in zip(pieces, self._token_texts)], bool)
    table[list(self.reserved_ids() | set(self.tokenizer.get_added_tokens_decoder()))] = True
    return table

  def sentence_end_table(self) -> np.ndarray:
    prefix = json.loads(self.json_text)["model"].get("continuing_subword_prefix") or "##"
    texts = [t[len(prefix):] if self.model_type == "WordPiece" and t.startswith(prefix) else t
             for t in self._token_texts]
    table = np.array([vocabulary_base.ends_sentence(t) for t in texts], bool)
    table[list(self.reserved_ids())] = False
    return table

  # Encoding and decoding.

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _encode_numpy(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of a batch of UTF-8 texts: (all ids in a row, number of ids per text)."""
    strings = [t.decode("utf-8", errors="replace") for t in texts]
    if len(strings) == 1:
      encoded = [self._encode(strings[0])]
    else:
      encoded = [e.ids for e in self.tokenizer.encode_batch(strings, add_special_tokens=False)]
    values = np.fromiter((i for ids in encoded for i in ids), np.int32)
    return values, np.array([len(ids) for ids in encoded], np.int64)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Ids of a string scalar (1-D int32) or of a 1-D batch of strings (ragged ``[batch, None]``)."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"TokenizerJsonVocabulary.encode_tf takes a string scalar or vector, got shape {s.shape}.")
    values, lengths = tf.numpy_function(self._encode_numpy, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
                                        stateful=False, name="tokenizer_json_encode")
    values.set_shape([None])
    lengths.set_shape([None])
    if s.shape.rank == 0:
      return values
    return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)

  def _hidden_ids(self) -> set[int]:
    """Ids decoding leaves out: padding and the framing tokens."""
    special = self._special
    return {i for i in (special.pad_id, special.eos_id, special.cls_id, *special.pair_separator) if i is not None}

  def _decode(self, ids: Sequence[int]) -> str:
    hidden = self._hidden_ids()
    unk = self._special.unk_id
    size = self.vocab_size
    kept = [i if 0 <= i < size else unk for i in map(int, ids) if i not in hidden]
    text = self.tokenizer.decode([i for i in kept if i is not None], skip_special_tokens=False)
    return vocabulary_base.clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

  def _decode_numpy(self, ids: np.ndarray) -> np.ndarray:
    return np.array([self._decode(row).encode("utf-8") for row in ids.tolist()], object)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Text of a 1-D id tensor (a string scalar) or of a batch of them (``[..., length]``)."""
    ids = tf.convert_to_tensor(ids)
    shape = tf.shape(ids)
    rows = tf.reshape(tf.cast(ids, tf.int64), [-1, shape[-1]])
    text = tf.numpy_function(self._decode_numpy, [rows], tf.string, stateful=False, name="tokenizer_json_decode")
    return tf.reshape(text, shape[:-1])
