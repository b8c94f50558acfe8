"""seqio preprocessors for encoder–decoder pretraining: T5 span corruption and BART denoising.

Both objectives read tokenized documents (``targets`` without EOS), cut them
into chunks and turn every chunk into an ``inputs``/``targets`` pair:

* Span corruption (T5, ByT5): a random 15% of the chunk's tokens, grouped in
  spans of mean length 3 (ByT5: 20), is removed from ``inputs``; each span
  leaves one sentinel behind. ``targets`` lists every sentinel followed by the
  tokens it stands for, so the model only has to produce the missing pieces.
* Text infilling (BART): about 30% of the tokens, in spans whose lengths are
  Poisson(3) draws, are replaced by one mask token per span (a zero-length
  span inserts a mask); optionally the chunk's sentences are shuffled first.
  ``targets`` is the whole original chunk.

The chunking runs before, and the corruption after, seqio's ``repeat``
(these preprocessors follow the task's cache point), so every epoch is
corrupted afresh. Randomness comes only from stateless TF ops seeded by
``seqio.map_over_dataset(num_seeds=1)``: the stream is reproducible from the
seed given to the task and the tf.data iterator can be checkpointed.
"""

from __future__ import annotations

from typing import Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from lmlab.data import vocabularies
from lmlab.data.preprocessors import _split_long_documents  # pylint: disable=protected-access

ENC_DEC_TASK_FEATURES = ("inputs", "targets")
MIN_CHUNK_TOKENS = 2  # a shorter chunk has nothing to corrupt and nothing to keep


# ---------------------------------------------------------------------------
# Lengths


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) that span corruption uses for a chunk of ``length`` tokens.

  T5's ``random_spans_noise_mask`` rule, in its float32 arithmetic:
  ``round(float32(length) * float32(density))`` noise tokens (at least one,
  and at least one token is kept) in ``round(float32(noise) /
  float32(mean span))`` spans (at least one, and no more spans than noise or
  kept tokens, since every span is non-empty), rounding halves to even as
  ``tf.round`` does. Float32 matters: ``length * 0.15`` lands on either side
  of a half for some lengths (190 gives 29 noise tokens in float32, 28 in
  float64). ``corrupt_spans`` computes the same numbers in the graph.
  """
  noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  noise = min(max(noise, 1), length - 1)
  spans = int(np.round(np.float32(noise) / np.float32(mean_noise_span_length)))
  spans = min(max(spans, 1), noise, length - noise)
  return noise, spans


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """Raw chunk length and resulting targets length for a wanted ``inputs`` length.

  A corrupted chunk of n raw tokens gives ``n - noise + spans + 1`` input ids
  (kept tokens, one sentinel per span, EOS) and ``noise + spans + 1`` target
  ids. This finds the largest n whose inputs fit in ``inputs_length``, so
  full chunks fill an encoder row exactly (T5: 512 inputs -> 568 raw tokens
  and 114 targets at density 0.15, mean span 3). It is T5's
  ``random_spans_helper`` search, but over ``noise_counts`` (float32, like
  the graph) rather than Python floats, so the chosen n never yields an
  input longer than ``inputs_length``.

  Args:
    inputs_length: Encoder tokens per example, EOS included.
    noise_density: Fraction of raw tokens that are noise.
    mean_noise_span_length: Average noise-span length.

  Returns:
    ``(raw_length, targets_length)``; targets_length includes EOS.

  Raises:
    ValueError: ``inputs_length`` is too small or the rates are out of range.
  """
  _check_rates(noise_density, mean_noise_span_length)
  if inputs_length < 3:
    raise ValueError(f"Span corruption needs an inputs length of at least 3 (a kept token, a sentinel "
                     f"and EOS), got {inputs_length}.")

  def encoded_lengths(n):
    noise, spans = noise_counts(n, noise_density, mean_noise_span_length)
    return n - noise + spans + 1, noise + spans + 1

  # Inputs grow by 0, 1 or 2 per extra raw token and n = inputs_length - 1 always fits
  # (spans <= noise), so walking up from there finds the largest fitting n.
  raw = max(inputs_length - 1, MIN_CHUNK_TOKENS)
  while encoded_lengths(raw + 1)[0] <= inputs_length:
    raw += 1
  return raw, encoded_lengths(raw)[1]


def _check_rates(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < noise_density < 0.5:
    raise ValueError(f"noise_density must be in (0, 0.5), got {noise_density}.")
  if mean_noise_span_length < 1.0:
    raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}.")


def _check_sentinels(vocab: seqio.Vocabulary, raw_length: int, noise_density: float,
                     mean_noise_span_length: float) -> None:
  """Every noise span needs its own sentinel id, or sentinels would overwrite real tokens."""
  needed = noise_counts(raw_length, noise_density, mean_noise_span_length)[1]
  available = vocabularies.num_sentinels(vocab)
  if available < needed:
    raise ValueError(
        f"Span corruption of {raw_length}-token chunks makes up to {needed} noise spans, so the "
        f"vocabulary needs at least {needed} sentinel ids but has {available} (extra_ids={vocab.extra_ids}; "
        "sentinels would collide with real tokens). Use a vocabulary with more extra ids, e.g. "
        "vocabularies.embedded_vocabulary_with_sentinels() (100) or, for bytes, "
        "vocabularies.byt5_legacy_vocabulary() (125, not the released ByT5 layout), or a shorter "
        "inputs length / larger mean_noise_span_length.")


def _chunks(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Documents' ``targets`` cut into pieces of at most ``length`` tokens; tiny pieces dropped."""
  dataset = _split_long_documents(dataset, length)
  return dataset.filter(lambda ex: tf.size(ex["targets"]) >= MIN_CHUNK_TOKENS)


