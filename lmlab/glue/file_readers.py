"""Records of a labelled CSV, TSV or JSON-lines file, each remembering where it was read.

The reading half of ``lmlab.glue.file_tasks``: pure Python, no TensorFlow
(the files of a fine-tuning task are small enough to hold in memory). Every
problem is reported with the file and the position a person would look at:
the 1-based data row for CSV/TSV (the header is not counted) and the 1-based
line for JSON lines.

Conventions:

* CSV: the ``csv`` module's default dialect (``,``, fields with commas,
  quotes or newlines quoted with ``"``), as spreadsheets and pandas write it.
* TSV: tab separated with no quoting, as the GLUE TSV files are (a ``"`` is
  an ordinary character), so sentences keep their quotation marks.
* JSON lines: one JSON object per line; blank lines are skipped.
* UTF-8, with or without a byte-order mark. Paths with ``://`` (``gs://``)
  are read through ``tf.io.gfile``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional, TextIO

FORMATS = ("csv", "tsv", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclasses.dataclass(frozen=True)
class Table:
  """One file's records.

  Attributes:
    path: The file, as configured.
    format: ``csv``, ``tsv`` or ``jsonl``.
    columns: The CSV/TSV header, or the first JSON record's fields.
    records: ``(number, values)`` per data record in file order: ``number`` is
      the 1-based data row (CSV/TSV) or line (JSON lines) that errors name.
  """
  path: str
  format: str
  columns: tuple[str, ...]
  records: list[tuple[int, Mapping[str, Any]]]

  def where(self, number: int) -> str:
    """``train.csv row 17`` / ``train.jsonl line 17``: how errors name a record."""
    return f"{self.path} {'line' if self.format == 'jsonl' else 'row'} {number}"


def resolve_format(path: str, fmt: str) -> str:
  """The format of ``path``: ``fmt`` itself, or by extension when ``fmt`` is ``auto``."""
  if fmt != "auto":
    if fmt not in FORMATS:
      raise ValueError(f"Unknown file format {fmt!r}; use one of {('auto',) + FORMATS}.")
    return fmt
  extension = os.path.splitext(path)[1].lower()
  if extension not in EXTENSIONS:
    raise ValueError(f"Cannot tell the format of {path} from its extension {extension!r} "
                     f"(known: {', '.join(EXTENSIONS)}); set FileTask.format to one of {FORMATS}.")
  return EXTENSIONS[extension]


def _exists(path: str) -> bool:
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.exists(path)
  return os.path.isfile(path)


@contextlib.contextmanager
def _open(path: str) -> Iterator[TextIO]:
  if "://" in path:
    import io  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, "rb") as f:
      yield io.TextIOWrapper(io.BytesIO(f.read()), encoding="utf-8-sig", newline="")
    return
  with open(path, encoding="utf-8-sig", newline="") as f:
    yield f


@contextlib.contextmanager
def _long_fields() -> Iterator[None]:
  """Lets ``csv`` read cells longer than its default 128 KiB (long documents)."""
  previous = csv.field_size_limit(2**31 - 1)
  try:
    yield
  finally:
    csv.field_size_limit(previous)


def _read_delimited(path: str, f: TextIO, fmt: str) -> Table:
  reader = (csv.reader(f) if fmt == "csv"
            else csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  try:
    with _long_fields():
      return _delimited_records(path, reader, fmt)
  except csv.Error as e:
    raise ValueError(f"{path} line {reader.line_num}: cannot be read as {fmt.upper()} "
                     f"({e}).") from None


def _delimited_records(path: str, reader: Iterator[list[str]], fmt: str) -> Table:
  header = next(reader, None)
  if header is None or not any(h.strip() for h in header):
    raise ValueError(f"{path} is empty: expected a header row naming the columns, then one row "
                     "per example.")
  header = [h.strip() for h in header]
  repeated = sorted({h for h in header if header.count(h) > 1})
  if repeated:
    raise ValueError(f"{path}: the header names the column(s) {repeated} more than once.")
  records = []
  for row in reader:
    if not row or (len(row) == 1 and not row[0].strip()):
      continue  # a blank line
    number = len(records) + 1
    if len(row) != len(header):
      extra = fmt == "csv" and len(row) > len(header)
      hint = " (quote fields that contain commas)" if extra else ""
      raise ValueError(f"{path} row {number}: {len(row)} fields, but the header has {len(header)} "
                       f"({header}){hint}.")
    records.append((number, dict(zip(header, row))))
  if not records:
    raise ValueError(f"{path} has a header but no data rows.")
  return Table(path, fmt, tuple(header), records)


def _read_jsonl(path: str, f: TextIO) -> Table:
  records = []
  for number, line in enumerate(f, 1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} line {number}: not valid JSON ({e.msg}, column "
                       f"{e.colno}).") from None
    if not isinstance(value, dict):
      raise ValueError(f"{path} line {number}: expected a JSON object ({{\"field\": value, ...}}), "
                       f"got a {type(value).__name__}.")
    records.append((number, value))
  if not records:
    raise ValueError(f"{path} is empty: expected one JSON object per line.")
  return Table(path, "jsonl", tuple(records[0][1]), records)


def read_table(path: str, fmt: str = "auto", what: Optional[str] = None) -> Table:
  """Every record of ``path``.

  Args:
    path: A local path or a ``tf.io.gfile`` URL.
    fmt: ``auto`` (by extension) or one of ``FORMATS``.
    what: How the file is named in a missing-file error (``the train file of FileTask 'x'``).

  Raises:
    FileNotFoundError: No such file.
    ValueError: Unknown format, empty file, a row with the wrong number of
      fields, a line that is not a JSON object, text that is not UTF-8.
  """
  fmt = resolve_format(path, fmt)
  if not _exists(path):
    raise FileNotFoundError(f"{what or 'The file'} {path} does not exist.")
  try:
    with _open(path) as f:
      if fmt == "jsonl":
        return _read_jsonl(path, f)
      return _read_delimited(path, f, fmt)
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8.") from None
