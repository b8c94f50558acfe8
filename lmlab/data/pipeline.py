"""Batched, sharded, reproducible datasets for the trainer.

``get_dataset`` turns a registered seqio task into fixed-shape batches of
``input_ids, targets, loss_weights, segment_ids, positions``. It is pure
tf.data (checkpointable with ``tf.train.Checkpoint``) and deterministic for a
given seed: the same seed gives the same batches in the same order.
"""

from __future__ import annotations

import difflib
import os
from typing import Optional, Union

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from lmlab.data import preprocessors
from lmlab.data import tasks  # noqa: F401  (registers lmlab.* tasks)

Provider = Union[seqio.Task, seqio.Mixture]


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


def get_dataset(name: str, split: str, sequence_length: int, batch_size: int, *, shuffle: bool,
                seed: int, repeat: bool, shard_id: int = 0, num_shards: int = 1,
                tfds_data_dir: Optional[str] = None) -> tf.data.Dataset:
  """Batches ``[batch_size, sequence_length]`` of the MLM features.

  Args:
    name: Registered seqio task or mixture.
    split: Split to read.
    sequence_length: Tokens per packed row.
    batch_size: Rows per batch (this process's share of the global batch).
    shuffle: Shuffle documents and rows.
    seed: Seed of shuffling and masking.
    repeat: Loop forever (training); each epoch is masked afresh.
    shard_id: This process's shard of the data.
    num_shards: Number of shards (processes).
    tfds_data_dir: Directory of prepared TFDS datasets.
  """
  provider = get_task_or_mixture(name)
  if tfds_data_dir:
    seqio.set_tfds_data_dir_override(tfds_data_dir)
  check_tfds_prepared(provider, split, tfds_data_dir)
  if split not in provider.splits:
    raise ValueError(f"Task {name!r} has no split {split!r}; it has {list(provider.splits)}.")
  dataset = provider.get_dataset(
      sequence_length={"targets": sequence_length}, split=split, shuffle=shuffle, seed=seed,
      num_epochs=None if repeat else 1, shard_info=seqio.ShardInfo(shard_id, num_shards),
      use_cached=False)
  dataset = dataset.map(lambda ex: {k: ex[k] for k in preprocessors.MLM_OUTPUT_FEATURES})
  dataset = dataset.padded_batch(
      batch_size, padded_shapes={k: [sequence_length] for k in preprocessors.MLM_OUTPUT_FEATURES},
      drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options).prefetch(2)