def _shared_vocabulary(output_features: Mapping[str, seqio.Feature]) -> seqio.Vocabulary:
  missing = [k for k in ENC_DEC_TASK_FEATURES if k not in output_features]
  if missing:
    raise ValueError(f"Denoising tasks need output features {ENC_DEC_TASK_FEATURES}; {missing} missing.")
  vocab = output_features["targets"].vocabulary
  if output_features["inputs"].vocabulary != vocab:
    raise ValueError("Denoising needs the same vocabulary for inputs and targets (the targets copy "
                     "input tokens and sentinels).")
  return vocab


# ---------------------------------------------------------------------------
# Span corruption


def random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Lengths of a uniformly random split of ``num_items`` into ``num_segments`` non-empty parts.

  Each of the C(num_items - 1, num_segments - 1) compositions is equally
  likely: ``num_segments - 1`` distinct cut points are drawn among the gaps
  between consecutive items. Needs ``1 <= num_segments <= num_items``.

  Returns:
    int32 ``[num_segments]`` lengths, each >= 1, summing to ``num_items``.
  """
  scores = tf.random.stateless_uniform([num_items - 1], seed)
  rank = tf.argsort(tf.argsort(scores, stable=True), stable=True)
  cut_before = tf.concat([[True], rank < num_segments - 1], axis=0)  # item i opens a segment
  segment = tf.cumsum(tf.cast(cut_before, tf.int32)) - 1
  return tf.math.unsorted_segment_sum(tf.ones_like(segment), segment, num_segments)


def _starts_of_runs(values: tf.Tensor) -> tf.Tensor:
  """True where a value differs from the one before it (always at position 0)."""
  return tf.concat([[True], values[1:] != values[:-1]], axis=0)


def _counts_tf(length: tf.Tensor, noise_density: float,
               mean_noise_span_length: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Graph version of ``noise_counts``, in float32 as T5's ``random_spans_noise_mask`` (elementwise)."""
  as_float = tf.cast(length, tf.float32)
  noise = tf.cast(tf.round(as_float * noise_density), tf.int32)
  noise = tf.minimum(tf.maximum(noise, 1), length - 1)
  spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length), tf.int32)
  spans = tf.minimum(tf.minimum(tf.maximum(spans, 1), noise), length - noise)
  return noise, spans


