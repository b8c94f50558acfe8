"""Batched, sharded, reproducible datasets for the trainer.

``get_dataset`` turns a registered seqio task into fixed-shape batches: for
masked-LM tasks (a ``targets`` feature only) ``input_ids, targets,
loss_weights, segment_ids, positions``; for encoder–decoder tasks (``inputs``
and ``targets``) the packed ``ENC_DEC_FEATURES`` of seqio's
``EncDecFeatureConverter``. It is pure tf.data (checkpointable with
``tf.train.Checkpoint``) and deterministic for a given seed: the same seed
gives the same batches in the same order.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from lmlab.data import preprocessors, vocabularies
from lmlab.data import tasks  # noqa: F401  (registers lmlab.* tasks)

logger = logging.getLogger(__name__)
Provider = Union[seqio.Task, seqio.Mixture]
SequenceLength = Union[int, Mapping[str, int]]
ENC_DEC_FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
    "decoder_segment_ids", "decoder_positions",
)
FLOAT_FEATURES = ("decoder_loss_weights",)  # float32; every other batch feature is int32
PACKING_WINDOW = 16  # examples that leave room in a row are gathered in groups of this many


def registered_names() -> list[str]:
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_task_or_mixture(name: str) -> Provider:
  """The seqio task or mixture called ``name``; a helpful error if there is none."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    pass
  names = registered_names()
  close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  raise ValueError(
      f"Unknown task or mixture {name!r}.{hint} Registered lmlab names: "
      f"{', '.join(n for n in names if n.startswith('lmlab.'))}. A task registered in your own "
      "module must be imported before the run (e.g. `import my_project.tasks` in a gin file).")


def vocabulary_for(name: str) -> seqio.Vocabulary:
  """The vocabulary of the task's (or mixture's) ``targets`` feature."""
  return get_task_or_mixture(name).output_features["targets"].vocabulary


def _is_enc_dec(provider: Provider) -> bool:
  return "inputs" in provider.output_features


def is_encoder_decoder_task(name: str) -> bool:
  """Whether the task (or mixture) has ``inputs`` and ``targets``, i.e. feeds an encoder–decoder."""
  return _is_enc_dec(get_task_or_mixture(name))


def _feature_lengths(name: str, provider: Provider, sequence_length: SequenceLength) -> dict[str, int]:
  """seqio's per-feature lengths from an int (masked LM) or an inputs/targets mapping."""
  if _is_enc_dec(provider):
    if not isinstance(sequence_length, Mapping):
      raise ValueError(
          f"Task {name!r} is an encoder-decoder task: give sequence_length as a mapping "
          f"{{'inputs': L_in, 'targets': L_tgt}} (e.g. {{'inputs': 512, 'targets': 114}} for span "
          f"corruption; DataConfig.task_feature_lengths), not {sequence_length!r}.")
    missing = [k for k in ("inputs", "targets") if not sequence_length.get(k)]
    if missing:
      raise ValueError(f"Task {name!r} needs sequence lengths for 'inputs' and 'targets'; got "
                       f"{dict(sequence_length)!r}.")
    return {"inputs": int(sequence_length["inputs"]), "targets": int(sequence_length["targets"])}
  if isinstance(sequence_length, Mapping):
    if not sequence_length.get("targets"):
      raise ValueError(f"Task {name!r} is a masked-LM task: its row length is sequence_length['targets'] "
                       f"(or a plain int), got {dict(sequence_length)!r}.")
    sequence_length = sequence_length["targets"]
  return {"targets": int(sequence_length)}


def _tfds_sources(provider: Provider) -> list[seqio.TfdsDataSource]:
  task_list = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  return [t.source for t in task_list if isinstance(t.source, seqio.TfdsDataSource)]


def check_tfds_prepared(provider: Provider, split: str, data_dir: Optional[str]) -> None:
  """Raises FileNotFoundError, with how to fix it, if a TFDS dataset is not prepared."""
  for source in _tfds_sources(provider):
    name = source.tfds_dataset.name
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    try:
      prepared = tfds.builder(name, data_dir=where).is_prepared()
    except Exception:  # pylint: disable=broad-except  (unknown/unbuildable builder)
      prepared = False
    if not prepared:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}. Prepare it once with "
          f"`tfds build {name.split(':')[0]} --data_dir={where}` (large datasets such as C4 may need "
          "the manual download described in the TFDS catalog), then pass that directory with "
          "--tfds_data_dir (or DataConfig.tfds_data_dir).")


def _group_partial_examples(dataset: tf.data.Dataset, lengths: Mapping[str, int]) -> tf.data.Dataset:
  """Reorders examples so that those leaving room in a row come in runs, for packing.

  seqio's packing is greedy in stream order: an example that does not fit
  the current row closes it. Documents split into row-sized chunks give a
  full example per chunk and one shorter tail per document, and between two
  full examples a tail gets a row of its own. Gathering the tails into
  groups of ``PACKING_WINDOW`` (full examples pass in groups of the same
  size) lets several tails share a row. The reordering is deterministic.
  """
  def key(example):
    partial = ((tf.size(example["inputs"]) < lengths["inputs"]) &
               (tf.size(example["targets"]) < lengths["targets"]))
    return tf.cast(partial, tf.int64)

  return dataset.group_by_window(key, lambda _, window: window, window_size=PACKING_WINDOW)


