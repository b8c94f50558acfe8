"""BERT's text normalization and pre-tokenization as TensorFlow ops, character for character as Hugging Face.

A BERT tokenizer first cleans the text (drops control characters, turns
whitespace into spaces), puts spaces around CJK ideographs, optionally strips
accents (NFD, then drops non-spacing marks) and lowercases; it then splits the
text into words at whitespace and around every punctuation character. Which
characters count as "control", "punctuation" or "whitespace", and what a
character lowercases to, depends on Unicode tables, and Hugging Face's Rust
``tokenizers`` uses tables of several Unicode versions (an old one for
categories, the compiler's for lowercase and whitespace) that neither Python's
``unicodedata`` nor TensorFlow's ICU reproduce exactly.

So rather than re-deriving the rules, ``CharacterTables`` asks the installed
``tokenizers`` library once what its ``BertNormalizer`` and
``BertPreTokenizer`` do to every code point, and stores the answer compactly
(ranges and a short list of exceptions). ``words`` then applies those tables
with plain TensorFlow ops inside tf.data: no Python runs per example.

Both steps act on each code point independently (the normalizer's NFD only
reorders combining marks, which accent stripping then drops), so per-code-point
tables give the library's result on whole texts; the single known exception
is a run of two or more spacing combining marks (category Mc) with non-zero
combining classes out of canonical order (only some musical symbols,
U+1D165..U+1D172), which NFD would reorder.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

MAX_CODE_POINT = 0x110000
SURROGATES = range(0xD800, 0xE000)
SEPARATOR = "|"  # unchanged by every normalizer setting, and no other character turns into it
SPACE = 0x20
OTHER, WHITESPACE, PUNCTUATION = 0, 1, 2
# Planes 4..13 (unassigned) and 15..16 (private use, less each plane's last two, noncharacters).
UNIFORM_RANGES = ((0x40000, 0xE0000), (0xF0000, 0xFFFFE), (0x100000, 0x10FFFE))
SAMPLE_STEP = 4099  # a prime: the samples fall at every offset within a block


@dataclasses.dataclass(frozen=True)
class CharacterTables:
  """What BERT's normalizer and pre-tokenizer do to each code point, in compact form.

  Attributes:
    removed_starts, removed: Ranges of code points (``removed_starts[i]`` up to
      the next start) and whether the normalizer deletes them.
    isolated_starts, isolated: Ranges and whether the normalizer puts spaces
      around the code point (CJK ideographs).
    mapped_keys, mapped_values: Sorted code points the normalizer replaces
      (lowercase, accent stripping, whitespace to space), and the replacement
      of each, padded with -1.
    class_starts, classes: Ranges and the pre-tokenizer's class of the
      (normalized) code point: ``OTHER``, ``WHITESPACE`` or ``PUNCTUATION``.
  """
  removed_starts: np.ndarray
  removed: np.ndarray
  isolated_starts: np.ndarray
  isolated: np.ndarray
  mapped_keys: np.ndarray
  mapped_values: np.ndarray
  class_starts: np.ndarray
  classes: np.ndarray


def _ranges(per_code_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Run-length form of a per-code-point array: (start of each run, value of each run)."""
  starts = np.concatenate([[0], np.flatnonzero(np.diff(per_code_point)) + 1]).astype(np.int32)
  return starts, per_code_point[starts]


def _probe_code_points() -> list[int]:
  """Code points to ask the library about: all, except most of the planes that hold no characters.

  Planes 4 to 13 are unassigned and planes 15 and 16 are private use in every
  Unicode version; the library treats each such range alike throughout, so a
  sample of it stands for the whole (``_fill_uniform_ranges`` checks that the
  sample agrees). This makes the probe four times faster.
  """
  dense = np.ones(MAX_CODE_POINT, bool)
  dense[SURROGATES.start:SURROGATES.stop] = False
  dense[ord(SEPARATOR)] = False
  sampled = []
  for start, stop in UNIFORM_RANGES:
    dense[start:stop] = False
    sampled += list(range(start, stop, SAMPLE_STEP)) + [stop - 1]
  return np.flatnonzero(dense).tolist() + sampled


