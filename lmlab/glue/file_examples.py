"""The examples of a file task: text, label and index of each record of one split's file.

The checking half of ``lmlab.glue.file_tasks``: every record of a table
(``lmlab.glue.file_readers``) is turned into a :class:`FileExample` or
refused with an error naming the file and the record's row (CSV/TSV) or line
(JSON lines), and the missing column with the columns that exist.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Optional, Union

from lmlab.glue.file_readers import Table

# Functions here take a ``lmlab.glue.file_tasks.FileTask`` (``task: Any`` below);
# importing it would make the two modules import each other.
_INTEGER = re.compile(r"[+-]?\d+")
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class FileExample:
  """One record: texts in ``text_fields`` order, label, index and the ``id_field`` value.

  ``label`` is a class id (-1: a test record without a label) or a float
  score (NaN: a test record without one). ``idx`` is the integer id, or the
  record's 0-based position in its file.
  """
  texts: tuple[str, ...]
  label: Union[int, float]
  idx: int
  id: Optional[str] = None


def label_text(value: Any) -> Optional[str]:
  """A classification label as text (JSON ``true``: ``"true"``, ``1.0``: ``"1"``); None if empty."""
  if value is None:
    return None
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  if isinstance(value, (str, int, float)):
    return str(value).strip() or None
  raise ValueError(f"a label must be a string or a number, got a {type(value).__name__}")


def sorted_labels(labels: Iterable[str]) -> tuple[str, ...]:
  """Distinct labels, numerically when they are all integers ("2" before "10")."""
  distinct = set(labels)
  if all(_INTEGER.fullmatch(label) for label in distinct):
    return tuple(sorted(distinct, key=int))
  return tuple(sorted(distinct))


def _as_int32(value: Any) -> Optional[int]:
  """``value`` as an integer id when it is one that fits int32, else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    number = value
  elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
    number = int(value)
  else:
    return None
  return number if -_INT32_MAX <= number <= _INT32_MAX else None


def _empty(value: Any) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


class _Records:
  """Reads the cells of one table for one task, raising errors that name row and column."""

  def __init__(self, task: Any, table: Table, split: str):
    self.task, self.table, self.split = task, table, split

  def fail(self, number: int, message: str) -> ValueError:
    return self.task.error(f"{self.table.where(number)}: {message}")

  def cell(self, number: int, values: Mapping[str, Any], field: str, role: str) -> Any:
    if field in values:
      return values[field]
    if self.table.format == "jsonl":
      raise self.fail(number, f"no field {field!r} ({role}); this record's fields are "
                              f"{list(values)}.")
    raise self.task.error(f"{self.table.path} has no column {field!r} ({role}); the columns are "
                          f"{list(self.table.columns)}.")

  def raw_label(self, number: int, values: Mapping[str, Any]) -> Any:
    """The label cell; None for a test record without one (train and validation need it)."""
    field = self.task.label_field
    if self.split == "test" and field not in values:
      return None
    value = self.cell(number, values, field, "the label field")
    if self.split != "test" and _empty(value):
      raise self.fail(number, f"the label ({field!r}) is empty; every {self.split} example "
                              "needs one.")
    return value

  def label_text(self, number: int, values: Mapping[str, Any]) -> Optional[str]:
    raw = self.raw_label(number, values)
    try:
      return label_text(raw)
    except ValueError as e:
      raise self.fail(number, f"{e}.") from None

  def label(self, number: int, values: Mapping[str, Any],
            names: tuple[str, ...]) -> Union[int, float]:
    if self.task.kind == "regression":
      raw = self.raw_label(number, values)
      if _empty(raw):
        return math.nan
      try:
        if isinstance(raw, bool):
          raise ValueError(raw)
        score = float(raw.strip() if isinstance(raw, str) else raw)
      except (TypeError, ValueError):
        raise self.fail(number, f"label {raw!r} is not a number (a regression task needs numeric "
                                "labels).") from None
      if not math.isfinite(score):
        raise self.fail(number, f"label {raw!r} is not a finite number.")
      return score
    text = self.label_text(number, values)
    if text is None:
      return -1
    if text in names:
      return names.index(text)
    if _INTEGER.fullmatch(text) and 0 <= int(text) < len(names):
      return int(text)
    raise self.fail(number, f"label {text!r} is not one of {list(names)} (nor a class index 0 to "
                            f"{len(names) - 1}).")

  def text(self, number: int, values: Mapping[str, Any], field: str) -> str:
    value = self.cell(number, values, field, "a text field")
    if isinstance(value, str):
      return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return str(value)
    what = "null" if value is None else f"a {type(value).__name__}, not text"
    raise self.fail(number, f"the text field {field!r} is {what}.")

  def id(self, number: int, values: Mapping[str, Any]) -> Any:
    value = self.cell(number, values, self.task.id_field, "the id field")
    if _empty(value):
      raise self.fail(number, f"the id ({self.task.id_field!r}) is empty.")
    return value


def infer_label_names(task: Any, table: Table) -> tuple[str, ...]:
  """The sorted distinct labels of a (training) table."""
  records = _Records(task, table, "train")
  return sorted_labels(records.label_text(number, values) for number, values in table.records)


def read_examples(task: Any, table: Table, split: str,
                  names: tuple[str, ...]) -> tuple[list[FileExample], bool]:
  """Every record of ``table`` as an example, and whether the integer ids are the ``idx``."""
  records = _Records(task, table, split)
  rows, ids = [], []
  for number, values in table.records:
    texts = tuple(records.text(number, values, field) for field in task.text_fields)
    label = records.label(number, values, names)
    raw_id = None if task.id_field is None else records.id(number, values)
    ids.append(raw_id)
    rows.append(FileExample(texts, label, len(rows), None if raw_id is None else str(raw_id)))
  if task.id_field is None:
    return rows, False
  seen: dict[str, int] = {}
  for (number, _), row in zip(table.records, rows):
    if row.id in seen:
      raise records.fail(number, f"id {row.id!r} was already used at {table.where(seen[row.id])}; "
                                 "ids must be unique.")
    seen[row.id] = number
  numbers = [_as_int32(raw) for raw in ids]
  if any(n is None for n in numbers) or len(set(numbers)) != len(numbers):
    return rows, False  # not all integers: positions index the examples, the ids get a column
  return [dataclasses.replace(row, idx=n) for row, n in zip(rows, numbers)], True