def _enc_dec_features(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {k: tf.cast(example[k], tf.float32 if k in FLOAT_FEATURES else tf.int32) for k in ENC_DEC_FEATURES}


def get_dataset(name: str, split: str, sequence_length: SequenceLength, batch_size: int, *, shuffle: bool,
                seed: int, repeat: bool, shard_id: int = 0, num_shards: int = 1,
                tfds_data_dir: Optional[str] = None) -> tf.data.Dataset:
  """Fixed-shape batches of a task's model features.

  Masked-LM tasks give ``[batch_size, L]`` of ``preprocessors.MLM_OUTPUT_FEATURES``
  (L = ``sequence_length``). Encoder–decoder tasks give the packed
  ``ENC_DEC_FEATURES`` of ``seqio.EncDecFeatureConverter``: several examples
  share a row, told apart by the segment ids; ``encoder_*`` are
  ``[batch_size, L_in]``, ``decoder_*`` ``[batch_size, L_tgt]``;
  ``decoder_input_tokens`` are the targets shifted right within each segment
  (starting with 0); ``decoder_loss_weights`` (float32, 1 on real target
  tokens) is the only non-int32 feature.

  Args:
    name: Registered seqio task or mixture.
    split: Split to read.
    sequence_length: Masked LM: tokens per packed row (an int, or a mapping
      whose ``targets`` is used). Encoder–decoder: ``{"inputs": L_in,
      "targets": L_tgt}``.
    batch_size: Rows per batch (this process's share of the global batch).
    shuffle: Shuffle documents and rows.
    seed: Seed of shuffling and of masking / corruption.
    repeat: Loop forever (training); each epoch is masked (corrupted) afresh.
    shard_id: This process's shard of the data.
    num_shards: Number of shards (processes).
    tfds_data_dir: Directory of prepared TFDS datasets.
  """
  provider = get_task_or_mixture(name)
  lengths = _feature_lengths(name, provider, sequence_length)
  if tfds_data_dir:
    seqio.set_tfds_data_dir_override(tfds_data_dir)
  check_tfds_prepared(provider, split, tfds_data_dir)
  if split not in provider.splits:
    raise ValueError(f"Task {name!r} has no split {split!r}; it has {list(provider.splits)}.")
  dataset = provider.get_dataset(
      sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
      num_epochs=None if repeat else 1, shard_info=seqio.ShardInfo(shard_id, num_shards),
      use_cached=False)
  if _is_enc_dec(provider):
    dataset = _group_partial_examples(dataset, lengths)
    dataset = seqio.EncDecFeatureConverter(pack=True)(dataset, lengths)
    dataset = dataset.map(_enc_dec_features, num_parallel_calls=tf.data.AUTOTUNE)
    shapes = {k: [lengths["inputs" if k.startswith("encoder_") else "targets"]] for k in ENC_DEC_FEATURES}
  else:
    dataset = dataset.map(lambda ex: {k: ex[k] for k in preprocessors.MLM_OUTPUT_FEATURES})
    shapes = {k: [lengths["targets"]] for k in preprocessors.MLM_OUTPUT_FEATURES}
  dataset = dataset.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options).prefetch(2)


def encode_inputs(name: str, texts: Sequence[Union[str, bytes]], inputs_length: int, *,
                  truncate: bool) -> tuple[np.ndarray, list[int]]:
  """Encoder tokens of raw texts, for decoding with an encoder–decoder task's model.

  Each text is tokenized with the task's ``inputs`` vocabulary (bytes must
  be valid UTF-8) and given EOS, then padded with 0 to ``inputs_length``.

  Args:
    name: Registered encoder–decoder task or mixture.
    texts: Raw inputs, one per row.
    inputs_length: Encoder tokens per row, EOS included.
    truncate: What to do with a text longer than a row: keep its first
      ``inputs_length - 1`` tokens and EOS (logging a warning), or raise.

  Returns:
    ``(tokens, lengths)``: int32 ``[len(texts), inputs_length]`` and each
    text's token count with EOS before any truncation.

  Raises:
    ValueError: The task has no ``inputs``, a text is empty, encodes to no
      tokens or is not valid UTF-8, or (``truncate`` False) is too long.
  """
  provider = get_task_or_mixture(name)
  if not _is_enc_dec(provider):
    raise ValueError(f"Task {name!r} has no 'inputs' feature; encode_inputs serves encoder-decoder tasks.")
  if inputs_length < 2:
    raise ValueError(f"inputs_length must be at least 2 (a token and EOS), got {inputs_length}.")
  vocab = provider.output_features["inputs"].vocabulary
  eos = vocabularies.EOS_ID if vocab.eos_id is None else int(vocab.eos_id)
  rows = np.zeros((len(texts), inputs_length), np.int32)
  lengths = []
  for i, text in enumerate(texts):
    if len(text) == 0:  # pylint: disable=g-explicit-length-test  (str or bytes)
      raise ValueError(f"Input {i} is empty; give at least one character to encode.")
    try:
      ids = vocabularies.encode_text(vocab, text)
    except ValueError as e:
      raise ValueError(f"Input {i}: {e}") from e
    if not ids:
      raise ValueError(f"Input {i} ({text!r}) encodes to no tokens (only whitespace?); give some text.")
    ids.append(eos)
    lengths.append(len(ids))
    if len(ids) > inputs_length:
      if not truncate:
        raise ValueError(
            f"Input {i} is {len(ids)} tokens long with EOS but inputs_length is {inputs_length}. Shorten it, "
            "raise the inputs length (DataConfig.task_feature_lengths['inputs']) or allow truncation "
            "(truncate=True, InferConfig.truncate_inputs).")
      logger.warning("Input %d is %d tokens long with EOS; dropped its last %d tokens to fit "
                     "inputs_length=%d.", i, len(ids), len(ids) - inputs_length, inputs_length)
      ids = ids[:inputs_length - 1] + [eos]
    rows[i, :len(ids)] = ids
  return rows, lengths
