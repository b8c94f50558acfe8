"""Pretraining tasks over your own text files, registered from gin or the command line.

A ``CorpusTask`` describes a corpus (glob patterns per split, a file format,
a pretraining objective); ``register()`` turns it into a seqio task with the
same preprocessing and vocabulary as the ``lmlab.embedded_*`` task of that
objective. ``DataConfig.corpus = @CorpusTask()`` makes a run register and
read it, so no Python is needed::

  DataConfig.corpus = @CorpusTask()
  CorpusTask.name = 'lmlab.corpus'
  CorpusTask.train_files = ['/data/books/*.txt', '/data/web/*.jsonl.gz']
  CorpusTask.objective = 'span_corruption'

Formats (``.gz`` files are decompressed):

* ``lines``: one document per line; blank lines are skipped.
* ``paragraphs``: documents separated by blank lines; the lines of one
  document are joined with ``"\\n"``.
* ``jsonl``: one JSON object per line, the document in ``text_field``.
* ``auto``: ``jsonl`` for ``.jsonl``/``.json`` (``.gz`` too), else ``lines``
  (decided per file).

Documents are stripped of surrounding ASCII whitespace; empty ones are
skipped. Files are read with tf.data (``TextLineDataset``, ``scan`` for
paragraphs, a stateless ``numpy_function`` for JSON), so the trainer's
iterator checkpoint restores the exact position. Before the first batch,
``register()`` reads every file once in Python and reports bad input (a
pattern that matches nothing, invalid UTF-8, a line that is not JSON or lacks
the text field, a split without documents) with file and line; pass
``check_files=False`` to skip that scan for very large corpora.

Sharding across processes: with at least as many files as shards, each
shard reads whole files (file ``i`` goes to shard ``i % num_shards`` of the
sorted list); otherwise every shard reads all files in the same order and
keeps every ``num_shards``-th document. Either way no document is read by two
shards and none is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import gzip
import json
import logging
import os
import zlib
from typing import BinaryIO, Callable, Iterator, Mapping, Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from lmlab.data import denoising, tasks, vocabularies

logger = logging.getLogger(__name__)

FORMATS = ("auto", "lines", "paragraphs", "jsonl")
FILE_KINDS = ("lines", "paragraphs", "jsonl")  # what "auto" resolves to, per file; index = kind id
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
DOCUMENT_SHUFFLE_BUFFER = 4096  # documents, after sharding (as the embedded corpus shuffles its documents)
TASK_SHUFFLE_BUFFER = 1024  # examples after preprocessing (as the lmlab.embedded_* tasks)
MAX_OPEN_FILES = 16  # files read at once (interleaved), per shard
READ_BLOCK_LINES = 1024  # lines assembled into paragraphs / parsed as JSON per step
MAX_DOCUMENT_BYTES = 1 << 20  # a longer paragraph is cut (at a line end) into documents of about this size
_LINES, _PARAGRAPHS, _JSONL = (FILE_KINDS.index(k) for k in FILE_KINDS)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a corpus is preprocessed into, and with which vocabulary.

  Attributes:
    preprocessors: seqio preprocessors, from text to model features.
    vocabulary: The vocabulary of every feature.
    encoder_decoder: Features ``inputs`` and ``targets`` (else ``targets``).
    like: The embedded task with the same preprocessing and vocabulary.
  """

  preprocessors: Callable[[], list]
  vocabulary: Callable[[], seqio.Vocabulary]
  encoder_decoder: bool
  like: str

  def output_features(self) -> dict[str, seqio.Feature]:
    vocab = self.vocabulary()
    names = ("inputs", "targets") if self.encoder_decoder else ("targets",)
    return {name: seqio.Feature(vocab, add_eos=True) for name in names}


OBJECTIVES: Mapping[str, Objective] = {
    "mlm": Objective(tasks.mlm_preprocessors, vocabularies.embedded_vocabulary, False,
                     "lmlab.embedded_mlm"),
    "mlm_bytes": Objective(tasks.mlm_preprocessors, vocabularies.byte_vocabulary, False,
                           "lmlab.embedded_mlm_bytes"),
    "span_corruption": Objective(functools.partial(tasks.denoising_preprocessors, denoising.span_corruption),
                                 vocabularies.embedded_vocabulary_with_sentinels, True,
                                 "lmlab.embedded_span_corruption"),
    "bart_denoising": Objective(functools.partial(tasks.denoising_preprocessors, denoising.bart_denoising),
                                vocabularies.embedded_vocabulary, True, "lmlab.embedded_bart_denoising"),
    "byt5_span_corruption": Objective(
        functools.partial(tasks.denoising_preprocessors, denoising.byt5_span_corruption),
        vocabularies.byt5_vocabulary, True, "lmlab.embedded_byt5_span_corruption"),
}


