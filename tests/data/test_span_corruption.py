"""T5/ByT5 span corruption and BART text infilling: statistics, exact reconstruction, errors."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from lmlab.data import denoising, tasks, vocabularies

SPM_SIZE = 8192  # real ids of the embedded SentencePiece model; sentinels live above


def _random_rows(count: int, length: int, low: int, high: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(low, high, size=(count, length), dtype=np.int32)


def _indexed(rows) -> tf.data.Dataset:
  """(index, row) pairs of rows that may differ in length."""
  return tf.data.Dataset.from_generator(
      lambda: enumerate(rows), output_signature=(tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.int32)))


def _corrupt_all(rows, vocab_size: int, density: float, mean_span: float) -> list:
  """(inputs, targets) of every row, each row with its own seed, computed in one tf.data pass."""
  def corrupt(index, tokens):
    return denoising.corrupt_spans(tokens, tf.stack([index, 17]), vocab_size, density, mean_span)

  return list(_indexed(rows).map(corrupt).as_numpy_iterator())


def _uncorrupt(inputs: np.ndarray, targets: np.ndarray, vocab_size: int, extra_ids: int):
  """The original tokens: each sentinel in ``inputs`` replaced by what follows it in ``targets``.

  Returns:
    (original tokens, list of noise-span lengths).
  """
  is_sentinel = lambda t: vocab_size - extra_ids <= t < vocab_size
  spans, current = {}, None
  for t in targets:
    if is_sentinel(t):
      current = int(t)
      assert current not in spans, "a sentinel repeats in targets"
      spans[current] = []
    else:
      assert current is not None, "targets must start with a sentinel"
      spans[current].append(int(t))
  tokens, used = [], []
  for t in inputs:
    if is_sentinel(t):
      tokens.extend(spans[int(t)])
      used.append(int(t))
    else:
      tokens.append(int(t))
  assert used == sorted(spans, reverse=True), "inputs and targets use the same sentinels, in order"
  assert used == list(range(vocab_size - 1, vocab_size - 1 - len(used), -1)), "sentinels 0, 1, 2, ..."
  return np.array(tokens), [len(spans[s]) for s in used]


@pytest.mark.parametrize("length,mean_span,count", [(568, 3.0, 200), (1193, 20.0, 60)])
def test_span_corruption_statistics_and_exact_reconstruction(length, mean_span, count):
  vocab_size, extra_ids = SPM_SIZE + 100, 100
  rows = _random_rows(count, length, 3, SPM_SIZE)
  noise_total, span_lengths, first_lengths = 0, [], []
  for row, (inputs, targets) in zip(rows, _corrupt_all(rows, vocab_size, 0.15, mean_span)):
    original, lengths = _uncorrupt(inputs, targets, vocab_size, extra_ids)
    np.testing.assert_array_equal(original, row)
    # Exactly one sentinel per span on each side, all of them above the real ids.
    assert (inputs >= SPM_SIZE).sum() == (targets >= SPM_SIZE).sum() == len(lengths)
    assert inputs[0] < SPM_SIZE, "the row starts with kept tokens"
    assert min(lengths) >= 1
    noise_total += sum(lengths)
    span_lengths += lengths
    first_lengths.append(lengths[0])
  assert abs(noise_total / rows.size - 0.15) < 0.01
  assert abs(np.mean(span_lengths) - mean_span) < 0.3
  assert np.std(first_lengths) > 0, "span lengths are random, not fixed"


def test_short_chunks_still_corrupt_and_reconstruct():
  rows = [_random_rows(1, length, 3, SPM_SIZE, seed=length)[0] for length in range(2, 40)]
  for row, (inputs, targets) in zip(rows, _corrupt_all(rows, SPM_SIZE + 100, 0.15, 3.0)):
    original, lengths = _uncorrupt(inputs, targets, SPM_SIZE + 100, 100)
    np.testing.assert_array_equal(original, row)
    noise, spans = denoising.noise_counts(len(row), 0.15, 3.0)
    assert sum(lengths) == noise and len(lengths) == spans and noise < len(row)


def _t5_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
  """T5's ``random_spans_noise_mask`` counts, re-done in numpy float32 (np.round: halves to even)."""
  noise = int(np.round(np.float32(length) * np.float32(density)))
  noise = min(max(noise, 1), length - 1)
  spans = int(np.round(np.float32(noise) / np.float32(mean_span)))
  return noise, max(spans, 1)


