"""Encoder–decoder batches from the pipeline: features, packing, determinism, sharding, inference inputs."""

from __future__ import annotations

import functools
import logging
import re

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from lmlab.data import denoising, pipeline, vocabularies

# Rows a few times shorter than a document, so that documents' tails (shorter examples) are common
# and get packed together.
LENGTHS = {
    "lmlab.embedded_span_corruption": {"inputs": 256, "targets": 58},
    "lmlab.embedded_bart_denoising": {"inputs": 256, "targets": 256},
    "lmlab.embedded_byt5_span_corruption": {"inputs": 512, "targets": 96},
}
BATCH = 8


@functools.lru_cache(maxsize=None)
def _batches(name: str, split: str = "train", n: int = 16, seed: int = 1, shard_id: int = 0,
             num_shards: int = 1) -> tuple:
  dataset = pipeline.get_dataset(name, split, LENGTHS[name], BATCH, shuffle=True, seed=seed, repeat=True,
                                 shard_id=shard_id, num_shards=num_shards)
  return tuple(b for _, b in zip(range(n), dataset.as_numpy_iterator()))


def _rows(batches) -> dict:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("split", ["train", "validation"])
@pytest.mark.parametrize("name", sorted(LENGTHS))
def test_batches_have_the_enc_dec_features_packed(name, split):
  batches = _batches(name, split)
  lengths = LENGTHS[name]
  for batch in batches:
    assert tuple(batch) == pipeline.ENC_DEC_FEATURES
    for key, value in batch.items():
      side = "inputs" if key.startswith("encoder_") else "targets"
      assert value.shape == (BATCH, lengths[side]), key
      assert value.dtype == (np.float32 if key == "decoder_loss_weights" else np.int32), key
  rows = _rows(batches)
  for side in ("encoder", "decoder"):
    segments = rows[f"{side}_segment_ids"]
    assert (segments.max(axis=1) > 1).any(), f"some {side} rows hold more than one example"
    assert ((segments > 0).mean()) > 0.5
  for r in range(len(rows["decoder_target_tokens"])):
    targets, inputs = rows["decoder_target_tokens"][r], rows["decoder_input_tokens"][r]
    segments, positions = rows["decoder_segment_ids"][r], rows["decoder_positions"][r]
    np.testing.assert_array_equal(rows["decoder_loss_weights"][r], (segments > 0).astype(np.float32))
    assert (targets[segments == 0] == 0).all() and (targets[segments > 0] > 0).all()
    for s in np.unique(segments[segments > 0]):
      here = segments == s
      np.testing.assert_array_equal(positions[here], np.arange(here.sum()))
      np.testing.assert_array_equal(inputs[here], np.concatenate([[0], targets[here][:-1]]))
      assert targets[here][-1] == vocabularies.EOS_ID
    enc_segments = rows["encoder_segment_ids"][r]
    assert set(np.unique(enc_segments[enc_segments > 0])) == set(np.unique(segments[segments > 0]))


def test_span_corruption_rows_reconstruct_documents_piece_by_piece():
  """Encoder segment s and decoder segment s are one example: together they give back the raw chunk."""
  vocab = vocabularies.embedded_vocabulary_with_sentinels()
  rows = _rows(_batches("lmlab.embedded_span_corruption", "validation"))
  sentinel_floor = vocab.vocab_size - vocab.extra_ids
  raw_length = denoising.span_corruption_lengths(LENGTHS["lmlab.embedded_span_corruption"]["inputs"])[0]
  for r in range(len(rows["encoder_input_tokens"])):
    enc, dec = rows["encoder_input_tokens"][r], rows["decoder_target_tokens"][r]
    for s in np.unique(rows["encoder_segment_ids"][r])[1:]:
      inputs = enc[rows["encoder_segment_ids"][r] == s][:-1]  # drop EOS
      targets = dec[rows["decoder_segment_ids"][r] == s][:-1]
      spans, current = {}, None
      for t in targets:
        if t >= sentinel_floor:
          current = spans.setdefault(int(t), [])
        else:
          current.append(int(t))
      tokens = [u for t in inputs for u in (spans.pop(int(t)) if t >= sentinel_floor else [int(t)])]
      assert not spans, "every sentinel of the targets appears in the inputs"
      assert 2 <= len(tokens) <= raw_length and max(tokens) < sentinel_floor
      assert vocab.decode(tokens)  # real text


def _byte_sentinels(ids) -> list[int]:
  """Ids that can only be sentinels in ByT5's layout: bytes 0xF5..0xFF (never in UTF-8), ids 248..258."""
  return [int(i) for i in ids if 0xF5 + 3 <= i < 259]