# ----------------------------------------------------------------------------
# Files


def _is_remote(path: str) -> bool:
  return "://" in path


def expand_patterns(patterns: Sequence[str], what: str = "files") -> list[str]:
  """The sorted, de-duplicated files that ``patterns`` match (``**`` recurses for local paths).

  Raises:
    FileNotFoundError: A pattern matches no file (naming it and the working
      directory relative patterns are resolved in).
  """
  files: set[str] = set()
  for pattern in patterns:
    if _is_remote(pattern):
      matches = [m for m in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(m)]
    else:
      matches = [m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if not os.path.isdir(m)]
    if not matches:
      raise FileNotFoundError(
          f"{what}: pattern {pattern!r} matches no file (relative patterns are resolved in the working "
          f"directory {os.getcwd()!r}). Check the path, use an absolute one, or match the files of a "
          "folder with 'folder/*.txt'.")
    files.update(matches)
  return sorted(files)


def file_kind(path: str, format: str) -> str:  # pylint: disable=redefined-builtin
  """The format a file is read in: ``format`` itself, or for ``auto`` one chosen by extension."""
  if format != "auto":
    return format
  return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "lines"


@contextlib.contextmanager
def _open(path: str) -> Iterator[BinaryIO]:
  """The file's bytes, decompressed if its name ends in ``.gz`` (as the tf.data reader decides)."""
  with (tf.io.gfile.GFile(path, "rb") if _is_remote(path) else open(path, "rb")) as raw:
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=raw) as unzipped:
        yield unzipped
    else:
      yield raw


def _json_text(path: str, number: int, line: bytes, text_field: str) -> str:
  """The text of one JSONL line (a ValueError naming file and line if it has none)."""
  where = f"{path}, line {number}"
  try:
    record = json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{where}: not a JSON object ({e}). Each line of a JSONL file must be one object "
                     f"such as {{\"{text_field}\": \"...\"}}.") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: a JSON {type(record).__name__}, not an object with a {text_field!r} field.")
  if text_field not in record:
    raise ValueError(f"{where}: no {text_field!r} field (fields: {sorted(record)[:10]}). Set "
                     "CorpusTask.text_field to the field that holds the document.")
  text = record[text_field]
  if not isinstance(text, str):
    raise ValueError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string.")
  return text


def read_documents(path: str, kind: str, text_field: str = "text") -> Iterator[tuple[int, str]]:
  """``(line number, document)`` of one file, read in Python with the tf.data reader's rules.

  Used to check files before training (errors name file and line) and as a
  plain reader for inspecting a corpus. ``kind`` is one of ``FILE_KINDS``.

  Raises:
    ValueError: Invalid UTF-8, a broken gzip file, a bad JSONL line.
  """
  paragraph: list[bytes] = []
  start = 0
  number = 0
  try:
    with _open(path) as f:
      for number, raw in enumerate(f, 1):
        line = raw.rstrip(b"\n").replace(b"\r", b"")  # TextLineDataset drops every "\r"
        try:
          line.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(
              f"{path}, line {number}: not valid UTF-8 (byte {line[e.start:e.start + 1]!r} at {e.start}). "
              "Files are read as UTF-8: convert the file, e.g. `iconv -f latin1 -t utf-8`.") from None
        blank = not line.strip()
        if kind == "paragraphs":
          if blank:
            if paragraph:
              yield start, b"\n".join(paragraph).strip().decode("utf-8")
            paragraph = []
          else:
            start = start if paragraph else number
            paragraph.append(line)
        elif not blank:
          text = line.strip() if kind == "lines" else _json_text(path, number, line, text_field).encode("utf-8")
          if text.strip():
            yield number, text.strip().decode("utf-8")
  except (FileNotFoundError, PermissionError):
    raise
  except (OSError, EOFError, zlib.error) as e:
    hint = " A .gz file must be gzip-compressed text." if path.endswith(".gz") else ""
    raise ValueError(f"{path}: cannot be read after line {number} ({e}).{hint}") from None
  if paragraph:
    yield start, b"\n".join(paragraph).strip().decode("utf-8")


