"""Autoregressive decoding that knows nothing of the model: greedy, sampling, beam search.

A model is seen only through ``tokens_to_logits(token_ids [n, 1], cache, position)
-> (logits [n, vocab], new_cache)``: feed one token per row at decoder
``position`` (position 0 receives the start token) and get the next-token
logits. Every leaf of ``cache`` has the rows as its leading axis, so beam
search can repeat and reorder it without knowing its structure. Everything
here runs under ``jax.jit`` with static shapes; loops are ``lax.while_loop``
that stop once every row (or beam) is finished.

Returned tokens hold the generated ids (the start token is not included),
EOS included, and 0 after EOS.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

TokensToLogits = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -1.0e9


@flax.struct.dataclass
class DecodeResult:
  """Decoded ids with their lengths (EOS counted) and scores.

  Greedy and sampling: ``tokens [batch, max_len]``, ``scores`` the summed
  log-probabilities. Beam search: ``tokens [batch, beams, max_len]`` best
  first, ``scores`` length-penalised.
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array


def repeat_rows(tree: Any, times: int) -> Any:
  """Each row of every leaf repeated ``times`` times in place (row i -> rows i*times...)."""
  return jax.tree_util.tree_map(lambda x: jnp.repeat(x, times, axis=0), tree)


def gather_rows(tree: Any, indices: jax.Array) -> Any:
  """Rows ``indices`` of every leaf."""
  return jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), tree)


def _check(max_decode_length: int, beam_size: int = 1) -> None:
  if max_decode_length < 1:
    raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}.")
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}.")


def _decode_loop(tokens_to_logits: TokensToLogits, cache: Any, choose, *, batch_size: int,
                 max_decode_length: int, eos_id: int, start_id: int) -> DecodeResult:
  """One token per row per step, picked by ``choose(log_probs, position)``."""
  _check(max_decode_length)

  def cond(state):
    position, _, _, done, _, _, _ = state
    return (position < max_decode_length) & ~jnp.all(done)

  def body(state):
    position, tokens, last, done, scores, lengths, cache = state
    logits, cache = tokens_to_logits(last, cache, position)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token = choose(log_probs, position).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    picked = jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]
    scores = scores + jnp.where(done, 0.0, picked)
    lengths = lengths + (~done).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], position, axis=1)
    done = done | (token == eos_id)
    return position + 1, tokens, token[:, None], done, scores, lengths, cache

  state = (jnp.int32(0), jnp.zeros((batch_size, max_decode_length), jnp.int32),
           jnp.full((batch_size, 1), start_id, jnp.int32), jnp.zeros((batch_size,), bool),
           jnp.zeros((batch_size,), jnp.float32), jnp.zeros((batch_size,), jnp.int32), cache)
  _, tokens, _, _, scores, lengths, _ = jax.lax.while_loop(cond, body, state)
  return DecodeResult(tokens=tokens, lengths=lengths, scores=scores)