def _fill_uniform_ranges(per_code_point: np.ndarray, what: str) -> None:
  """Gives each range of ``UNIFORM_RANGES`` the value its probed samples share (in place)."""
  for start, stop in UNIFORM_RANGES:
    samples = per_code_point[list(range(start, stop, SAMPLE_STEP)) + [stop - 1]]
    if (samples != samples[0]).any():
      raise RuntimeError(f"tokenizers' {what} treats code points U+{start:X}..U+{stop - 1:X} differently from "
                         "one another; this module needs updating for the installed tokenizers version.")
    per_code_point[start:stop] = samples[0]


@functools.lru_cache(maxsize=None)
def _pre_tokenizer_classes() -> np.ndarray:
  """The class (``OTHER``/``WHITESPACE``/``PUNCTUATION``) ``BertPreTokenizer`` gives each code point."""
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  code_points = _probe_code_points()
  # "a" c "a" c "a" ...: a punctuation character becomes a word of its own, a
  # whitespace character is in no word, any other merges with its neighbours.
  text = "a" + "a".join(map(chr, code_points)) + "a"
  words = pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)
  starts = np.array([s for _, (s, _) in words], np.int64)
  ends = np.array([e for _, (_, e) in words], np.int64)
  if any(text[s:e] != w for w, (s, e) in words[:1000]):
    raise RuntimeError("tokenizers' BertPreTokenizer reports offsets this module cannot read; "
                       "install a tokenizers version within the range setup.cfg gives.")
  coverage = np.zeros(len(text) + 1, np.int64)
  np.add.at(coverage, starts, 1)
  np.add.at(coverage, ends, -1)
  covered = np.cumsum(coverage)[:-1] > 0
  single = np.zeros(len(text), bool)
  single[starts[ends - starts == 1]] = True
  positions = 2 * np.arange(len(code_points)) + 1
  classes = np.full(MAX_CODE_POINT, OTHER, np.int8)
  index = np.array(code_points)
  classes[index[~covered[positions]]] = WHITESPACE
  classes[index[single[positions]]] = PUNCTUATION
  classes[ord(SEPARATOR)] = PUNCTUATION
  _fill_uniform_ranges(classes, "BertPreTokenizer")
  return classes


@functools.lru_cache(maxsize=None)
def character_tables(*, lowercase: bool, strip_accents: bool, handle_chinese_chars: bool,
                     clean_text: bool) -> CharacterTables:
  """Tables of ``BertNormalizer`` with these settings and of ``BertPreTokenizer`` (about a second to build)."""
  from tokenizers import normalizers  # pylint: disable=g-import-not-at-top
  normalizer = normalizers.BertNormalizer(clean_text=clean_text, handle_chinese_chars=handle_chinese_chars,
                                          strip_accents=strip_accents, lowercase=lowercase)
  code_points = _probe_code_points()
  outputs = normalizer.normalize_str(SEPARATOR.join(map(chr, code_points))).split(SEPARATOR)
  if len(outputs) != len(code_points):
    raise RuntimeError("tokenizers' BertNormalizer produced an unexpected separator; this module needs "
                       "updating for the installed tokenizers version.")
  removed = np.zeros(MAX_CODE_POINT, bool)
  isolated = np.zeros(MAX_CODE_POINT, bool)
  mapped: dict[int, list[int]] = {}
  for code_point, output in zip(code_points, outputs):
    if len(output) == 1 and ord(output) == code_point:
      continue
    if not output:
      removed[code_point] = True
      continue
    if len(output) >= 3 and output[0] == output[-1] == " " and code_point != SPACE:
      isolated[code_point] = True
      output = output[1:-1]
    if " " in output and output != " ":
      raise RuntimeError(f"tokenizers' BertNormalizer turns U+{code_point:04X} into {output!r}, which this "
                         "module cannot represent; it needs updating for the installed tokenizers version.")
    if output != chr(code_point):
      mapped[code_point] = [ord(c) for c in output]
  keys = np.array(sorted(mapped), np.int32)
  changed = np.concatenate([keys, np.flatnonzero(isolated)])
  if any(((start <= changed) & (changed < stop)).any() for start, stop in UNIFORM_RANGES):
    raise RuntimeError("tokenizers' BertNormalizer changes characters of planes this module expects it to leave "
                       "alone; it needs updating for the installed tokenizers version.")
  _fill_uniform_ranges(removed, "BertNormalizer")
  values = np.full((len(keys), max((len(v) for v in mapped.values()), default=1)), -1, np.int32)
  for row, key in enumerate(keys):
    values[row, :len(mapped[key])] = mapped[key]
  removed_starts, removed_runs = _ranges(removed)
  isolated_starts, isolated_runs = _ranges(isolated)
  class_starts, class_runs = _ranges(_pre_tokenizer_classes())
  return CharacterTables(removed_starts, removed_runs, isolated_starts, isolated_runs, keys, values,
                         class_starts, class_runs)


