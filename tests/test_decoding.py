"""Decoding against brute force on toy models whose logits depend on the whole prefix."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab.wrappers import decoding

VOCAB, EOS, MAX_LEN = 5, 1, 4


def _table(seed: int) -> np.ndarray:
  """Logits for (hash of prefix) x vocab: the next token depends on the whole history."""
  return np.random.RandomState(seed).randn(97, VOCAB).astype(np.float32) * 2.0


def _hash(prefix_hash: jax.Array, token: jax.Array) -> jax.Array:
  return (prefix_hash * 7 + token + 3) % 97


def history_model(table: np.ndarray):
  """Cache = running hash of the tokens fed so far: ``{"hash": [n, 1]}``."""
  table = jnp.asarray(table)

  def step(ids, cache, position):
    del position
    new_hash = _hash(cache["hash"], ids)
    return table[new_hash[:, 0]], {"hash": new_hash}

  return step


def prefix_model(table: np.ndarray, max_len: int):
  """Same model recomputed from a token buffer ``{"buffer": [n, max_len]}`` (no incremental state)."""
  table = jnp.asarray(table)

  def step(ids, cache, position):
    buffer = jax.lax.dynamic_update_slice_in_dim(cache["buffer"], ids, position, axis=1)
    h = jnp.zeros((ids.shape[0],), jnp.int32)
    for i in range(max_len):
      h = jnp.where(i <= position, _hash(h, buffer[:, i]), h)
    return table[h], {"buffer": buffer}

  return step


def _np_log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _sequence_logp(table, seq, start=0):
  h, total, prev = 0, 0.0, start
  for token in seq:
    h = (h * 7 + prev + 3) % 97
    total += _np_log_softmax(table[h])[token]
    prev = token
  return total


def _greedy_reference(table, start_hash_rows, max_len):
  out = []
  for _ in range(start_hash_rows):
    h, prev, seq = 0, 0, []
    for _ in range(max_len):
      h = (h * 7 + prev + 3) % 97
      prev = int(np.argmax(table[h]))
      seq.append(prev)
      if prev == EOS:
        break
    out.append(seq + [0] * (max_len - len(seq)))
  return np.array(out)


def _cache(rows):
  return {"hash": jnp.zeros((rows, 1), jnp.int32)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_reference_and_stops_at_eos(seed):
  table = _table(seed)
  result = jax.jit(functools.partial(decoding.greedy_decode, history_model(table), batch_size=2,
                                     max_decode_length=6, eos_id=EOS))(_cache(2))
  want = _greedy_reference(table, 2, 6)
  np.testing.assert_array_equal(np.asarray(result.tokens), want)
  ends = [list(r).index(EOS) + 1 if EOS in r else 6 for r in want]
  np.testing.assert_array_equal(np.asarray(result.lengths), ends)


def test_cache_free_model_gives_the_same_tokens():
  table = _table(3)
  with_state = decoding.greedy_decode(history_model(table), _cache(2), batch_size=2,
                                      max_decode_length=6, eos_id=EOS)
  buffer = {"buffer": jnp.zeros((2, 6), jnp.int32)}
  recomputed = decoding.greedy_decode(prefix_model(table, 6), buffer, batch_size=2,
                                      max_decode_length=6, eos_id=EOS)
  np.testing.assert_array_equal(np.asarray(with_state.tokens), np.asarray(recomputed.tokens))


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_equals_greedy(seed):
  table = _table(seed)
  greedy = decoding.greedy_decode(history_model(table), _cache(1), batch_size=1,
                                  max_decode_length=MAX_LEN, eos_id=EOS)
  beam = decoding.beam_search(history_model(table), _cache(1), batch_size=1, beam_size=1,
                              max_decode_length=MAX_LEN, eos_id=EOS, length_penalty_alpha=0.0)
  np.testing.assert_array_equal(np.asarray(beam.tokens[:, 0]), np.asarray(greedy.tokens))


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("seed", range(3))
def test_beam_search_finds_the_exhaustive_best(seed, alpha):
  table = _table(seed + 10)
  candidates = []
  for n in range(1, MAX_LEN + 1):
    for seq in itertools.product(range(VOCAB), repeat=n):
      if EOS in seq[:-1]:
        continue
      ended = seq[-1] == EOS
      if not ended and n < MAX_LEN:
        continue  # unfinished hypotheses only count at full length
      lp = _sequence_logp(table, seq)
      candidates.append((lp / ((5 + n) / 6) ** alpha, seq))
  candidates.sort(reverse=True)
  result = jax.jit(functools.partial(
      decoding.beam_search, history_model(table), batch_size=1, beam_size=VOCAB ** (MAX_LEN - 1),
      max_decode_length=MAX_LEN, eos_id=EOS, length_penalty_alpha=alpha))(_cache(1))
  best = [int(t) for t in np.asarray(result.tokens)[0, 0]][:len(candidates[0][1])]
  assert tuple(best) == candidates[0][1]
  np.testing.assert_allclose(float(result.scores[0, 0]), candidates[0][0], rtol=1e-5)
  scores = np.asarray(result.scores)[0]
  assert np.all(np.diff(scores) <= 1e-6)  # best first


def test_beam_search_reorders_cache_rows_per_batch_row():
  """Two batch rows with different start hashes decode independently."""
  table = _table(7)
  cache = {"hash": jnp.asarray([[0], [5]], jnp.int32)}
  both = decoding.beam_search(history_model(table), cache, batch_size=2, beam_size=3,
                              max_decode_length=MAX_LEN, eos_id=EOS)
  for row in range(2):
    alone = decoding.beam_search(history_model(table), {"hash": cache["hash"][row:row + 1]},
                                 batch_size=1, beam_size=3, max_decode_length=MAX_LEN, eos_id=EOS)
    np.testing.assert_array_equal(np.asarray(both.tokens[row]), np.asarray(alone.tokens[0]))


def test_sampling_is_reproducible_and_respects_filters():
  table = _table(4)
  sample = jax.jit(functools.partial(decoding.sample_decode, history_model(table), batch_size=64,
                                     max_decode_length=MAX_LEN, eos_id=EOS),
                   static_argnames=("temperature", "top_k", "top_p"))
  a = sample(_cache(64), jax.random.PRNGKey(0))
  b = sample(_cache(64), jax.random.PRNGKey(0))
  c = sample(_cache(64), jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  greedy = decoding.greedy_decode(history_model(table), _cache(64), batch_size=64,
                                  max_decode_length=MAX_LEN, eos_id=EOS)
  for kwargs in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0)):
    np.testing.assert_array_equal(np.asarray(sample(_cache(64), jax.random.PRNGKey(2), **kwargs).tokens),
                                  np.asarray(greedy.tokens))
  first = np.asarray(sample(_cache(64), jax.random.PRNGKey(3), top_k=2).tokens)[:, 0]
  assert set(first) <= set(np.argsort(table[3])[-2:])  # hash of (0, start 0) is 3


def test_temperature_sampling_follows_the_softmax():
  logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0, -3.0]])
  step = lambda ids, cache, position: (jnp.tile(logits, (ids.shape[0], 1)), cache)
  result = decoding.sample_decode(step, {"x": jnp.zeros((4000, 1))}, jax.random.PRNGKey(0),
                                  batch_size=4000, max_decode_length=1, eos_id=99, temperature=2.0)
  freq = np.bincount(np.asarray(result.tokens[:, 0]), minlength=5) / 4000
  want = np.asarray(jax.nn.softmax(logits[0] / 2.0))
  np.testing.assert_allclose(freq, want, atol=0.03)


def test_bad_arguments():
  step = history_model(_table(0))
  with pytest.raises(ValueError, match="beam_size"):
    decoding.beam_search(step, _cache(1), batch_size=1, beam_size=0, max_decode_length=2, eos_id=1)
  with pytest.raises(ValueError, match="max_decode_length"):
    decoding.greedy_decode(step, _cache(1), batch_size=1, max_decode_length=0, eos_id=1)
  with pytest.raises(ValueError, match="top_p"):
    decoding.sample_decode(step, _cache(1), jax.random.PRNGKey(0), batch_size=1,
                           max_decode_length=2, eos_id=1, top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    decoding.sample_decode(step, _cache(1), jax.random.PRNGKey(0), batch_size=1,
                           max_decode_length=2, eos_id=1, temperature=-1.0)
