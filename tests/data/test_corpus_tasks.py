"""Corpus tasks over your own files: formats, objectives, sharding, exact resume and clear errors."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from typing import Optional, Sequence

import numpy as np
import pytest
import seqio
import tensorflow as tf

from lmlab.data import corpus, pipeline, preprocessors
from lmlab.training.config import DataConfig

PREFIX = "lmlab_test.corpus"
WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()


@pytest.fixture(scope="module", autouse=True)
def _unregister_test_tasks():
  """Leaves seqio's registry as it was: the tasks these tests register are removed at the end."""
  yield
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(PREFIX):
      seqio.TaskRegistry.remove(name)


def _write(path: pathlib.Path, text: str, *, gz: bool = False) -> str:
  data = text.encode("utf-8")
  if gz:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)
  return str(path)


def _sentences(n: int, start: int = 0) -> list[str]:
  """``n`` distinct short documents (document i names its number)."""
  return [f"doc {i} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 5)) for i in range(start, start + n)]


def _documents(task: corpus.CorpusTask, split: str = "train", shard: Optional[tuple[int, int]] = None,
               shuffle: bool = False) -> list[str]:
  info = seqio.ShardInfo(*shard) if shard else None
  dataset = corpus.CorpusSource(task).get_dataset(split, shuffle=shuffle, seed=0, shard_info=info)
  return [ex["text"].decode("utf-8") for ex in dataset.as_numpy_iterator()]


def _python_documents(task: corpus.CorpusTask, split: str = "train") -> list[str]:
  return [doc for path in task.files(split)
          for _, doc in corpus.read_documents(path, corpus.file_kind(path, task.format), task.text_field)]


LINES_TEXT = "first doc\n\n  second  doc \n\r\n\t\nthird\r\nlast without newline"
PARAGRAPHS_TEXT = "\n\na1\na2  \n\n\nb1\n  \nc1\n  c2\nc3"
JSONL_TEXT = ('{"text": "one", "id": 1}\n\n{"id": 2, "text": " two\\nlines "}\n{"text": "   "}\n'
              '{"text": "caf\\u00e9 \\u00fcber"}\n')
FORMAT_CASES = {
    "lines": ("corpus.txt", LINES_TEXT, {}, ["first doc", "second  doc", "third", "last without newline"]),
    "paragraphs": ("corpus.txt", PARAGRAPHS_TEXT, {}, ["a1\na2", "b1", "c1\n  c2\nc3"]),
    "jsonl": ("corpus.data", JSONL_TEXT, {}, ["one", "two\nlines", "café über"]),
    "auto": ("corpus.jsonl", JSONL_TEXT, {}, ["one", "two\nlines", "café über"]),
    "jsonl_field": ("corpus.jsonl", '{"body": "x y", "text": 3}\n{"body": "z"}\n', {"text_field": "body"},
                    ["x y", "z"]),
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_each_format_parses_into_the_expected_documents(tmp_path, case, gz):
  filename, text, options, expected = FORMAT_CASES[case]
  _write(tmp_path / filename, text, gz=gz)
  task = corpus.CorpusTask(f"{PREFIX}.{case}", [str(tmp_path / "corpus.*")],
                           format=case.split("_")[0], **options)
  assert _documents(task) == expected
  assert _python_documents(task) == expected  # the checker reads as tf.data does


def test_auto_picks_the_format_per_file(tmp_path):
  _write(tmp_path / "a.txt", "line one\nline two\n")
  _write(tmp_path / "b.jsonl", '{"text": "json one"}\n', gz=True)
  _write(tmp_path / "c.json", '{"text": "json two"}\n')
  task = corpus.CorpusTask(f"{PREFIX}.auto_mixed", [str(tmp_path / "*.txt"), str(tmp_path / "*.json*")])
  assert sorted(_documents(task)) == ["json one", "json two", "line one", "line two"]
  assert [corpus.file_kind(f, "auto") for f in task.files("train")] == ["lines", "jsonl", "jsonl"]


def test_long_paragraphs_across_read_blocks(tmp_path, monkeypatch):
  """Paragraphs spanning several blocks of lines come out whole; a huge one is cut at line ends."""
  rng = np.random.default_rng(0)
  paragraphs = [[f"p{p}l{i}" for i in range(int(rng.integers(1, 9)))] for p in range(12)]
  _write(tmp_path / "p.txt", "\n\n".join("\n".join(p) for p in paragraphs) + "\n")
  task = corpus.CorpusTask(f"{PREFIX}.blocks", [str(tmp_path / "p.txt")], format="paragraphs")
  monkeypatch.setattr(corpus, "READ_BLOCK_LINES", 3)
  assert _documents(task) == ["\n".join(p) for p in paragraphs]
  monkeypatch.setattr(corpus, "MAX_DOCUMENT_BYTES", 10)
  cut = _documents(task)
  assert "\n".join(cut).split("\n") == [line for p in paragraphs for line in p]
  assert max(len(d) for d in cut) <= 10 + 3 * len("p11l8\n")  # at most one block past the limit


def _objective_task(tmp_path: pathlib.Path, objective: str) -> str:
  _write(tmp_path / "train.txt", "\n".join(_sentences(40)))
  _write(tmp_path / "valid.jsonl", "\n".join(json.dumps({"text": s}) for s in _sentences(10, 100)))
  return corpus.CorpusTask(f"{PREFIX}.{objective}", [str(tmp_path / "train.txt")],
                           validation_files=[str(tmp_path / "valid.jsonl")], objective=objective).register()


ENC_DEC_LENGTHS = {"inputs": 64, "targets": 24}


def _step_names(steps: Sequence) -> list[str]:
  return [getattr(getattr(p, "func", p), "__name__", type(p).__name__) for p in steps]


def test_each_objective_preprocesses_like_its_embedded_task(tmp_path):
  path = _write(tmp_path / "a.txt", "some text\n")
  for objective, spec in corpus.OBJECTIVES.items():
    name = corpus.CorpusTask(f"{PREFIX}.{objective}", [path], objective=objective).register()
    task, like = seqio.get_mixture_or_task(name), seqio.get_mixture_or_task(spec.like)
    assert _step_names(task.preprocessors) == _step_names(like.preprocessors), objective
    assert set(task.output_features) == set(like.output_features), objective
    for key, feature in task.output_features.items():
      theirs = like.output_features[key]
      assert type(feature.vocabulary) is type(theirs.vocabulary), objective
      assert feature.vocabulary.vocab_size == theirs.vocabulary.vocab_size, objective
      assert feature.vocabulary.encode("the quick fox") == theirs.vocabulary.encode("the quick fox"), objective
      assert feature.add_eos == theirs.add_eos, objective
    assert pipeline.is_encoder_decoder_task(name) == spec.encoder_decoder


# Each objective's batches; the three that differ from these two only by their
# corpus.OBJECTIVES entry (checked above) run with -m slow.
@pytest.mark.parametrize("objective", [
    "mlm", "span_corruption", *(pytest.param(o, marks=pytest.mark.slow)
                                for o in ("mlm_bytes", "bart_denoising", "byt5_span_corruption"))])
def test_each_objective_gives_batches_of_its_features(tmp_path, objective):
  _write(tmp_path / "train.txt", "\n".join(_sentences(40)))
  name = corpus.CorpusTask(f"{PREFIX}.{objective}", [str(tmp_path / "train.txt")], objective=objective).register()
  encoder_decoder = corpus.OBJECTIVES[objective].encoder_decoder
  lengths = ENC_DEC_LENGTHS if encoder_decoder else 32
  batch = next(pipeline.get_dataset(name, "train", lengths, 2, shuffle=True, seed=0, repeat=True).as_numpy_iterator())
  if encoder_decoder:
    assert tuple(batch) == pipeline.ENC_DEC_FEATURES
    for key, value in batch.items():
      assert value.shape == (2, lengths["inputs" if key.startswith("encoder_") else "targets"]), key
  else:
    assert tuple(batch) == preprocessors.MLM_OUTPUT_FEATURES
    assert all(value.shape == (2, 32) for value in batch.values())
    assert batch["loss_weights"].sum() > 0
  assert (batch["decoder_segment_ids" if encoder_decoder else "segment_ids"] > 0).any(axis=1).all()


def test_validation_files_make_the_validation_split(tmp_path):
  _write(tmp_path / "train.txt", "a\nb\n")
  _write(tmp_path / "valid.jsonl", '{"text": "held out"}\n', gz=True)
  task = corpus.CorpusTask(f"{PREFIX}.splits", [str(tmp_path / "train.txt")],
                           validation_files=[str(tmp_path / "valid*")])
  assert task.splits == ("train", "validation")
  assert _documents(task, "validation") == ["held out"]
  assert task.check() == {"train": 2, "validation": 1}


def _sharded_corpus(tmp_path: pathlib.Path, num_files: int, per_file: int) -> corpus.CorpusTask:
  for f in range(num_files):
    _write(tmp_path / f"part{f}.txt", "\n".join(_sentences(per_file, f * 100)) + "\n")
  return corpus.CorpusTask(f"{PREFIX}.sharded", [str(tmp_path / "part*.txt")])


def _shards(task: corpus.CorpusTask, count: int, shuffle: bool) -> list[list[str]]:
  return [_documents(task, shard=(i, count), shuffle=shuffle) for i in range(count)]


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_shards_by_file_are_disjoint_and_complete(tmp_path, shuffle):
  task = _sharded_corpus(tmp_path, num_files=5, per_file=4)
  everything = _documents(task)
  shards = _shards(task, 2, shuffle)
  assert sorted(shards[0] + shards[1]) == sorted(everything) and len(everything) == 20
  file_of = lambda doc: int(doc.split()[1]) // 100
  # Whole files per shard: shard 0 reads files 0, 2, 4 of the sorted list, shard 1 files 1, 3.
  assert sorted({file_of(d) for d in shards[0]}) == [0, 2, 4]
  assert sorted({file_of(d) for d in shards[1]}) == [1, 3]


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_fewer_files_than_shards_splits_documents_round_robin(tmp_path, shuffle):
  task = _sharded_corpus(tmp_path, num_files=2, per_file=7)
  shards = _shards(task, 3, shuffle)
  together = [d for shard in shards for d in shard]
  assert sorted(together) == sorted(_documents(task)) and len(together) == 14
  assert len(set(together)) == 14  # no document in two shards
  assert sorted(len(s) for s in shards) == [4, 5, 5]


def test_seqio_hands_the_shard_to_the_source(tmp_path):
  task = _sharded_corpus(tmp_path, num_files=2, per_file=3)
  source = seqio.get_mixture_or_task(task.register()).source
  assert isinstance(source, corpus.CorpusSource) and source.supports_arbitrary_sharding
  assert list(source.list_shards("train")) == task.files("train")


def _assert_restores_the_next_elements(make, consumed: int, checked: int, directory: pathlib.Path) -> None:
  """Saved as the trainer saves it, a fresh iterator restores to the elements the old one would give."""
  iterator = iter(make())
  for _ in range(consumed):
    next(iterator)
  prefix = tf.train.Checkpoint(iterator=iterator).write(str(directory / "it"))
  expected = [next(iterator) for _ in range(checked)]
  restored = iter(make())
  tf.train.Checkpoint(iterator=restored).read(prefix).assert_consumed()
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(want[key].numpy(), got[key].numpy(), err_msg=key)


def test_iterator_checkpoint_restores_the_exact_next_batches(tmp_path):
  _write(tmp_path / "a.txt", "\n".join(_sentences(12)))
  _write(tmp_path / "b.txt", "\n".join(_sentences(9, 100)), gz=True)
  _write(tmp_path / "c.jsonl", "\n".join(json.dumps({"text": s}) for s in _sentences(8, 200)), gz=True)
  name = corpus.CorpusTask(f"{PREFIX}.resume", [str(tmp_path / "*")]).register()
  make = lambda: pipeline.get_dataset(name, "train", 32, 2, shuffle=True, seed=3, repeat=True)
  _assert_restores_the_next_elements(make, 9, 8, tmp_path / "ckpt")  # 9 batches: past the first epoch


def test_paragraph_reader_restores_inside_an_open_paragraph(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, "READ_BLOCK_LINES", 2)  # paragraphs of 3+ lines stay open across blocks
  _write(tmp_path / "p.txt", "\n\n".join("\n".join(s.split()[:5]) for s in _sentences(40)))
  task = corpus.CorpusTask(f"{PREFIX}.resume_paragraphs", [str(tmp_path / "p.txt")], format="paragraphs")
  # Unshuffled, so that the reader (not a shuffle buffer that has read it all) is mid-file.
  make = lambda: corpus.CorpusSource(task).get_dataset("train", shuffle=False).repeat()
  _assert_restores_the_next_elements(make, 3, 12, tmp_path / "ckpt")


def test_register_is_idempotent_and_replaces_an_older_corpus(tmp_path):
  first = _write(tmp_path / "one.txt", "alpha\nbeta\n")
  task = corpus.CorpusTask(f"{PREFIX}.idempotent", [first])
  assert task.register() == task.register() == f"{PREFIX}.idempotent"
  registered = seqio.get_mixture_or_task(task.name)
  os.remove(first)  # an equal task is not checked (read) nor registered again
  corpus.CorpusTask(f"{PREFIX}.idempotent", (first,)).register()
  assert seqio.get_mixture_or_task(task.name) is registered
  second = _write(tmp_path / "two.txt", "gamma\n")
  corpus.CorpusTask(f"{PREFIX}.idempotent", [second]).register()
  assert seqio.get_mixture_or_task(task.name).source.corpus.train_files == (second,)


# ----------------------------------------------------------------------------
# Errors, before any batch is read


def _register_error(files: Sequence[str], error=ValueError, **options) -> str:
  with pytest.raises(error) as e:
    corpus.CorpusTask(f"{PREFIX}.bad", files, **options).register()
  return str(e.value)


def test_a_pattern_that_matches_nothing_names_it_and_the_working_directory(tmp_path):
  good = _write(tmp_path / "good.txt", "text\n")
  message = _register_error([good, "no_such_dir/*.txt"], FileNotFoundError)
  assert "no_such_dir/*.txt" in message and os.getcwd() in message


@pytest.mark.parametrize("line,problem", [("not json", "not a JSON object"), ('["a list"]', "not an object"),
                                          ('{"title": "x"}', "no 'text' field"),
                                          ('{"text": 3}', "is a int, not a string")])
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path, line, problem):
  path = _write(tmp_path / "data.jsonl", '{"text": "fine"}\n\n' + line + "\n", gz=True)
  message = _register_error([path])
  assert path in message and "line 3" in message and problem in message


def test_a_bad_jsonl_line_still_names_file_and_line_when_not_checked_first(tmp_path):
  path = _write(tmp_path / "data.jsonl", '{"text": "fine"}\n{"text": "fine"}\nnot json\n')
  task = corpus.CorpusTask(f"{PREFIX}.unchecked", [path], check_files=False)
  task.register()  # only looks for a first document
  with pytest.raises(tf.errors.InvalidArgumentError, match=f"{path}, line 3: not a JSON object"):
    _documents(task)


def test_invalid_utf8_names_the_file(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("fine\ncaf\u00e9\n".encode("latin-1"))
  message = _register_error([str(path)])
  assert str(path) in message and "UTF-8" in message and "line 2" in message


def test_a_broken_gzip_file_is_named(tmp_path):
  path = tmp_path / "broken.txt.gz"
  path.write_bytes(b"this is not gzip")
  message = _register_error([str(path)])
  assert str(path) in message and "gzip" in message


def test_a_split_without_documents(tmp_path):
  train = _write(tmp_path / "train.txt", "a document\n")
  empty = _write(tmp_path / "valid.jsonl", '\n{"text": "  "}\n\n')
  message = _register_error([train], validation_files=[empty])
  assert "'validation'" in message and "no documents" in message and empty in message
  blank = _write(tmp_path / "blank.txt", "\n  \n\t\n")
  assert "no documents" in _register_error([blank], check_files=False)


def test_unknown_format_or_objective_lists_the_valid_ones():
  with pytest.raises(ValueError, match="choose one of auto, lines, paragraphs, jsonl"):
    corpus.CorpusTask(f"{PREFIX}.bad", ["x.txt"], format="csv")
  with pytest.raises(ValueError, match="choose one of mlm, mlm_bytes, span_corruption") as e:
    corpus.CorpusTask(f"{PREFIX}.bad", ["x.txt"], objective="gpt")
  assert "byt5_span_corruption" in str(e.value)
  with pytest.raises(ValueError, match="train_files is empty"):
    corpus.CorpusTask(f"{PREFIX}.bad", [])


def test_the_name_of_a_task_that_is_not_a_corpus_is_refused(tmp_path):
  path = _write(tmp_path / "a.txt", "text\n")
  with pytest.raises(ValueError, match="lmlab.embedded_mlm.*choose another name"):
    corpus.CorpusTask("lmlab.embedded_mlm", [path]).register()


def test_data_config_takes_its_task_name_from_the_corpus(tmp_path):
  task = corpus.CorpusTask(f"{PREFIX}.config", ["x.txt"], validation_files=["y.txt"])
  assert DataConfig(corpus=task).mixture_or_task_name == task.name
  assert DataConfig(mixture_or_task_name=task.name, corpus=task).corpus is task
  with pytest.raises(ValueError, match="registers the task 'lmlab_test.corpus.config' but .*'lmlab.embedded_mlm'"):
    DataConfig(mixture_or_task_name="lmlab.embedded_mlm", corpus=task)
  without_validation = corpus.CorpusTask(f"{PREFIX}.config", ["x.txt"])
  with pytest.raises(ValueError, match="eval_split is 'validation'.*validation_files.*eval_split = ''"):
    DataConfig(corpus=without_validation)
  assert DataConfig(corpus=without_validation, eval_split="").mixture_or_task_name == task.name
  with pytest.raises(ValueError, match="DataConfig needs a task"):
    DataConfig()
