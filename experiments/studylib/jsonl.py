"""Reading the .jsonl files lmlab and the runner append to."""

from __future__ import annotations

import json
import pathlib


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The JSON objects of a .jsonl file; a torn last line (an interrupted write) is skipped."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text(encoding="utf-8").splitlines():
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records
