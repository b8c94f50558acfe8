"""What lmlab's vocabularies of released tokenizer files share: ``SpecialTokens`` and their base class.

``vocabularies`` (which re-exports these names and is where the rest of
lmlab looks for them), ``wordpiece``, ``tokenizer_json`` and
``tokenizer_files`` build on this module; it imports none of them, so the
modules form no import cycle.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Optional, Sequence, Union

import numpy as np
import seqio

SENTENCE_END_CHARS = (".", "!", "?")
CLOSING_CHARS = "\"')]}\u2019\u201d\u00bb"  # may follow a sentence end: ."  ?)  !'
# Hugging Face's decode "clean-up" of spaces before punctuation and English contractions.
CLEAN_UP_REPLACEMENTS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The special ids of a vocabulary, and how they frame encoder inputs.

  An encoder input of one text is ``[cls] + A + [eos]`` (without ``cls`` when it
  is None); a pair is ``[cls] + A + [eos] + pair_separator + B + [eos]``, which
  is what Hugging Face's ``tokenizer(a, b)["input_ids"]`` gives for BERT
  (``[CLS] A [SEP] B [SEP]``) and RoBERTa (``<s> A </s></s> B </s>``).

  Attributes:
    pad_id: Padding.
    eos_id: Ends a document or a sentence: ``</s>`` (T5, RoBERTa), ``[SEP]``
      (BERT), EOS (lmlab).
    unk_id: Unknown token, None if the vocabulary has none.
    mask_id: Replaces masked tokens in masked-language modelling; None when
      the vocabulary has no mask token.
    cls_id: Put before every encoder input: ``[CLS]`` (BERT), ``<s>``
      (RoBERTa); None for T5 and lmlab's own vocabularies.
    pair_separator: Between sentence A's eos and sentence B: ``()`` for
      BERT, T5 and lmlab; ``(</s>,)`` for RoBERTa.
  """
  pad_id: int
  eos_id: int
  unk_id: Optional[int]
  mask_id: Optional[int]
  cls_id: Optional[int]
  pair_separator: tuple[int, ...] = ()

  @property
  def ids(self) -> frozenset[int]:
    """Every special id that is not None (pad, eos, unk, mask, cls, separator)."""
    ids = {self.pad_id, self.eos_id, self.unk_id, self.mask_id, self.cls_id, *self.pair_separator}
    return frozenset(i for i in ids if i is not None)

  def frame(self, first: Sequence[int], second: Optional[Sequence[int]] = None) -> list[int]:
    """An encoder input of one text's ids, or of a pair's: ``[cls] A [eos] (pair_separator B [eos])``."""
    ids = ([] if self.cls_id is None else [self.cls_id]) + list(first) + [self.eos_id]
    if second is not None:
      ids += list(self.pair_separator) + list(second) + [self.eos_id]
    return ids


def clean_up_spaces(text: str) -> str:
  """Hugging Face's ``clean_up_tokenization_spaces``: no space before ``.,!?`` or in contractions."""
  for old, new in CLEAN_UP_REPLACEMENTS:
    text = text.replace(old, new)
  return text


def digest(*parts: Union[str, bytes]) -> str:
  """A short hex digest of the parts, to name a vocabulary by the contents of its files."""
  h = hashlib.sha256()
  for part in parts:
    data = part.encode("utf-8") if isinstance(part, str) else part
    h.update(len(data).to_bytes(8, "little") + data)
  return h.hexdigest()[:12]


class TokenizerFileVocabulary(seqio.Vocabulary, metaclass=abc.ABCMeta):
  """Base of the vocabularies read from a released checkpoint's tokenizer files (WordPiece, tokenizer.json).

  Besides seqio's interface, such a vocabulary knows its special ids and
  which of its tokens start words or end sentences, which masked-language
  modelling and denoising need (``mask_id``, ``word_start_table``, ...).
  Two vocabularies are equal when they tokenize alike (same ``name``), as
  seqio requires of the tasks of a mixture.
  """

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """Short stable identifier: the kind and a digest of the files and settings."""

  @abc.abstractmethod
  def special_tokens(self) -> SpecialTokens:
    """The special ids (see ``SpecialTokens``)."""

  @abc.abstractmethod
  def pieces(self) -> list[str]:
    """The token string of every id (index = id), as the tokenizer files spell it."""

  @abc.abstractmethod
  def word_start_table(self) -> np.ndarray:
    """Boolean per id: does this token start a new word? Special tokens do."""

  @abc.abstractmethod
  def sentence_end_table(self) -> np.ndarray:
    """Boolean per id: can this token end a sentence? Special tokens cannot."""

  def reserved_ids(self) -> frozenset[int]:
    """Ids that are never ordinary text tokens: the special ids and any other special token of the files."""
    return self.special_tokens().ids

  def random_token_range(self) -> tuple[int, int]:
    """[low, high): the longest run of ids that holds no reserved id (BERT's random replacement)."""
    reserved = sorted(i for i in self.reserved_ids() if 0 <= i < self.vocab_size)
    bounds = [-1] + reserved + [self.vocab_size]
    low, high = max(((a + 1, b) for a, b in zip(bounds[:-1], bounds[1:])), key=lambda r: r[1] - r[0])
    if high <= low:
      raise ValueError(f"Vocabulary {self.name} has no ordinary tokens.")
    return low, high

  @property
  def bos_id(self) -> Optional[int]:
    return self.special_tokens().cls_id

  @property
  def eos_id(self) -> int:
    return self.special_tokens().eos_id

  @property
  def pad_id(self) -> int:
    return self.special_tokens().pad_id

  @property
  def unk_id(self) -> Optional[int]:
    return self.special_tokens().unk_id

  def __eq__(self, other) -> bool:
    return isinstance(other, TokenizerFileVocabulary) and self.name == other.name

  def __hash__(self) -> int:
    return hash(self.name)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name})"



def ends_sentence(text: str) -> bool:
  """Does a token whose text is ``text`` end a sentence (".", "!", "?", perhaps then quotes or brackets)?"""
  return text.strip().rstrip(CLOSING_CHARS).endswith(SENTENCE_END_CHARS)