def _float64_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
  """The same rule in Python floats (what lmlab used to compute)."""
  noise = min(max(round(length * density), 1), length - 1)
  return noise, max(round(noise / mean_span), 1)


@pytest.mark.parametrize("density,mean_span,num_differ", [(0.15, 3.0, 39), (0.15, 20.0, 39), (0.3, 3.0, 81)])
def test_noise_counts_round_in_float32_like_t5(density, mean_span, num_differ):
  lengths = range(2, 5000)
  want = [_t5_counts(n, density, mean_span) for n in lengths]
  assert [denoising.noise_counts(n, density, mean_span) for n in lengths] == want
  noise, spans = denoising._counts_tf(tf.range(2, 5000), density, mean_span)  # pylint: disable=protected-access
  assert list(zip(noise.numpy().tolist(), spans.numpy().tolist())) == want
  # Python floats round some of these lengths the other way (so the old helper failed this test).
  differ = [n for n, w in zip(lengths, want) if _float64_counts(n, density, mean_span) != w]
  assert len(differ) == num_differ
  if density == 0.15:
    assert differ[0] == 190  # 190 * 0.15: 29 noise tokens in float32, 28 in float64
    assert denoising.noise_counts(190, density, mean_span)[0] == 29


def test_graph_corruption_uses_the_float32_counts():
  rows = [_random_rows(1, n, 3, SPM_SIZE, seed=n)[0] for n in (190, 350, 390, 670)]
  for row, (inputs, targets) in zip(rows, _corrupt_all(rows, SPM_SIZE + 100, 0.15, 3.0)):
    _, lengths = _uncorrupt(inputs, targets, SPM_SIZE + 100, 100)
    assert (sum(lengths), len(lengths)) == _t5_counts(len(row), 0.15, 3.0)


@pytest.mark.parametrize("mean_span", [3.0, 20.0])
def test_length_helper_fills_inputs_exactly_under_the_float32_counts(mean_span):
  for inputs_length in range(3, 1100):
    raw, targets_length = denoising.span_corruption_lengths(inputs_length, 0.15, mean_span)
    noise, spans = _t5_counts(raw, 0.15, mean_span)
    assert raw - noise + spans + 1 <= inputs_length and noise + spans + 1 == targets_length
    noise, spans = _t5_counts(raw + 1, 0.15, mean_span)
    assert raw + 1 - noise + spans + 1 > inputs_length, inputs_length


def test_length_helper_matches_t5_and_byt5():
  assert denoising.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
  assert denoising.span_corruption_lengths(1024, 0.15, 20.0) == (1193, 189)
  for inputs_length in (8, 64, 177, 512):
    raw, targets_length = denoising.span_corruption_lengths(inputs_length)
    noise, spans = denoising.noise_counts(raw, 0.15, 3.0)
    assert raw - noise + spans + 1 == inputs_length and noise + spans + 1 == targets_length
    noise, spans = denoising.noise_counts(raw + 1, 0.15, 3.0)
    assert raw + 1 - noise + spans + 1 > inputs_length
  with pytest.raises(ValueError, match="at least 3"):
    denoising.span_corruption_lengths(2)


def _features(vocab):
  return {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}


def _documents(rows):
  return tf.data.Dataset.from_tensor_slices({"targets": tf.constant(rows)})


def test_too_few_extra_ids_and_short_targets_are_refused():
  rows = _random_rows(2, 600, 3, SPM_SIZE)
  with pytest.raises(ValueError, match=r"at least 28 sentinel ids but has 0 \(extra_ids=0.*with_sentinels"):
    denoising.span_corruption(_documents(rows), {"inputs": 512, "targets": 114},
                              _features(vocabularies.embedded_vocabulary()))
  with pytest.raises(ValueError, match="set it to 114"):
    denoising.span_corruption(_documents(rows), {"inputs": 512, "targets": 100},
                              _features(vocabularies.embedded_vocabulary_with_sentinels()))
  with pytest.raises(ValueError, match="extra_ids=1"):
    vocabularies.sentinel_id(vocabularies.byte_vocabulary(), 1)


