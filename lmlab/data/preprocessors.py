"""seqio preprocessors for masked-language-model pretraining.

Order in a task: read text -> tokenize (+EOS) -> [cache point] -> split and
pack documents into rows -> dynamic MLM masking. Everything after the cache
point runs after seqio's ``repeat``, so each pass over the data is masked
afresh (RoBERTa's dynamic masking) while the stream stays reproducible from
the seed given to ``get_dataset``. All ops are TensorFlow graph ops, so the
tf.data iterator can be checkpointed.
"""

from __future__ import annotations

from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from lmlab.data import vocabularies

MLM_OUTPUT_FEATURES = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def _split_long_documents(dataset: tf.data.Dataset, length: int,
                          prefix_id: Optional[int] = None) -> tf.data.Dataset:
  """Cuts each document's ``targets`` into pieces of at most ``length`` tokens.

  With ``prefix_id`` (a vocabulary's cls id), every piece starts with that
  id: documents are cut every ``length - 1`` tokens and each piece gets it
  in front.
  """
  step = length if prefix_id is None else length - 1
  if step < 1:
    raise ValueError(f"Rows of {length} tokens cannot hold a [CLS] token and text; use longer rows.")

  def split(example):
    tokens = example["targets"]
    num_tokens = tf.size(tokens)
    num_pieces = tf.maximum((num_tokens + step - 1) // step, 1)
    padded = tf.pad(tokens, [[0, num_pieces * step - num_tokens]])
    pieces = tf.reshape(padded, [num_pieces, step])
    lengths = tf.minimum(step, num_tokens - tf.range(num_pieces) * step)
    if prefix_id is not None:
      pieces = tf.concat([tf.fill([num_pieces, 1], tf.cast(prefix_id, pieces.dtype)), pieces], axis=1)
      lengths += 1
    return tf.data.Dataset.from_tensor_slices((pieces, lengths)).map(
        lambda piece, n: {"targets": piece[:n]})

  return dataset.flat_map(split)


@gin.configurable
def pack_documents(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Packs tokenized documents into full rows with segment ids and positions.

  Documents longer than a row are split into row-sized pieces first, so no
  token is dropped; short documents and the tails of long ones share rows.
  Attention in the model is restricted to tokens of the same segment.

  When the vocabulary has a cls id (BERT's ``[CLS]``, RoBERTa's ``<s>``),
  every document, and every piece of a long one, starts with it, as encoder
  checkpoints saw their inputs: ``[CLS] doc [SEP] [CLS] doc [SEP] ...``.
  Vocabularies without one (lmlab's, T5's) pack the documents as they are.
  """
  length = sequence_length["targets"]
  cls_id = vocabularies.special_tokens(output_features["targets"].vocabulary).cls_id
  dataset = _split_long_documents(dataset, length, cls_id)
  packed = seqio.utils.trim_and_pack_dataset(dataset, {"targets": length})
  return packed.map(lambda ex: {
      "targets": ex["targets"],
      "segment_ids": ex["targets_segment_ids"],
      "positions": ex["targets_positions"],
  }, num_parallel_calls=tf.data.AUTOTUNE)


def word_ids(tokens: tf.Tensor, segment_ids: tf.Tensor, vocab: seqio.Vocabulary) -> tf.Tensor:
  """Index of the word each token belongs to (0-based, increasing along the row)."""
  table = tf.constant(vocabularies.word_start_table(vocab))
  starts = tf.gather(table, tokens)
  if isinstance(vocab, seqio.ByteVocabulary):
    # Whitespace bytes are their own words and the byte after one starts a word.
    starts = starts | tf.concat([[True], tf.gather(table, tokens[:-1])], axis=0)
  new_segment = tf.concat([[True], segment_ids[1:] != segment_ids[:-1]], axis=0)
  return tf.cumsum(tf.cast(starts | new_segment, tf.int32)) - 1


def _select_tokens(candidates: tf.Tensor, budget: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Exactly ``budget`` candidate positions, uniformly at random."""
  length = tf.size(candidates)
  scores = tf.where(candidates, tf.random.stateless_uniform([length], seed), 2.0)
  ranks = tf.argsort(tf.argsort(scores, stable=True), stable=True)
  return candidates & (ranks < budget)


def greedy_fill(sizes: tf.Tensor, budget: tf.Tensor) -> tf.Tensor:
  """Which items to take when visiting ``sizes`` in order, taking each that still fits ``budget``.

  This is BERT's whole-word rule (``create_pretraining_data.py``): an item
  whose size would push the total past the budget is skipped, and later,
  smaller items may still be taken; the total never exceeds ``budget``.
  Instead of one step per item it runs in rounds: a round drops the items
  too large for what is left, takes every remaining item up to the first
  one that overflows, and skips that one. Each round takes something and
  leaves less than the skipped item's size, so there are few rounds.

  Args:
    sizes: int32 ``[n]`` non-negative sizes, in visiting order (0: never taken).
    budget: int32 scalar.

  Returns:
    bool ``[n]``: the items taken.
  """
  n = tf.size(sizes)
  positions = tf.range(n)

  def one_round(start, left, taken):
    eligible = (positions >= start) & (sizes > 0) & (sizes <= left)
    covered = tf.cumsum(tf.where(eligible, sizes, 0))
    fits = eligible & (covered <= left)
    first_overflow = tf.reduce_min(tf.where(eligible & (covered > left), positions, n))
    return first_overflow + 1, left - tf.reduce_sum(tf.where(fits, sizes, 0)), taken | fits

  _, _, taken = tf.while_loop(lambda start, left, _: (start < n) & (left > 0), one_round,
                              (tf.constant(0), tf.cast(budget, tf.int32), tf.zeros([n], tf.bool)))
  return taken


def _select_words(candidates: tf.Tensor, words: tf.Tensor, budget: tf.Tensor,
                  seed: tf.Tensor) -> tf.Tensor:
  """Whole words in random order, each taken only if it still fits in ``budget`` tokens (BERT)."""
  length = tf.size(candidates)
  word_sizes = tf.math.unsorted_segment_sum(tf.cast(candidates, tf.int32), words, length)
  word_scores = tf.where(word_sizes > 0, tf.random.stateless_uniform([length], seed), 2.0)
  order = tf.argsort(word_scores, stable=True)
  chosen_in_order = greedy_fill(tf.gather(word_sizes, order), budget)
  chosen = tf.scatter_nd(order[:, None], chosen_in_order, [length])
  return candidates & tf.gather(chosen, words)


@gin.configurable
@seqio.map_over_dataset(num_seeds=1)
def mlm_mask(example: Mapping[str, tf.Tensor], seed: tf.Tensor,
             output_features: Mapping[str, seqio.Feature],
             mask_rate: float = 0.15, mask_token_fraction: float = 0.8,
             random_token_fraction: float = 0.1, whole_word: bool = False) -> dict[str, tf.Tensor]:
  """BERT masking of one packed row.

  ``round(mask_rate * n)`` of the row's n real tokens (special tokens, such
  as padding, EOS, [CLS] or UNK, are never chosen) are selected for prediction; of those, ``mask_token_fraction``
  become the mask id, ``random_token_fraction`` a random ordinary token, and
  the rest stay unchanged. An exact count per row (rather than a Bernoulli
  draw per token) keeps the loss weight per batch steady. With
  ``whole_word`` the count is a ceiling instead: as in BERT, a word that
  would overshoot it is skipped, so a row may end a few tokens short.

  Args:
    example: Packed row with ``targets``, ``segment_ids``, ``positions``.
    seed: Stateless seed from seqio (different for every row of every epoch).
    output_features: The task's features (gives the vocabulary).
    mask_rate: Fraction of real tokens selected (0.15 BERT, 0.3 MosaicBERT).
    mask_token_fraction: Share of selected tokens replaced by the mask id.
    random_token_fraction: Share replaced by a uniformly random token.
    whole_word: Select whole words (all their pieces) instead of tokens.

  Returns:
    ``input_ids``, ``targets``, ``loss_weights``, ``segment_ids``, ``positions``.
  """
  if not 0.0 < mask_rate < 1.0 or mask_token_fraction + random_token_fraction > 1.0:
    raise ValueError(f"mlm_mask needs 0 < mask_rate < 1 and mask_token_fraction + random_token_fraction "
                     f"<= 1, got {mask_rate}, {mask_token_fraction}, {random_token_fraction}.")
  vocab = output_features["targets"].vocabulary
  tokens = example["targets"]
  segment_ids = example["segment_ids"]
  select_seed, action_seed, random_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  special = tf.constant(sorted(vocabularies.special_tokens(vocab).ids), tokens.dtype)
  candidates = (segment_ids > 0) & ~tf.reduce_any(tokens[:, None] == special[None, :], axis=1)
  num_real = tf.reduce_sum(tf.cast(candidates, tf.float32))
  budget = tf.cast(tf.round(mask_rate * num_real), tf.int32)
  if whole_word:
    selected = _select_words(candidates, word_ids(tokens, segment_ids, vocab), budget, select_seed)
  else:
    selected = _select_tokens(candidates, budget, select_seed)
  action = tf.random.stateless_uniform(tf.shape(tokens), action_seed)
  low, high = vocabularies.random_token_range(vocab)
  random_tokens = tf.random.stateless_uniform(tf.shape(tokens), random_seed, low, high, dtype=tf.int32)
  to_mask = selected & (action < mask_token_fraction)
  to_random = selected & ~to_mask & (action < mask_token_fraction + random_token_fraction)
  inputs = tf.where(to_mask, tf.cast(vocabularies.mask_id(vocab), tokens.dtype), tokens)
  inputs = tf.where(to_random, random_tokens, inputs)
  return {
      "input_ids": inputs,
      "targets": tokens,
      "loss_weights": tf.cast(selected, tf.float32),
      "segment_ids": segment_ids,
      "positions": example["positions"],
  }