def test_byt5_task_sentinels_count_down_from_258_like_released_byt5():
  """ByT5 and MrT5 pretrained with ByteVocabulary() (no extra ids): sentinel j is id 258 - j."""
  task = seqio.get_mixture_or_task("lmlab.embedded_byt5_span_corruption")
  vocab = task.output_features["targets"].vocabulary
  assert vocab.vocab_size == 259 and vocab.extra_ids == 0
  dataset = task.get_dataset({"inputs": 1024, "targets": 189}, split="validation", shuffle=False, seed=0)
  examples = list(dataset.take(12).as_numpy_iterator())
  assert examples
  for ex in examples:
    inputs, targets = ex["inputs"][:-1], ex["targets"][:-1]  # drop EOS
    assert ex["inputs"][-1] == ex["targets"][-1] == vocabularies.EOS_ID
    used = _byte_sentinels(inputs)
    assert used == list(range(258, 258 - len(used), -1)) and 1 <= len(used) <= 9
    assert _byte_sentinels(targets) == used and targets[0] == 258
    assert max(inputs.max(), targets.max()) <= 258, "no id above the byte range (old layout: 383)"
    # As bytes, the target reads: 0xFF, span 0, 0xFE, span 1, ...; decoding drops the sentinel bytes.
    raw = bytes(int(t) - 3 for t in targets)
    assert raw[0] == 0xFF and [b for b in raw if b >= 0xF5] == [0xFF - j for j in range(len(used))]
    assert "\ufffd" in raw.decode("utf-8", errors="replace")
    assert vocab.decode(targets.tolist()) == raw.decode("utf-8", errors="ignore")
    # Each sentinel of the inputs stands for the span that follows it in the targets.
    spans = re.split(rb"[\xf5-\xff]", raw)[1:]
    pieces = re.split(rb"[\xf5-\xff]", bytes(int(t) - 3 for t in inputs))
    original = b"".join(p + s for p, s in zip(pieces, spans + [b""]))
    assert len(original) == len(inputs) - len(used) + sum(map(len, spans))
    assert max(original, default=0) < 0xF5


@pytest.mark.parametrize("gin_file", ["runs/byt5_quickstart.gin", "runs/mrt5_quickstart.gin"])
def test_byte_quickstarts_build_a_384_row_model_for_the_released_layout(gin_file, tmp_path):
  """The quickstart gin files still parse, size the embedding to ByT5's 384 rows and run a real batch."""
  from lmlab import main as cli  # pylint: disable=import-outside-toplevel
  from lmlab.training.config import DataConfig  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    cli.parse_gin([gin_file], [f"MODEL_DIR = '{tmp_path}'"], [])
    data = DataConfig()
    model = gin.query_parameter("run.model").scoped_configurable_fn()
  finally:
    gin.clear_config()
  # What the train mode does (runs.prepare): fill in the vocabulary size from the task.
  model = model.with_vocab_size(pipeline.vocabulary_for(data.mixture_or_task_name).vocab_size)
  assert data.mixture_or_task_name == "lmlab.embedded_byt5_span_corruption"
  assert model.config.vocab_size == vocabularies.BYT5_EMBEDDING_ROWS == 384
  assert (model.config.delete_gate_layer is not None) == ("mrt5" in gin_file)
  batch = next(pipeline.get_dataset(data.mixture_or_task_name, "validation", data.feature_lengths, 2,
                                    shuffle=False, seed=0, repeat=False).as_numpy_iterator())
  assert batch["decoder_target_tokens"].max() <= 258 and 258 in batch["decoder_target_tokens"]
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), 2))
  assert params["token_embedder"]["embedding"].shape[0] == 384
  sums = jax.jit(model.loss_sums)(params, batch)
  assert np.isfinite(float(sums["loss_sum"])) and float(sums["weight_sum"]) > 0


def test_same_seed_same_batches_other_seed_or_shard_other_batches():
  name = "lmlab.embedded_bart_denoising"
  a = _batches(name, n=3, seed=7)
  b = pipeline.get_dataset(name, "train", LENGTHS[name], BATCH, shuffle=True, seed=7, repeat=True)
  for x, y in zip(a, b.as_numpy_iterator()):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _batches(name, n=3, seed=8)
  assert any(not np.array_equal(x["encoder_input_tokens"], z["encoder_input_tokens"]) for x, z in zip(a, c))
  name = "lmlab.embedded_span_corruption"
  first = _batches(name, n=2, shard_id=0, num_shards=2)
  second = _batches(name, n=2, shard_id=1, num_shards=2)
  assert not np.array_equal(first[0]["decoder_target_tokens"], second[0]["decoder_target_tokens"])


