"""MLM masking statistics and whole-word selection on real embedded-corpus rows."""

from __future__ import annotations

import functools

import gin
import numpy as np
import pytest
import tensorflow as tf

from lmlab.data import pipeline, preprocessors, vocabularies

LENGTH, BATCH, BATCHES = 128, 32, 8


@functools.lru_cache(maxsize=None)
def _rows(task: str, mask_rate: float, whole_word: bool = False) -> dict:
  gin.clear_config()
  gin.bind_parameter("mlm_mask.mask_rate", mask_rate)
  gin.bind_parameter("mlm_mask.whole_word", whole_word)
  dataset = pipeline.get_dataset(task, "train", LENGTH, BATCH, shuffle=True, seed=3, repeat=True)
  batches = [b for _, b in zip(range(BATCHES), dataset.as_numpy_iterator())]
  gin.clear_config()
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("rate", [0.15, 0.30])
def test_selection_rate_and_80_10_10_split(rate):
  rows = _rows("lmlab.embedded_mlm", rate)
  vocab = vocabularies.embedded_vocabulary()
  real = (rows["segment_ids"] > 0) & (rows["targets"] != vocabularies.EOS_ID)
  selected = rows["loss_weights"] > 0
  assert abs(selected.sum() / real.sum() - rate) < 0.01
  # Exact count per row: round(rate * real tokens of the row).
  np.testing.assert_array_equal(selected.sum(1), np.round(rate * real.sum(1)))
  assert not selected[~real].any(), "padding or EOS was selected"
  inputs, targets = rows["input_ids"][selected], rows["targets"][selected]
  masked = inputs == vocabularies.mask_id(vocab)
  kept = inputs == targets
  replaced = ~masked & ~kept
  n = selected.sum()
  assert abs(masked.sum() / n - 0.8) < 0.03
  assert abs(replaced.sum() / n - 0.1) < 0.03  # a random token can equal the original: ~kept
  assert abs(kept.sum() / n - 0.1) < 0.03
  low, high = vocabularies.random_token_range(vocab)
  assert ((inputs[replaced] >= low) & (inputs[replaced] < high)).all()
  np.testing.assert_array_equal(rows["input_ids"][~selected], rows["targets"][~selected])


def test_whole_word_masking_selects_complete_words():
  rows = _rows("lmlab.embedded_mlm", 0.15, whole_word=True)
  vocab = vocabularies.embedded_vocabulary()
  selected = rows["loss_weights"] > 0
  real = (rows["segment_ids"] > 0) & (rows["targets"] != vocabularies.EOS_ID)
  assert abs(selected.sum() / real.sum() - 0.15) < 0.03
  partial = 0
  for r in range(rows["targets"].shape[0]):
    words = preprocessors.word_ids(tf.constant(rows["targets"][r]), tf.constant(rows["segment_ids"][r]),
                                   vocab).numpy()
    for w in np.unique(words[selected[r]]):
      in_word = (words == w) & real[r]
      partial += int(selected[r][in_word].min() != selected[r][in_word].max())
  assert partial == 0
  # Multi-piece words exist in the data, so this is a real check.
  starts = vocabularies.word_start_table(vocab)[rows["targets"]]
  assert (~starts & real).sum() > 100
  # BERT's budget is a ceiling: a word that would overshoot it is skipped.
  assert (selected.sum(1) <= np.round(np.float32(0.15) * real.sum(1))).all()


def _bert_whole_words(sizes, budget) -> list[bool]:
  """google-research/bert create_pretraining_data.py: visit words in order, skip one that overshoots."""
  taken, covered = [], 0
  for size in sizes:
    fits = 0 < size and covered + size <= budget
    covered += size if fits else 0
    taken.append(fits)
  return taken


def _old_whole_words(sizes, budget) -> list[bool]:
  """lmlab before the fix: words in order while fewer than ``budget`` tokens are covered."""
  before = np.cumsum(np.concatenate([[0], sizes[:-1]]))
  return ((before < budget) & (np.asarray(sizes) > 0)).tolist()


def test_greedy_fill_is_berts_whole_word_rule():
  rng = np.random.default_rng(0)
  overshoots = 0
  fill = tf.function(preprocessors.greedy_fill)
  for trial in range(300):
    n = int(rng.integers(1, 200))
    sizes = rng.choice([0, 1, 1, 2, 3, 5, 8, 13], size=n).astype(np.int32)  # long multi-piece words
    budget = int(rng.integers(0, max(int(sizes.sum() * 0.3), 1) + 1))
    got = fill(tf.constant(sizes), tf.constant(budget)).numpy()
    want = _bert_whole_words(sizes, budget)
    assert got.tolist() == want, trial
    assert sizes[got].sum() <= budget
    overshoots += int(sizes[np.array(_old_whole_words(sizes, budget), bool)].sum() > budget)
  assert overshoots > 50, "the old rule overshoots the budget, so this test tells the two apart"


def test_whole_word_byte_masking_never_exceeds_the_budget():
  """Byte "words" are many tokens long: the old rule overshot on most rows, BERT's never does."""
  vocab = vocabularies.byte_vocabulary()
  over, short = 0, []
  for seed in range(4):
    gin.clear_config()
    gin.bind_parameter("mlm_mask.whole_word", True)
    dataset = pipeline.get_dataset("lmlab.embedded_mlm_bytes", "train", LENGTH, BATCH, shuffle=True,
                                   seed=seed, repeat=True)
    rows = next(dataset.as_numpy_iterator())
    gin.clear_config()
    real = (rows["segment_ids"] > 0) & (rows["targets"] != vocabularies.EOS_ID)
    selected = rows["loss_weights"] > 0
    budget = np.round(np.float32(0.15) * real.sum(1).astype(np.float32)).astype(int)
    assert (selected.sum(1) <= budget).all()
    short += (budget - selected.sum(1)).tolist()
    for r in range(len(budget)):
      words = preprocessors.word_ids(tf.constant(rows["targets"][r]), tf.constant(rows["segment_ids"][r]),
                                     vocab).numpy()
      sizes = np.bincount(words[real[r]], minlength=words.max() + 1)
      chosen = np.unique(words[selected[r]])
      assert (selected[r][np.isin(words, chosen) & real[r]]).all(), "whole words only"
      order = np.random.default_rng(r).permutation(len(sizes))
      over += int(sizes[order][np.array(_old_whole_words(sizes[order], budget[r]), bool)].sum() > budget[r])
  assert over > 0, "with these words the old rule would have masked past the budget"
  assert np.mean(short) < 1.0  # spaces are one-byte words, so the budget is (nearly) always met


def test_byte_task_masks_with_the_extra_id():
  rows = _rows("lmlab.embedded_mlm_bytes", 0.15)
  vocab = vocabularies.byte_vocabulary()
  selected = rows["loss_weights"] > 0
  assert (rows["input_ids"][selected] == vocabularies.mask_id(vocab)).mean() > 0.7
  assert rows["targets"].max() < vocabularies.mask_id(vocab)


def test_vocabulary_round_trip_and_mask_id():
  vocab = vocabularies.embedded_vocabulary()
  text = "In the beginning God created the heavens and the earth."
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  mask = vocabularies.mask_id(vocab)
  assert 0 <= mask < vocab.vocab_size and mask not in ids
  # The literal piece encodes to the mask id (handy for fill-in-the-mask input).
  assert mask in vocab.encode("a <mask> b")
  assert vocab.decode(vocab.encode("naïve café ☃")) == "naïve café ☃"  # byte fallback
