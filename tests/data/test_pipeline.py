"""Packing, determinism, iterator checkpointing, sharding and data errors."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from lmlab.data import pipeline, preprocessors, tasks, vocabularies

DOCS = [" ".join(f"word{i}x{j}" for j in range(n)) for i, n in enumerate([3, 50, 7, 1, 90, 12, 30, 5, 64, 2])]


def _synthetic_source(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"text": DOCS})


@pytest.fixture(scope="module")
def synthetic_task():
  name = "lmlab_test.synthetic_mlm"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(_synthetic_source, splits=("train",)),
      preprocessors=tasks.mlm_preprocessors(),
      output_features={"targets": seqio.Feature(vocabularies.embedded_vocabulary(), add_eos=True)},
      metric_fns=[])
  yield name
  seqio.TaskRegistry.remove(name)


def _batches(name, n, **kwargs):
  args = dict(split="train", sequence_length=32, batch_size=4, shuffle=False, seed=1, repeat=False)
  args.update(kwargs)
  dataset = pipeline.get_dataset(name, **args)
  return [b for _, b in zip(range(n), dataset.as_numpy_iterator())]


def test_packing_keeps_every_token_once_with_consistent_segments(synthetic_task):
  vocab = vocabularies.embedded_vocabulary()
  batches = _batches(synthetic_task, 1000)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  expected = sorted(t for d in DOCS for t in vocab.encode(d) + [vocabularies.EOS_ID])
  got = sorted(rows["targets"][rows["segment_ids"] > 0].tolist())
  # drop_remainder may drop the last partial batch: every kept token is a real one, none twice.
  assert len(got) > 0.6 * len(expected)
  assert not (collections_counter(got) - collections_counter(expected))
  for seg, pos, tok in zip(rows["segment_ids"], rows["positions"], rows["targets"]):
    real = seg > 0
    assert real[: real.sum()].all(), "padding only at the end of a row"
    for s in np.unique(seg[real]):
      np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
    assert (tok[~real] == 0).all()


def collections_counter(items):
  import collections  # pylint: disable=import-outside-toplevel
  return collections.Counter(items)


def test_long_documents_are_split_not_truncated():
  ds = tf.data.Dataset.from_tensors({"targets": tf.range(1, 71)})
  pieces = list(preprocessors._split_long_documents(ds, 32).as_numpy_iterator())  # pylint: disable=protected-access
  assert [len(p["targets"]) for p in pieces] == [32, 32, 6]
  np.testing.assert_array_equal(np.concatenate([p["targets"] for p in pieces]), np.arange(1, 71))


def test_fill_rate_of_embedded_rows_is_high():
  batches = _batches("lmlab.embedded_mlm", 10, sequence_length=128, batch_size=8, shuffle=True)
  fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
  assert fill > 0.9


def test_same_seed_same_batches_and_epochs_are_remasked():
  a = _batches("lmlab.embedded_mlm", 5, shuffle=True, seed=7, repeat=True)
  b = _batches("lmlab.embedded_mlm", 5, shuffle=True, seed=7, repeat=True)
  c = _batches("lmlab.embedded_mlm", 5, shuffle=True, seed=8, repeat=True)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["targets"], z["targets"]) for x, z in zip(a, c))


def test_masking_is_dynamic_yet_reproducible():
  """Identical rows (as a repeated epoch would give) get fresh masks; same seed, same masks."""
  features = {"targets": seqio.Feature(vocabularies.embedded_vocabulary())}
  row = {"targets": tf.range(10, 74), "segment_ids": tf.ones(64, tf.int32), "positions": tf.range(64)}

  def masks(seed):
    with seqio.utils.map_seed_manager(seed):
      ds = preprocessors.mlm_mask(tf.data.Dataset.from_tensors(row).repeat(6), output_features=features)
    return [ex["loss_weights"] for ex in ds.as_numpy_iterator()]

  first, again = masks(11), masks(11)
  assert len({m.tobytes() for m in first}) == 6
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  # Masking runs after the cache point, i.e. after seqio's repeat: each epoch is re-masked.
  steps = tasks.mlm_preprocessors()
  cache_at = next(i for i, p in enumerate(steps) if isinstance(p, seqio.CacheDatasetPlaceholder))
  assert steps.index(preprocessors.mlm_mask) > cache_at


def test_iterator_checkpoint_restores_the_position(tmp_path):
  make = lambda: pipeline.get_dataset("lmlab.embedded_mlm", "train", 64, 4, shuffle=True, seed=5,
                                      repeat=True)
  it = iter(make())
  for _ in range(3):
    next(it)
  prefix = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
  expected = [next(it) for _ in range(4)]
  fresh = iter(make())
  tf.train.Checkpoint(iterator=fresh).read(prefix).assert_consumed()
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(want[k].numpy(), got[k].numpy())


def test_shards_read_different_data():
  a = _batches("lmlab.embedded_mlm", 2, shard_id=0, num_shards=2)
  b = _batches("lmlab.embedded_mlm", 2, shard_id=1, num_shards=2)
  assert not np.array_equal(a[0]["targets"], b[0]["targets"])


def test_unknown_task_suggests_close_names():
  with pytest.raises(ValueError, match="lmlab.embedded_mlm") as e:
    pipeline.get_task_or_mixture("lmlab.embeded_mlm")
  assert "Did you mean" in str(e.value)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("lmlab.c4_mlm", "train", 32, 2, shuffle=False, seed=0, repeat=False,
                         tfds_data_dir=str(tmp_path))
  message = str(e.value)
  assert "c4" in message and str(tmp_path) in message and "tfds build" in message
