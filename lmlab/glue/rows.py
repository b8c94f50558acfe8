"""Fine-tuning rows and batches from GLUE/SuperGLUE task examples.

The seqio tasks (``lmlab.glue.tasks``) yield one tokenized example at a
time: ``inputs_a``/``inputs_b`` (each ending in EOS) for encoders,
``inputs``/``targets`` for text-to-text. This module turns them into
fixed-shape numpy batches, one example per row (fine-tuning rows are never
packed): it truncates what does not fit, joins sentence A and B with their
token types, pads, and fills the last batch with weight-0 rows so every batch
has the same shape (one compilation, and the rows divide over devices).
Everything the model does not consume (labels for metrics, example ids for
leaderboard files, ReCoRD entities) travels beside the batch as ``meta``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

logger = logging.getLogger(__name__)

# Features the encoder and encoder-decoder consume; everything else is meta.
ENCODER_INPUTS = ("inputs_a", "inputs_b")
T2T_INPUTS = ("inputs", "targets")


@dataclasses.dataclass
class TruncationLog:
  """How many examples lost tokens to the length limit (reported, not silent)."""
  what: str
  examples: int = 0
  truncated: int = 0
  tokens_dropped: int = 0

  def report(self) -> None:
    if self.truncated:
      logger.warning("%s: %d of %d examples were longer than the limit and truncated (%d tokens "
                     "dropped); raise FinetuneConfig.sequence_length to keep them whole.",
                     self.what, self.truncated, self.examples, self.tokens_dropped)


@dataclasses.dataclass(frozen=True)
class PairFraming:
  """How sentence A and B are joined into one encoder row, as the vocabulary's model expects.

  A row is ``prefix + A + [eos] + separator + B + [eos]`` (B and what comes
  with it only for pair tasks): lmlab's own vocabularies use ``A EOS B EOS``;
  BERT ``[CLS] A [SEP] B [SEP]`` (prefix ``[CLS]``); RoBERTa
  ``<s> A </s></s> B </s>`` (separator ``</s>``), which is what the Hugging
  Face tokenizers produce for ``tokenizer(a, b)``. Built from
  ``vocabularies.special_tokens`` by ``lmlab.glue.task_data``.

  Attributes:
    eos_id: Ends each sentence.
    prefix: Ids before sentence A (``[CLS]``/``<s>``; empty for T5/lmlab).
    separator: Ids between A's eos and B.
    token_types: Give B token type 1 (BERT); False keeps every token type 0
      (RoBERTa has a single token type).
  """
  eos_id: int
  prefix: tuple[int, ...] = ()
  separator: tuple[int, ...] = ()
  token_types: bool = True


def truncate_pair(a: np.ndarray, b: np.ndarray, limit: int, eos_id: int,
                  reserved: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
  """Longest-first truncation of two EOS-terminated token lists to ``limit`` tokens in all.

  Tokens are removed from the end of the longer sentence (BERT's strategy),
  and each kept sentence keeps its final EOS, which separates A from B.
  ``reserved`` tokens of the row go to framing (a [CLS] prefix, a separator).
  Returns the two lists and the number of tokens dropped.
  """
  def body(x):
    x = np.asarray(x, np.int32)
    return x[:-1] if len(x) and x[-1] == eos_id else x
  a_body, b_body = body(a), body(b)
  eos_count = 1 + (1 if len(b) else 0)
  budget = limit - eos_count - reserved
  if budget < 1:
    raise ValueError(f"sequence_length={limit} leaves no room for tokens besides the separators.")
  dropped = 0
  while len(a_body) + len(b_body) > budget:
    if len(a_body) >= len(b_body):
      a_body = a_body[:-1]
    else:
      b_body = b_body[:-1]
    dropped += 1
  eos = np.asarray([eos_id], np.int32)
  a_out = np.concatenate([a_body, eos])
  b_out = np.concatenate([b_body, eos]) if len(b) else b_body
  return a_out, b_out, dropped


def encoder_row(example: dict, length: int, framing: Union[int, PairFraming],
                log: TruncationLog) -> dict:
  """One example as ``input_ids``/``token_type_ids``/``segment_ids``/``positions``.

  ``framing`` says how A and B are joined (an int: lmlab's ``A EOS B EOS``
  with that EOS id).
  """
  if isinstance(framing, (int, np.integer)):
    framing = PairFraming(eos_id=int(framing))
  eos_id = framing.eos_id
  a, b = example["inputs_a"], np.asarray(example.get("inputs_b", np.zeros(0, np.int32)))
  if len(b) == 1 and b[0] == eos_id:  # single-sentence task: B is only its EOS
    b = b[:0]
  log.examples += 1
  reserved = len(framing.prefix) + (len(framing.separator) if len(b) else 0)
  a, b, dropped = truncate_pair(a, b, length, eos_id, reserved)
  if dropped:
    log.truncated += 1
    log.tokens_dropped += dropped
  prefix = np.asarray(framing.prefix, np.int32)
  first = np.concatenate([prefix, a])
  second = np.concatenate([np.asarray(framing.separator, np.int32), b]) if len(b) else b
  ids = np.zeros(length, np.int32)
  types = np.zeros(length, np.int32)
  n_a, n = len(first), len(first) + len(second)
  ids[:n_a], ids[n_a:n] = first, second
  if framing.token_types:
    types[n_a:n] = 1
  segments = (np.arange(length) < n).astype(np.int32)
  return {"input_ids": ids, "token_type_ids": types, "segment_ids": segments,
          "positions": np.arange(length, dtype=np.int32)}


def _fit(tokens: np.ndarray, length: int, eos_id: int) -> tuple[np.ndarray, int]:
  """Cut to ``length`` keeping the final EOS; returns tokens and how many were dropped."""
  tokens = np.asarray(tokens, np.int32)
  if len(tokens) <= length:
    return tokens, 0
  return np.concatenate([tokens[:length - 1], [eos_id]]).astype(np.int32), len(tokens) - length


def t2t_row(example: dict, input_length: int, target_length: int, eos_id: int,
            log: TruncationLog) -> dict:
  """One example as the encoder–decoder's features (decoder inputs start with the pad id 0)."""
  log.examples += 1
  inputs, dropped_in = _fit(example["inputs"], input_length, eos_id)
  targets, dropped_out = _fit(example.get("targets", np.zeros(0, np.int32)), target_length, eos_id)
  if dropped_in or dropped_out:
    log.truncated += 1
    log.tokens_dropped += dropped_in + dropped_out
  enc = np.zeros(input_length, np.int32)
  enc[:len(inputs)] = inputs
  tgt = np.zeros(target_length, np.int32)
  tgt[:len(targets)] = targets
  dec_in = np.concatenate([[0], tgt[:-1]]).astype(np.int32)
  real_t = (np.arange(target_length) < len(targets)).astype(np.int32)
  return {"encoder_input_tokens": enc,
          "encoder_segment_ids": (np.arange(input_length) < len(inputs)).astype(np.int32),
          "encoder_positions": np.arange(input_length, dtype=np.int32),
          "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
          "decoder_segment_ids": real_t,
          "decoder_positions": np.arange(target_length, dtype=np.int32),
          "decoder_loss_weights": real_t.astype(np.float32)}


def _meta(example: dict, consumed: tuple[str, ...]) -> dict:
  out = {}
  for key, value in example.items():
    if key in consumed:
      continue
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    elif isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    out[key] = value
  return out


def batches(examples: Iterable[dict], make_row, batch_size: int, consumed: tuple[str, ...],
            *, label_dtype: Any = np.int32) -> Iterator[tuple[dict, list[dict]]]:
  """``(batch, meta)`` pairs of exactly ``batch_size`` rows.

  ``batch`` stacks the rows of ``make_row(example)`` plus ``label`` and a
  ``weight`` of 1 (0 for filler rows completing the last batch); ``meta``
  holds, per real row, every feature the model does not read.
  """
  rows, metas = [], []

  def emit():
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    real = len(metas)
    pad = batch_size - len(rows)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    labels = [m.get("label", 0) for m in metas] + [0] * pad
    batch["label"] = np.asarray(labels, label_dtype)
    batch["weight"] = (np.arange(batch_size) < real).astype(np.float32)
    if "decoder_loss_weights" in batch:
      batch["decoder_loss_weights"] = batch["decoder_loss_weights"] * batch["weight"][:, None]
    return batch, list(metas)

  for example in examples:
    rows.append(make_row(example))
    metas.append(_meta(example, consumed))
    if len(rows) == batch_size:
      yield emit()
      rows, metas = [], []
  if rows:
    yield emit()


def stack_meta(metas: Iterable[list[dict]]) -> dict[str, list]:
  """Per-feature lists over all real rows of several batches."""
  out: dict[str, list] = {}
  for batch_meta in metas:
    for row in batch_meta:
      for key, value in row.items():
        out.setdefault(key, []).append(value)
  return out


def check_sequence_length(sequence_length: int, max_positions: Optional[int], what: str) -> None:
  """Refuses rows longer than a learned position table allows."""
  if max_positions is not None and sequence_length > max_positions:
    raise ValueError(f"FinetuneConfig.sequence_length={sequence_length} is longer than the model "
                     f"allows ({what}={max_positions}). Lower sequence_length (longer examples "
                     "are truncated, longest sentence first) or pretrain with more positions.")