def _lookup_ranges(starts: np.ndarray, values: np.ndarray, code_points: tf.Tensor) -> tf.Tensor:
  index = tf.searchsorted(tf.constant(starts), code_points, side="right") - 1
  return tf.gather(tf.constant(values), index)


def _expand(row_ids: tf.Tensor, slots: tf.Tensor, nrows: tf.Tensor) -> tf.RaggedTensor:
  """Rows of code points from ``slots`` (``[n, k]`` for n code points of row ``row_ids``; -1: none)."""
  width = tf.shape(slots)[1]
  flat = tf.reshape(slots, [-1])
  keep = flat >= 0
  rows = tf.reshape(tf.tile(row_ids[:, None], [1, width]), [-1])
  return tf.RaggedTensor.from_value_rowids(tf.boolean_mask(flat, keep), tf.boolean_mask(rows, keep),
                                           nrows=nrows)


def normalize(texts: tf.Tensor, tables: CharacterTables) -> tf.RaggedTensor:
  """``BertNormalizer`` on a 1-D string tensor: code points per text (CJK ideographs already spaced)."""
  decoded = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
  code_points = decoded.flat_values
  row_ids = decoded.value_rowids()
  nrows = decoded.nrows()
  removed = _lookup_ranges(tables.removed_starts, tables.removed, code_points)
  isolated = _lookup_ranges(tables.isolated_starts, tables.isolated, code_points)
  keys = tf.constant(tables.mapped_keys)
  width = tables.mapped_values.shape[1]
  if len(tables.mapped_keys):
    index = tf.minimum(tf.searchsorted(keys, code_points), len(tables.mapped_keys) - 1)
    found = tf.gather(keys, index) == code_points
    replacement = tf.gather(tf.constant(tables.mapped_values), index)
  else:
    found = tf.zeros_like(code_points, tf.bool)
    replacement = tf.fill([tf.size(code_points), width], -1)
  unchanged = tf.concat([code_points[:, None], tf.fill([tf.size(code_points), width - 1], -1)], axis=1)
  core = tf.where(found[:, None], replacement, unchanged)
  pad = tf.where(isolated, SPACE, -1)[:, None]
  slots = tf.concat([pad, core, pad], axis=1)
  slots = tf.where(removed[:, None], -1, slots)
  return _expand(row_ids, slots, nrows)


def pre_tokenize(code_points: tf.RaggedTensor, tables: CharacterTables) -> tf.RaggedTensor:
  """``BertPreTokenizer`` on normalized code points: the words of each row, as UTF-8 strings."""
  values = code_points.flat_values
  classes = _lookup_ranges(tables.class_starts, tables.classes, values)
  punctuation = classes == PUNCTUATION
  pad = tf.where(punctuation, SPACE, -1)
  middle = tf.where(classes == WHITESPACE, SPACE, values)
  slots = tf.stack([pad, middle, pad], axis=1)
  spaced = _expand(code_points.value_rowids(), slots, code_points.nrows())
  words = tf.strings.split(tf.strings.unicode_encode(spaced, "UTF-8"), sep=" ")
  return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)


def words(texts: tf.Tensor, tables: CharacterTables) -> tf.RaggedTensor:
  """The normalized words of each text of a 1-D string tensor, as the BERT tokenizer would see them."""
  return pre_tokenize(normalize(texts, tables), tables)