# ----------------------------------------------------------------------------
# tf.data reading


def _not_blank(text: tf.Tensor) -> tf.Tensor:
  return tf.strings.length(tf.strings.strip(text)) > 0


def _lines(path: tf.Tensor) -> tf.data.Dataset:
  compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
  return tf.data.TextLineDataset(path, compression_type=compression)


def _documents(texts: tf.Tensor) -> dict[str, tf.Tensor]:
  """A block of candidate documents, stripped, without the blank ones, as ``{"text": [n]}``.

  Readers work on blocks of ``READ_BLOCK_LINES`` lines and unbatch at the
  end: a tf.data function call per line would cost far more than the
  stripping itself.
  """
  texts = tf.strings.strip(texts)
  return {"text": tf.boolean_mask(texts, tf.strings.length(texts) > 0)}


def _line_documents(path: tf.Tensor) -> tf.data.Dataset:
  return _lines(path).batch(READ_BLOCK_LINES).map(_documents).unbatch()


def _paragraph_documents(path: tf.Tensor) -> tf.data.Dataset:
  """Paragraphs, assembled a block of lines at a time (linear time, however long a paragraph).

  A ``scan`` over blocks of ``READ_BLOCK_LINES`` lines carries the paragraph
  still open at the end of a block into the next one; within a block the
  lines are joined per paragraph by ``unsorted_segment_join``. A paragraph
  longer than ``MAX_DOCUMENT_BYTES`` is cut (at a line end) into documents
  of about that size.
  """
  blocks = _lines(path).concatenate(tf.data.Dataset.from_tensors(tf.constant(""))).batch(READ_BLOCK_LINES)

  def step(open_text, block):
    items = tf.concat([open_text[None], block], axis=0)  # the open paragraph continues with the block
    blank = tf.logical_not(_not_blank(items))
    starts = tf.logical_not(blank) & tf.concat([[True], blank[:-1]], axis=0)
    count = tf.reduce_sum(tf.cast(starts, tf.int32))
    segment = tf.cumsum(tf.cast(starts, tf.int32)) - 1
    keep = tf.logical_not(blank)
    paragraphs = tf.strings.unsorted_segment_join(tf.boolean_mask(items, keep), tf.boolean_mask(segment, keep),
                                                  count, separator="\n")
    still_open = tf.logical_not(blank[-1])  # the block ends inside a paragraph
    done = tf.cond(still_open, lambda: paragraphs[:count - 1], lambda: paragraphs)
    carried = tf.cond(still_open, lambda: paragraphs[count - 1], lambda: tf.constant(""))
    too_long = tf.strings.length(carried) > MAX_DOCUMENT_BYTES
    done = tf.cond(too_long, lambda: tf.concat([done, carried[None]], axis=0), lambda: done)
    return tf.where(too_long, "", carried), _documents(done)

  return blocks.scan(tf.constant(""), step).unbatch()


def _jsonl_documents(path: tf.Tensor, text_field: str) -> tf.data.Dataset:
  """The ``text_field`` of each JSON line, parsed a block of lines per Python call ("" for blank lines)."""
  def parse(file: bytes, numbers, lines):
    file = file.decode("utf-8", "replace")
    return np.array([_json_text(file, int(n), line, text_field).encode("utf-8") if line.strip() else b""
                     for n, line in zip(numbers, lines)], dtype=object)

  def parse_block(numbers, lines):
    texts = tf.numpy_function(parse, [path, numbers, lines], tf.string, stateful=False)
    return _documents(tf.ensure_shape(texts, [None]))

  return _lines(path).enumerate(start=1).batch(READ_BLOCK_LINES).map(parse_block).unbatch()