def corrupt_spans(tokens: tf.Tensor, seed: tf.Tensor, vocab_size: int, noise_density: float = 0.15,
                  mean_noise_span_length: float = 3.0) -> tuple[tf.Tensor, tf.Tensor]:
  """T5 span corruption of one chunk of at least two tokens.

  The chunk is laid out as ``keep_0 noise_0 keep_1 noise_1 ... noise_{k-1}``
  where both the kept and the noise lengths are random segmentations. Noise
  span j becomes sentinel j (id ``vocab_size - 1 - j``; 258 - j for ByT5's
  bytes) in ``inputs``; in ``targets`` the same sentinel precedes the span's
  tokens.

  Args:
    tokens: int ``[n]`` real tokens (no EOS, no padding), n >= 2.
    seed: Stateless seed ``[2]``.
    vocab_size: Size of the vocabulary whose top ids are the sentinels.
    noise_density: Fraction of tokens to corrupt.
    mean_noise_span_length: Average noise-span length.

  Returns:
    ``(inputs, targets)`` without EOS.
  """
  length = tf.size(tokens)
  noise, spans = _counts_tf(length, noise_density, mean_noise_span_length)
  keep_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  keep_lengths = random_segmentation(length - noise, spans, keep_seed)
  noise_lengths = random_segmentation(noise, spans, noise_seed)
  piece_lengths = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1), [-1])
  piece = tf.reshape(tf.repeat(tf.range(2 * spans), piece_lengths), [-1])  # which piece each token is in
  first_of_piece = _starts_of_runs(piece)
  is_noise = piece % 2 == 1
  sentinels = tf.cast(vocab_size - 1 - piece // 2, tokens.dtype)  # keep_j and noise_j share sentinel j
  inputs = tf.boolean_mask(tf.where(is_noise, sentinels, tokens), ~is_noise | first_of_piece)
  targets = tf.boolean_mask(tf.where(is_noise, tokens, sentinels), is_noise | first_of_piece)
  return inputs, targets


def _span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                     output_features: Mapping[str, seqio.Feature], noise_density: float,
                     mean_noise_span_length: float) -> tf.data.Dataset:
  """Chunks documents to the raw length that fills ``inputs`` and corrupts each chunk."""
  _check_rates(noise_density, mean_noise_span_length)
  if not sequence_length or not sequence_length.get("inputs"):
    raise ValueError("Span corruption needs sequence_length['inputs'] to size its chunks, e.g. "
                     "{'inputs': 512, 'targets': 114}.")
  vocab = _shared_vocabulary(output_features)
  raw_length, targets_length = span_corruption_lengths(
      sequence_length["inputs"], noise_density, mean_noise_span_length)
  _check_sentinels(vocab, raw_length, noise_density, mean_noise_span_length)
  if sequence_length.get("targets") and sequence_length["targets"] < targets_length:
    raise ValueError(
        f"Span corruption with inputs length {sequence_length['inputs']} (density {noise_density}, mean "
        f"span {mean_noise_span_length}) makes targets of up to {targets_length} tokens, but the targets "
        f"length is {sequence_length['targets']}; set it to {targets_length} so no target is cut.")
  vocab_size = vocab.vocab_size

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(example, seed):
    inputs, targets = corrupt_spans(example["targets"], seed, vocab_size, noise_density,
                                    mean_noise_span_length)
    return {"inputs": inputs, "targets": targets}

  return corrupt(_chunks(dataset, raw_length))


@gin.configurable
def span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                    output_features: Mapping[str, seqio.Feature], noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
  """T5 span corruption of tokenized documents (``targets`` without EOS).

  Documents are cut into chunks of the raw length that, once corrupted and
  given EOS, fills ``sequence_length["inputs"]`` (see
  ``span_corruption_lengths``); document tails give shorter examples, which
  the encoder–decoder packing puts together.

  Args:
    dataset: Tokenized documents.
    sequence_length: Needs ``inputs``; ``targets``, if given, must fit the
      longest targets.
    output_features: ``inputs`` and ``targets`` with the same vocabulary,
      which needs one sentinel id per noise span
      (``vocabularies.num_sentinels``).
    noise_density: Fraction of tokens corrupted.
    mean_noise_span_length: Average noise-span length.

  Returns:
    Examples with ``inputs`` and ``targets`` (no EOS yet).
  """
  return _span_corruption(dataset, sequence_length, output_features, noise_density,
                          mean_noise_span_length)