def test_iterator_checkpoint_restores_the_position(tmp_path):
  name = "lmlab.embedded_byt5_span_corruption"
  make = lambda: pipeline.get_dataset(name, "train", LENGTHS[name], 2, shuffle=True, seed=5, repeat=True)
  it = iter(make())
  next(it)
  prefix = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
  expected = [next(it) for _ in range(2)]
  fresh = iter(make())
  tf.train.Checkpoint(iterator=fresh).read(prefix).assert_consumed()
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(want[k].numpy(), got[k].numpy())


def test_sequence_length_kind_must_match_the_task():
  assert pipeline.is_encoder_decoder_task("lmlab.embedded_span_corruption")
  assert pipeline.is_encoder_decoder_task("lmlab.mc4_byt5_span_corruption")
  assert not pipeline.is_encoder_decoder_task("lmlab.embedded_mlm")
  with pytest.raises(ValueError, match=r"\{'inputs': L_in, 'targets': L_tgt\}"):
    pipeline.get_dataset("lmlab.embedded_span_corruption", "train", 64, 2, shuffle=False, seed=0, repeat=False)
  with pytest.raises(ValueError, match="'inputs' and 'targets'"):
    pipeline.get_dataset("lmlab.embedded_span_corruption", "train", {"targets": 16}, 2, shuffle=False, seed=0,
                         repeat=False)
  # A mapping for a masked-LM task uses its "targets" entry: same batches as the int.
  as_int = pipeline.get_dataset("lmlab.embedded_mlm", "validation", 32, 2, shuffle=False, seed=0, repeat=False)
  as_map = pipeline.get_dataset("lmlab.embedded_mlm", "validation", {"inputs": 99, "targets": 32}, 2,
                                shuffle=False, seed=0, repeat=False)
  for x, y in zip(as_int.take(2).as_numpy_iterator(), as_map.take(2).as_numpy_iterator()):
    assert tuple(x) == tuple(y) and x["targets"].shape == (2, 32)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("name,tfds_name", [("lmlab.c4_span_corruption", "c4"),
                                            ("lmlab.mc4_byt5_span_corruption", "c4/multilingual")])
def test_unprepared_tfds_tasks_say_how_to_prepare(name, tfds_name, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"tfds build {tfds_name}"):
    pipeline.get_dataset(name, "train", {"inputs": 64, "targets": 16}, 2, shuffle=False, seed=0, repeat=False,
                         tfds_data_dir=str(tmp_path))


def test_encode_inputs_pads_truncates_or_refuses(caplog):
  name = "lmlab.embedded_span_corruption"
  vocab = pipeline.get_task_or_mixture(name).output_features["inputs"].vocabulary
  short, long = "In the beginning", " ".join(["And God saw the light"] * 10)
  tokens, lengths = pipeline.encode_inputs(name, [short, long.encode()], 16, truncate=True)
  assert tokens.dtype == np.int32 and tokens.shape == (2, 16)
  want = vocab.encode(short) + [vocabularies.EOS_ID]
  np.testing.assert_array_equal(tokens[0, :len(want)], want)
  assert (tokens[0, len(want):] == 0).all()
  assert lengths == [len(want), len(vocab.encode(long)) + 1]
  assert tokens[1, -1] == vocabularies.EOS_ID
  np.testing.assert_array_equal(tokens[1, :-1], vocab.encode(long)[:15])
  dropped = lengths[1] - 16
  assert any(f"dropped its last {dropped} tokens" in r.getMessage() and r.levelno == logging.WARNING
             for r in caplog.records)
  with pytest.raises(ValueError, match=rf"Input 1 is {lengths[1]} tokens long.*inputs_length is 16.*truncat"):
    pipeline.encode_inputs(name, [short, long], 16, truncate=False)
  with pytest.raises(ValueError, match="Input 1 is empty"):
    pipeline.encode_inputs(name, [short, ""], 16, truncate=True)
  with pytest.raises(ValueError, match="no 'inputs' feature"):
    pipeline.encode_inputs("lmlab.embedded_mlm", [short], 16, truncate=True)


def test_encode_inputs_for_bytes_checks_utf8():
  name = "lmlab.embedded_byt5_span_corruption"
  tokens, lengths = pipeline.encode_inputs(name, ["h\u00e9", "h\u00e9".encode()], 8, truncate=False)
  np.testing.assert_array_equal(tokens[:, :4], [[ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 1]] * 2)
  assert lengths == [4, 4]
  with pytest.raises(ValueError, match=r"Input 0: Input is not valid UTF-8 .* at byte 1"):
    pipeline.encode_inputs(name, [b"h\xff\xfe"], 8, truncate=True)
  with pytest.raises(ValueError, match="cannot be written as UTF-8"):
    vocabularies.encode_text(vocabularies.byt5_vocabulary(), "a\udcff")