def _file_reader(kinds: Sequence[int], text_field: str) -> Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset]:
  """``reader(path, kind)``: a file's documents, read as its kind says (one of the ``kinds`` present).

  With files of several kinds (``auto``), the reader chains one pipeline per
  kind, each cut to nothing (``take(0)``: no element is read) unless it is
  the file's kind.
  """
  readers = {_LINES: _line_documents, _PARAGRAPHS: _paragraph_documents,
             _JSONL: functools.partial(_jsonl_documents, text_field=text_field)}

  def read(path, kind):
    pipelines = [readers[k](path) for k in sorted(set(kinds))]
    if len(pipelines) == 1:
      return pipelines[0]
    documents = None
    for k, pipeline in zip(sorted(set(kinds)), pipelines):
      gated = pipeline.take(tf.where(tf.equal(kind, k), tf.constant(-1, tf.int64), 0))
      documents = gated if documents is None else documents.concatenate(gated)
    return documents

  return read


class CorpusSource(seqio.DataSource):
  """seqio source of the documents of a ``CorpusTask``'s files (see the module docstring)."""

  def __init__(self, corpus: CorpusTask):
    super().__init__(splits=corpus.splits)
    self.corpus = corpus

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # by file or by document, decided in get_dataset

  def list_shards(self, split: str) -> Sequence[str]:
    return self.corpus.files(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    """Documents ``{"text": ...}`` of this shard of ``split``.

    Shuffling reorders this shard's files (when sharding by file) and
    shuffles documents in a buffer of ``DOCUMENT_SHUFFLE_BUFFER``; both are
    reproducible given ``seed`` and reshuffled every epoch.
    """
    del sequence_length, use_cached, num_epochs  # seqio repeats and preprocesses
    files = list(self.list_shards(split))
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    by_file = len(files) >= count
    if by_file:
      files = files[index::count]
    kinds = [FILE_KINDS.index(file_kind(f, self.corpus.format)) for f in files]
    paths = tf.data.Dataset.from_tensor_slices((files, tf.constant(kinds, tf.int32)))
    if shuffle and by_file and len(files) > 1:
      paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    documents = paths.interleave(_file_reader(kinds, self.corpus.text_field),
                                 cycle_length=min(len(files), MAX_OPEN_FILES), block_length=1,
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not by_file:  # fewer files than shards: every shard reads them all, in the same order
      documents = documents.shard(count, index)
    if shuffle:
      documents = documents.shuffle(DOCUMENT_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    return documents


# ----------------------------------------------------------------------------
# The task


def _as_patterns(value: Union[str, Sequence[str]], field: str) -> tuple[str, ...]:
  if isinstance(value, str):
    value = (value,)
  patterns = tuple(value)
  if not all(isinstance(p, str) and p for p in patterns):
    raise ValueError(f"CorpusTask.{field} must be a list of non-empty glob patterns, got {value!r}.")
  return patterns


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CorpusTask:
  """A pretraining task over text files: which files, how to read them, what to learn.

  Attributes:
    name: The seqio task name it registers (and the run reads), e.g.
      ``lmlab.corpus``; a name of a task that is not a corpus is refused.
    train_files: Glob patterns of the ``train`` split (a list; ``.gz``
      allowed; relative ones resolve in the working directory).
    validation_files: Glob patterns of the ``validation`` split; none: the
      task has no validation split (set ``DataConfig.eval_split = ''``).
    format: ``auto``, ``lines``, ``paragraphs`` or ``jsonl`` (module
      docstring).
    text_field: The JSONL field that holds the document.
    objective: ``mlm`` (8k SentencePiece), ``mlm_bytes`` (UTF-8 bytes),
      ``span_corruption`` (T5, 8k SentencePiece + sentinels),
      ``bart_denoising`` or ``byt5_span_corruption``: the preprocessing and
      vocabulary of the ``lmlab.embedded_*`` task of that objective.
    check_files: Read every file once at registration to report bad input
      before training; False (huge corpora) only checks that each split has
      a document, and bad input fails while training (still naming file and
      line).
  """

  name: str = gin.REQUIRED
  train_files: Sequence[str] = gin.REQUIRED
  validation_files: Sequence[str] = ()
  format: str = "auto"  # pylint: disable=redefined-builtin
  text_field: str = "text"
  objective: str = "mlm"
  check_files: bool = True

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name.strip():
      raise ValueError(f"CorpusTask.name must be a non-empty task name such as 'lmlab.corpus', got {self.name!r}.")
    object.__setattr__(self, "train_files", _as_patterns(self.train_files, "train_files"))
    object.__setattr__(self, "validation_files", _as_patterns(self.validation_files, "validation_files"))
    if not self.train_files:
      raise ValueError("CorpusTask.train_files is empty: give at least one glob pattern, e.g. ['/data/*.txt'].")
    if self.format not in FORMATS:
      raise ValueError(f"Unknown CorpusTask.format {self.format!r}; choose one of {', '.join(FORMATS)}.")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"Unknown CorpusTask.objective {self.objective!r}; choose one of "
                       f"{', '.join(OBJECTIVES)}.")
    if not self.text_field:
      raise ValueError("CorpusTask.text_field must name the JSONL field of the document, e.g. 'text'.")

  @property
  def splits(self) -> tuple[str, ...]:
    return ("train", "validation") if self.validation_files else ("train",)

  @property
  def encoder_decoder(self) -> bool:
    """Whether the task feeds an encoder–decoder (``inputs`` and ``targets``)."""
    return OBJECTIVES[self.objective].encoder_decoder

  def patterns(self, split: str) -> tuple[str, ...]:
    if split not in self.splits:
      raise ValueError(f"CorpusTask {self.name!r} has no split {split!r}; it has {list(self.splits)} "
                       "(a validation split needs CorpusTask.validation_files).")
    return self.train_files if split == "train" else self.validation_files

  def files(self, split: str) -> list[str]:
    """The files of ``split`` (FileNotFoundError if a pattern matches none)."""
    return expand_patterns(self.patterns(split), f"CorpusTask {self.name!r}, split {split!r}")

  def check(self) -> dict[str, int]:
    """Documents per split, reading every file (or, with ``check_files`` False, up to the first document).

    Raises:
      FileNotFoundError: A pattern matches no file.
      ValueError: Bad input (file and line named) or a split without documents.
    """
    counts = {}
    files = {split: self.files(split) for split in self.splits}
    for split, paths in files.items():
      count = 0
      for path in paths:
        for _ in read_documents(path, file_kind(path, self.format), self.text_field):
          count += 1
          if not self.check_files:
            break
        if count and not self.check_files:
          break
      if not count:
        raise ValueError(
            f"Split {split!r} of CorpusTask {self.name!r} has no documents: its {len(paths)} file(s) "
            f"({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}) hold only blank lines or empty "
            f"texts when read as format {self.format!r}. Check the files and CorpusTask.format.")
      counts[split] = count
    shared = set(files["train"]) & set(files.get("validation", ()))
    if shared:
      logger.warning("CorpusTask %r: %d file(s) are in both train and validation, e.g. %s.", self.name,
                     len(shared), sorted(shared)[0])
    return counts

  def register(self) -> str:
    """Registers the seqio task (checking the files first); returns its name.

    Idempotent: registering an equal ``CorpusTask`` again does nothing; a
    different one under the same name replaces it.

    Raises:
      ValueError: ``name`` belongs to a task or mixture that is not a corpus,
        or the files are bad (``check``).
      FileNotFoundError: A pattern matches no file.
    """
    if self.name in seqio.MixtureRegistry.names():
      raise ValueError(f"CorpusTask.name {self.name!r} is a registered mixture; choose another name.")
    if self.name in seqio.TaskRegistry.names():
      source = seqio.TaskRegistry.get(self.name).source
      if not isinstance(source, CorpusSource):
        raise ValueError(f"CorpusTask.name {self.name!r} is already a registered task that does not read "
                         "your files; choose another name, e.g. 'lmlab.corpus'.")
      if source.corpus == self:
        return self.name
    counts = self.check()
    objective = OBJECTIVES[self.objective]
    if self.name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(self.name)
    seqio.TaskRegistry.add(self.name, source=CorpusSource(self), preprocessors=objective.preprocessors(),
                           output_features=objective.output_features(), metric_fns=[],
                           shuffle_buffer_size=TASK_SHUFFLE_BUFFER)
    if self.check_files:
      sizes = ", ".join(f"{split} {n} documents" for split, n in counts.items())
    else:
      sizes = "documents not counted (check_files=False)"
    logger.info("Registered corpus task %r (objective %s, format %s): %s.", self.name, self.objective,
                self.format, sizes)
    return self.name