@gin.configurable
def byt5_span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                         output_features: Mapping[str, seqio.Feature], noise_density: float = 0.15,
                         mean_noise_span_length: float = 20.0) -> tf.data.Dataset:
  """``span_corruption`` with ByT5's default mean span of 20 bytes (its own gin knobs)."""
  return _span_corruption(dataset, sequence_length, output_features, noise_density,
                          mean_noise_span_length)


# ---------------------------------------------------------------------------
# BART denoising


def sentence_ids(tokens: tf.Tensor, sentence_ends: np.ndarray, word_starts: np.ndarray) -> tf.Tensor:
  """Index of the sentence each token belongs to (0-based, increasing).

  A sentence ends at a token that can end one (``sentence_ends``, from
  ``vocabularies.sentence_end_table``) and is followed by the start of a word
  (``word_starts``, from ``vocabularies.word_start_table``) or by the end of
  the chunk. The tables are passed in, built once outside the traced map.
  """
  ends = tf.gather(tf.constant(sentence_ends), tokens)
  next_starts_word = tf.concat([tf.gather(tf.constant(word_starts), tokens[1:]), [True]], axis=0)
  return tf.cumsum(tf.cast(ends & next_starts_word, tf.int32), exclusive=True)


def shuffle_sentences(tokens: tf.Tensor, sentences: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The chunk with its sentences in a random order (each sentence kept intact)."""
  length = tf.size(tokens)
  num_sentences = sentences[-1] + 1
  new_rank = tf.argsort(tf.random.stateless_uniform([num_sentences], seed), stable=True)
  rank_of = tf.scatter_nd(new_rank[:, None], tf.range(num_sentences), [num_sentences])
  key = tf.gather(rank_of, sentences) * length + tf.range(length)
  return tf.gather(tokens, tf.argsort(key, stable=True))


def _span_lengths(num_mask: tf.Tensor, poisson_lambda: float, seed: tf.Tensor) -> tf.Tensor:
  """Poisson span lengths, drawn until they cover ``num_mask`` tokens; the last one is cut to fit.

  At most ``num_mask`` draws are used; should they all fall short (only
  possible with a tiny lambda), the last span takes up the remainder, so the
  result always sums to ``num_mask`` and ends with a non-empty span.
  """
  draws = tf.random.stateless_poisson([num_mask], seed, poisson_lambda, dtype=tf.int32)
  reached = tf.cumsum(draws) >= num_mask
  count = tf.where(tf.reduce_any(reached), tf.argmax(tf.cast(reached, tf.int32), output_type=tf.int32) + 1,
                   num_mask)
  head = draws[:count - 1]
  return tf.concat([head, [num_mask - tf.reduce_sum(head)]], axis=0)


def infill_text(tokens: tf.Tensor, seed: tf.Tensor, mask_id: int, mask_ratio: float = 0.3,
                poisson_lambda: float = 3.0) -> tf.Tensor:
  """BART text infilling: spans of ``round(mask_ratio * n)`` tokens in all, one mask each.

  Non-empty spans are placed at random, never touching each other (so each
  mask in the output stands for exactly one span, and the masked total is
  exact); zero-length spans insert a mask at a random position. Should there
  be more non-empty spans than gaps between kept tokens, the surplus is
  merged into the last span.

  Args:
    tokens: int ``[n]`` real tokens, n >= 2.
    seed: Stateless seed ``[2]``.
    mask_id: Id of the mask token.
    mask_ratio: Fraction of tokens masked (at least one, and one is kept).
    poisson_lambda: Mean span length.

  Returns:
    The corrupted tokens (no EOS).
  """
  length = tf.size(tokens)
  num_mask = tf.cast(tf.round(tf.cast(length, tf.float64) * mask_ratio), tf.int32)
  num_mask = tf.minimum(tf.maximum(num_mask, 1), length - 1)
  lengths_seed, gaps_seed, insert_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  lengths = _span_lengths(num_mask, poisson_lambda, lengths_seed)
  spans = tf.boolean_mask(lengths, lengths > 0)
  num_kept = length - num_mask
  num_spans = tf.minimum(tf.size(spans), num_kept + 1)
  spans = tf.concat([spans[:num_spans - 1], [tf.reduce_sum(spans[num_spans - 1:])]], axis=0)
  # num_spans + 1 gaps of kept tokens; the inner ones are non-empty so spans never touch.
  # Padding the two outer gaps by one makes all of them non-empty, a plain segmentation.
  gaps = random_segmentation(num_kept + 2, num_spans + 1, gaps_seed)
  gaps -= tf.one_hot(0, num_spans + 1, dtype=tf.int32) + tf.one_hot(num_spans, num_spans + 1, dtype=tf.int32)
  piece_lengths = tf.reshape(tf.stack([gaps[:-1], spans], axis=1), [-1])
  piece_lengths = tf.concat([piece_lengths, gaps[-1:]], axis=0)
  piece = tf.reshape(tf.repeat(tf.range(2 * num_spans + 1), piece_lengths), [-1])
  first_of_piece = _starts_of_runs(piece)
  masked = piece % 2 == 1
  mask = tf.cast(mask_id, tokens.dtype)
  emitted = tf.where(masked, mask, tokens)
  emit_count = tf.cast(~masked | first_of_piece, tf.int32)
  # Zero-length spans: a mask inserted before token i (i == n: at the end).
  num_inserts = tf.size(lengths) - tf.size(tf.boolean_mask(lengths, lengths > 0))
  where = tf.random.stateless_uniform([num_inserts], insert_seed, 0, length + 1, dtype=tf.int32)
  inserts_before = tf.math.bincount(where, minlength=length + 1, maxlength=length + 1, dtype=tf.int32)
  values = tf.reshape(tf.stack([tf.fill([length + 1], mask), tf.concat([emitted, [mask]], 0)], 1), [-1])
  counts = tf.reshape(tf.stack([inserts_before, tf.concat([emit_count, [0]], 0)], 1), [-1])
  return tf.reshape(tf.repeat(values, counts), [-1])


@gin.configurable
def bart_denoising(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                   output_features: Mapping[str, seqio.Feature], mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0, permute_sentences: bool = True) -> tf.data.Dataset:
  """BART denoising of tokenized documents (``targets`` without EOS).

  Documents are cut into chunks of ``sequence_length["targets"] - 1`` tokens
  (room for EOS). ``inputs`` is the chunk with its sentences shuffled (if
  ``permute_sentences``) and then text-infilled; ``targets`` is the chunk as
  it was, in its original order. Inputs are usually ~20% shorter than
  targets; an input that still outgrows ``sequence_length["inputs"]`` is
  trimmed by the EOS step.

  Args:
    dataset: Tokenized documents.
    sequence_length: Needs ``targets``.
    output_features: ``inputs`` and ``targets`` with the same vocabulary,
      which has a mask id (``vocabularies.mask_id``).
    mask_ratio: Fraction of tokens masked, in [0, 1); 0 switches infilling off.
    poisson_lambda: Mean span length (Poisson), > 0.
    permute_sentences: Shuffle the chunk's sentences before masking.

  Returns:
    Examples with ``inputs`` and ``targets`` (no EOS yet).
  """
  if not 0.0 <= mask_ratio < 1.0 or poisson_lambda <= 0.0:
    raise ValueError(f"bart_denoising needs 0 <= mask_ratio < 1 and poisson_lambda > 0, got {mask_ratio}, "
                     f"{poisson_lambda}.")
  if not sequence_length or not sequence_length.get("targets"):
    raise ValueError("BART denoising needs sequence_length['targets'] to size its chunks.")
  vocab = _shared_vocabulary(output_features)
  mask_token = vocabularies.mask_id(vocab)
  sentence_ends = vocabularies.sentence_end_table(vocab)
  word_starts = vocabularies.word_start_table(vocab)

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(example, seed):
    tokens = example["targets"]
    permute_seed, infill_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    inputs = tokens
    if permute_sentences:
      inputs = shuffle_sentences(inputs, sentence_ids(inputs, sentence_ends, word_starts), permute_seed)
    if mask_ratio > 0.0:
      inputs = infill_text(inputs, infill_seed, mask_token, mask_ratio, poisson_lambda)
    return {"inputs": inputs, "targets": tokens}

  return corrupt(_chunks(dataset, max(sequence_length["targets"] - 1, MIN_CHUNK_TOKENS)))