def greedy_decode(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                  max_decode_length: int, eos_id: int, start_id: int = 0) -> DecodeResult:
  """The most likely next token at every step until EOS or ``max_decode_length``."""
  return _decode_loop(tokens_to_logits, cache, lambda lp, _: jnp.argmax(lp, axis=-1),
                      batch_size=batch_size, max_decode_length=max_decode_length,
                      eos_id=eos_id, start_id=start_id)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Logits with everything outside the top-k and the top-p nucleus set to -inf.

  The nucleus is the smallest set of most likely tokens whose probability
  reaches ``top_p``; the most likely token is always kept.
  """
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f"Need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}.")
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    # The smallest kept logit is the threshold; ties at it are kept too.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def sample_decode(tokens_to_logits: TokensToLogits, cache: Any, rng: jax.Array, *,
                  batch_size: int, max_decode_length: int, eos_id: int, start_id: int = 0,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> DecodeResult:
  """Ancestral sampling from ``softmax(logits / temperature)``, optionally top-k / top-p filtered.

  ``temperature == 0`` is greedy. Reproducible for a given ``rng``: step ``t``
  draws with ``fold_in(rng, t)``. ``scores`` are log-probabilities under the
  unfiltered model.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  filter_logits(jnp.zeros((1, 2)), top_k=top_k, top_p=top_p)  # validates the arguments early

  def choose(log_probs, position):
    if temperature == 0.0:
      return jnp.argmax(log_probs, axis=-1)
    logits = filter_logits(log_probs / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(rng, position), logits, axis=-1)

  return _decode_loop(tokens_to_logits, cache, choose, batch_size=batch_size,
                      max_decode_length=max_decode_length, eos_id=eos_id, start_id=start_id)


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT/T5 length normalisation ``((5 + length) / 6) ** alpha``."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int, beam_size: int,
                max_decode_length: int, eos_id: int, start_id: int = 0,
                length_penalty_alpha: float = 0.6) -> DecodeResult:
  """Beam search with separate alive and finished beams and GNMT length normalisation.

  Each step expands every alive beam, keeps the ``2 * beam_size`` best
  continuations, moves those ending in EOS to the finished set (scored by
  log-probability over ``length_penalty``) and keeps the best non-EOS ones
  alive. The search stops when no alive beam can still beat the worst
  finished one of its batch row. Rows with fewer than ``beam_size`` finished
  beams are filled with alive ones, scored at the full length. With
  ``beam_size=1`` and ``length_penalty_alpha=0`` the result is greedy decoding.

  ``cache`` has ``batch_size`` rows; it is repeated to ``batch_size *
  beam_size`` rows internally (beam ``j`` of row ``i`` is row ``i * beam_size + j``).
  """
  _check(max_decode_length, beam_size)
  b, k, length = batch_size, beam_size, max_decode_length
  batch_offsets = (jnp.arange(b) * k)[:, None]

  def top(scores, count, *arrays):
    values, index = jax.lax.top_k(scores, count)
    return (values,) + tuple(jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)),
                                                 axis=1) for a in arrays) + (index,)

  def cond(state):
    position, _, alive_logp, _, finished_scores, _, _ = state
    best_possible = alive_logp[:, 0] / length_penalty(length, length_penalty_alpha)
    worst_finished = jnp.min(finished_scores, axis=1)
    can_improve = jnp.any(best_possible > worst_finished)
    return (position < length) & can_improve

  def body(state):
    position, alive_seqs, alive_logp, finished_seqs, finished_scores, finished_lengths, cache = state
    last = jnp.where(position == 0, start_id,
                     jax.lax.dynamic_index_in_dim(alive_seqs, jnp.maximum(position - 1, 0), axis=2,
                                                  keepdims=False))
    logits, cache = tokens_to_logits(last.reshape(b * k, 1).astype(jnp.int32), cache, position)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
    candidates = (alive_logp[:, :, None] + log_probs).reshape(b, k * vocab)
    cand_logp, flat_index = jax.lax.top_k(candidates, 2 * k)
    cand_beam, cand_token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)
    cand_seqs = jnp.take_along_axis(alive_seqs, cand_beam[:, :, None], axis=1)
    cand_seqs = jax.lax.dynamic_update_slice_in_dim(cand_seqs, cand_token[:, :, None], position, axis=2)
    ends = cand_token == eos_id
    # Alive: the best k candidates that did not end.
    alive_logp, alive_seqs, alive_beam, _ = top(jnp.where(ends, NEG_INF, cand_logp), k, cand_seqs,
                                                cand_beam[:, :, None])
    cache = gather_rows(cache, (batch_offsets + alive_beam[:, :, 0]).reshape(-1))
    # Finished: merge the candidates that ended with the beams finished before.
    new_scores = jnp.where(ends, cand_logp / length_penalty(position + 1, length_penalty_alpha),
                           NEG_INF)
    merged_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    merged_seqs = jnp.concatenate([finished_seqs, cand_seqs], axis=1)
    merged_lengths = jnp.concatenate(
        [finished_lengths, jnp.full((b, 2 * k), position + 1, jnp.int32)], axis=1)
    finished_scores, finished_seqs, finished_lengths, _ = top(
        merged_scores, k, merged_seqs, merged_lengths[:, :, None])
    return (position + 1, alive_seqs, alive_logp, finished_seqs, finished_scores,
            finished_lengths[:, :, 0], cache)

  alive_logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  state = (jnp.int32(0), jnp.zeros((b, k, length), jnp.int32), alive_logp,
           jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
           jnp.zeros((b, k), jnp.int32), repeat_rows(cache, k))
  _, alive_seqs, alive_logp, finished_seqs, finished_scores, finished_lengths, _ = (
      jax.lax.while_loop(cond, body, state))
  # Rows short of finished beams take alive ones, scored as if ended at the full length.
  alive_scores = jnp.where(alive_logp > NEG_INF / 2,
                           alive_logp / length_penalty(length, length_penalty_alpha), NEG_INF)
  scores = jnp.concatenate([finished_scores, alive_scores], axis=1)
  seqs = jnp.concatenate([finished_seqs, alive_seqs], axis=1)
  lengths = jnp.concatenate([finished_lengths, jnp.full((b, k), length, jnp.int32)], axis=1)
  scores, seqs, lengths, _ = top(scores, k, seqs, lengths[:, :, None])
  return DecodeResult(tokens=seqs, lengths=lengths[:, :, 0], scores=scores)