def test_byte_sentinels_stop_where_utf8_text_begins():
  """ByT5's sentinels are the 11 top byte ids (bytes 0xF5..0xFF); more spans need the legacy layout."""
  docs = _random_rows(2, 600, 3, 3 + 0xF5)
  with pytest.raises(ValueError, match=r"at least 28 sentinel ids but has 11.*byt5_legacy_vocabulary"):
    denoising.span_corruption(_documents(docs), {"inputs": 512, "targets": 114},
                              _features(vocabularies.byt5_vocabulary()))
  legacy = vocabularies.byt5_legacy_vocabulary()
  with seqio.utils.map_seed_manager(0):
    examples = list(denoising.span_corruption(_documents(docs), {"inputs": 512, "targets": 114},
                                              _features(legacy)).as_numpy_iterator())
  assert examples[0]["targets"][0] == 383  # the old layout's sentinel 0
  # ByT5's own setting (inputs 1024, mean span 20) needs 9 of the 11.
  raw = denoising.span_corruption_lengths(1024, 0.15, 20.0)[0]
  assert denoising.noise_counts(raw, 0.15, 20.0)[1] == 9


def test_preprocessor_chunks_documents_and_is_reproducible_yet_fresh_per_epoch():
  vocab = vocabularies.embedded_vocabulary_with_sentinels()
  rows = _random_rows(1, 150, 3, SPM_SIZE)  # 70 + 70 + 10 raw tokens for inputs length 64

  def run(seed, epochs=1):
    with seqio.utils.map_seed_manager(seed):
      ds = denoising.span_corruption(_documents(rows).repeat(epochs), {"inputs": 64, "targets": 14},
                                     _features(vocab))
    return list(ds.as_numpy_iterator())

  examples = run(3)
  assert [len(e["inputs"]) for e in examples] == [63, 63, 9]  # EOS comes later
  pieces = [_uncorrupt(e["inputs"], e["targets"], vocab.vocab_size, 100)[0] for e in examples]
  np.testing.assert_array_equal(np.concatenate(pieces), rows[0])
  again = run(3)
  for a, b in zip(examples, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  epochs = run(3, epochs=4)
  assert len({e["inputs"].tobytes() for e in epochs[::3]}) == 4, "each epoch is corrupted afresh"
  steps = tasks.denoising_preprocessors(denoising.span_corruption)
  cache_at = next(i for i, p in enumerate(steps) if isinstance(p, seqio.CacheDatasetPlaceholder))
  assert steps.index(denoising.span_corruption) > cache_at


def test_sentinel_ids_are_the_top_extra_ids():
  spm = vocabularies.embedded_vocabulary_with_sentinels()
  assert spm.vocab_size == SPM_SIZE + 100
  assert vocabularies.sentinel_id(spm, 0) == SPM_SIZE + 99
  assert spm.tokenizer.id_to_piece(vocabularies.sentinel_id(spm, 5)).endswith("<extra_id_5>")
  # Released ByT5 (and MrT5's first_sentinel=258): no extra ids, sentinel j is byte id 258 - j.
  byt5 = vocabularies.byt5_vocabulary()
  assert byt5.vocab_size == 259 and byt5.extra_ids == 0
  assert [vocabularies.sentinel_id(byt5, j) for j in range(11)] == list(range(258, 247, -1))
  with pytest.raises(ValueError, match="sentinels 0..10 only"):
    vocabularies.sentinel_id(byt5, 11)
  assert max(byt5.encode("\u00ff\U0010ffff")) < 248  # UTF-8 never reaches the sentinel bytes
  legacy = vocabularies.byt5_legacy_vocabulary()
  assert legacy.vocab_size == 384 and vocabularies.sentinel_id(legacy, 124) == 259
  assert vocabularies.mask_id(spm) == vocabularies.mask_id(vocabularies.embedded_vocabulary())
  low, high = vocabularies.random_token_range(spm)
  assert high == SPM_SIZE, "MLM random replacement never draws a sentinel"


# ---------------------------------------------------------------------------
# BART


MASK = 3


def _infill_all(rows, mask_ratio=0.3, poisson_lambda=3.0):
  def infill(index, tokens):
    return denoising.infill_text(tokens, tf.stack([index, 5]), MASK, mask_ratio, poisson_lambda)

  return list(_indexed(rows).map(infill).as_numpy_iterator())


def _gaps(original: np.ndarray, inputs: np.ndarray):
  """Per gap between kept tokens: (tokens removed there, masks there). Tokens must be unique."""
  kept = inputs[inputs != MASK]
  position = {int(t): i for i, t in enumerate(original)}
  kept_positions = [position[int(t)] for t in kept]
  assert kept_positions == sorted(kept_positions), "kept tokens stay in order"
  bounds = [-1] + kept_positions + [len(original)]
  removed = [b - a - 1 for a, b in zip(bounds[:-1], bounds[1:])]
  masks, run = [], 0
  for t in inputs:
    if t == MASK:
      run += 1
    else:
      masks.append(run)
      run = 0
  masks.append(run)
  return removed, masks


def test_text_infilling_masks_the_fraction_with_one_mask_per_span():
  rng = np.random.default_rng(1)
  length = 255
  rows = np.stack([rng.permutation(np.arange(10, 8000, dtype=np.int32))[:length] for _ in range(120)])
  spans, inserts, masked = [], 0, 0
  for row, inputs in zip(rows, _infill_all(rows)):
    removed, masks = _gaps(row, inputs)
    assert sum(removed) == round(0.3 * length)
    for r, m in zip(removed, masks):
      if r:
        assert m >= 1, "a removed span leaves a mask behind"
        spans.append(r)
      inserts += m - (r > 0)  # zero-length spans insert a mask
    masked += sum(removed)
  assert abs(masked / rows.size - 0.3) < 0.01
  # Poisson(3) without its zeros has mean 3 / (1 - e^-3) = 3.16 (the last span per row is cut short).
  assert 2.7 < np.mean(spans) < 3.4
  assert 0.01 < inserts / (inserts + len(spans)) < 0.1  # P(0) = e^-3 = 5%


def _sentences(tokens, vocab):
  ids = denoising.sentence_ids(tf.constant(tokens), vocabularies.sentence_end_table(vocab),
                               vocabularies.word_start_table(vocab)).numpy()
  return [tuple(tokens[ids == s]) for s in range(ids.max() + 1)]


def test_bart_targets_are_the_original_and_sentences_are_permuted():
  vocab = vocabularies.embedded_vocabulary()
  docs = ["In the beginning. Then \"what?\" she said. Pi is 3.14 and fine! End.", "One. Two. Three. Four."]
  rows = [vocab.encode(d) * 3 for d in docs]
  dataset = tf.data.Dataset.from_generator(lambda: ({"targets": r} for r in rows),
                                           output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  with seqio.utils.map_seed_manager(2):
    permuted = denoising.bart_denoising(dataset.repeat(8), {"inputs": 256, "targets": 256},
                                        _features(vocab), mask_ratio=0.0, permute_sentences=True)
  reordered = 0
  for i, ex in enumerate(permuted.as_numpy_iterator()):
    np.testing.assert_array_equal(ex["targets"], rows[i % 2])
    want, got = _sentences(ex["targets"], vocab), _sentences(ex["inputs"], vocab)
    assert collections.Counter(want) == collections.Counter(got)
    reordered += got != want
  assert reordered >= 12
  assert len(_sentences(np.array(vocab.encode(docs[0])), vocab)) == 5  # not after "3.14"; after 'what?" she'
  with seqio.utils.map_seed_manager(2):
    masked = denoising.bart_denoising(dataset, {"inputs": 256, "targets": 256}, _features(vocab))
  for row, ex in zip(rows, masked.as_numpy_iterator()):
    np.testing.assert_array_equal(ex["targets"], row)
    assert (ex["inputs"] == vocabularies.mask_id(vocab)).any()


def test_sentence_end_table():
  vocab = vocabularies.embedded_vocabulary()
  table = vocabularies.sentence_end_table(vocab)
  piece = vocab.tokenizer.piece_to_id
  assert table[piece(".")] and table[piece("?")] and table[piece(".\"")]
  assert not table[piece("\u2581the")] and not table[vocabularies.EOS_ID]
  byte_table = vocabularies.sentence_end_table(vocabularies.byt5_vocabulary())
  assert byte_table.sum() == 3 and byte_table[ord("!") + 3]


def test_bad_rates_are_refused():
  rows = _random_rows(1, 50, 3, SPM_SIZE)
  vocab = vocabularies.embedded_vocabulary()
  with pytest.raises(ValueError, match="mask_ratio"):
    denoising.bart_denoising(_documents(rows), {"inputs": 64, "targets": 64}, _features(vocab), mask_ratio=1.0)
  with pytest.raises(ValueError, match="noise_density"):
    denoising.span_corruption_lengths(512, noise_density=0.0)
