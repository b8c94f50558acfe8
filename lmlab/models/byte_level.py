"""Byte-level models: ByT5 facts and MrT5's hard token deletion.

ByT5 is the T5 v1.1 network over UTF-8 bytes (``T5Config`` with a 384-row
embedding: 259 byte ids plus sentinels, padded to a multiple of 128) and an
encoder three times deeper than the decoder; presets live in
``gin/models/byt5_*.gin``. MrT5 adds a delete gate to the ByT5 encoder
(``T5Config.delete_gate_layer``); the network applies it softly, as an
attention bias. This module holds the inference-time hard deletion: tokens
whose gate falls below a threshold are removed, so the blocks after the gate,
and cross-attention, run on a shorter sequence.

After removal the reference (Kallini et al. 2024, ``MrT5Block``) replaces the
gate by a plain mask: attention key bias 0 on every kept token and a large
negative value on the padding that evens out the rows. That is
``key_bias="zero"`` (the default, ``T5Config.hard_delete_key_bias``).
``key_bias="gate"`` keeps the kept tokens' gate values instead, so hard
deletion computes exactly what soft deletion computed for the kept tokens
(up to the attention the removed ones would have received); with trained
gates near 0 or ``k`` the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lmlab.models.config import HARD_DELETE_KEY_BIASES


class KeptTokens(NamedTuple):
  """Rows shortened to the tokens that survive deletion (padded to a common length)."""

  hidden: np.ndarray       # [batch, kept_len, d_model]
  segment_ids: np.ndarray  # [batch, kept_len]; 0 marks padding
  positions: np.ndarray    # [batch, kept_len]; original positions, for the relative bias
  gate: np.ndarray         # [batch, kept_len]; gate values of kept tokens (k on padding)
  key_bias: np.ndarray     # [batch, kept_len]; attention key bias replacing the gate
  kept_fraction: float     # kept real tokens / real tokens


def keep_tokens(hidden: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray,
                gate: np.ndarray, *, threshold: float, pad_gate: float,
                key_bias: str = "zero", length_multiple: int = 8) -> KeptTokens:
  """Removes the tokens whose gate is below ``threshold`` from every row.

  Kept tokens keep their order and their original positions, so the relative
  position bias between two kept tokens is unchanged. The new length is the
  longest row's count of kept tokens rounded up to ``length_multiple``
  (bounding recompilations).

  Args:
    hidden: ``[batch, len, d_model]`` input of the gated block.
    segment_ids: ``[batch, len]``; 0 is padding.
    positions: ``[batch or 1, len]`` positions for the relative bias.
    gate: ``[batch, len]`` gate values.
    threshold: Tokens with a gate below it are removed.
    pad_gate: Key bias (and gate) of the padding after removal (``k``).
    key_bias: ``zero`` (the reference: 0 on kept keys) or ``gate`` (their
      gate values, matching soft deletion); see the module docstring.
    length_multiple: Rounding of the new length.

  Raises:
    ValueError: If a row that has real tokens would lose all of them, or for
      an unknown ``key_bias``.
  """
  if key_bias not in HARD_DELETE_KEY_BIASES:
    raise ValueError(f"key_bias={key_bias!r} is not one of {HARD_DELETE_KEY_BIASES}.")
  hidden, segment_ids = np.asarray(hidden), np.asarray(segment_ids)
  positions = np.broadcast_to(np.asarray(positions), segment_ids.shape)
  gate = np.asarray(gate)
  real = segment_ids > 0
  keep = real & (gate >= threshold)
  emptied = np.flatnonzero(real.any(axis=1) & ~keep.any(axis=1))
  if emptied.size:
    raise ValueError(
        f"MrT5 hard deletion would remove every token of row(s) {emptied.tolist()} (all gate values "
        f"below {threshold}). Lower T5Config.hard_delete_threshold, or decode with soft deletion.")
  counts = keep.sum(axis=1)
  new_length = max(int(counts.max()) if counts.size else 1, 1)
  new_length = min(-(-new_length // length_multiple) * length_multiple, segment_ids.shape[1])
  # Stable sort puts kept tokens first, in their original order.
  order = np.argsort(~keep, axis=1, kind="stable")[:, :new_length]
  valid = np.take_along_axis(keep, order, axis=1)
  take = lambda x: np.take_along_axis(x, order, axis=1)
  kept_gate = np.where(valid, take(gate), pad_gate).astype(np.float32)
  return KeptTokens(
      hidden=np.take_along_axis(hidden, order[..., None], axis=1) * valid[..., None],
      segment_ids=np.where(valid, take(segment_ids), 0),
      positions=take(positions),
      gate=kept_gate,
      key_bias=(kept_gate if key_bias == "gate"
                else np.where(valid, 0.0, pad_gate).astype(np.float32)),
      kept_fraction=float(counts.sum()) / max(float(real.sum()), 1.0))
