"""Rebuilds the embedded English corpus shipped in ``lmlab/data/assets/embedded``.

The corpus is two public-domain English Bible translations, taken from Debian
packages so the build works offline:

* King James Version (1611), package ``bible-kjv`` (dumped with ``bible``).
* World English Bible (2015 edition with deuterocanon), package
  ``sword-text-web`` (dumped with ``diatheke`` from package ``diatheke``).

Each chapter becomes one document (one line of the output, verses joined by a
space). A chapter goes to validation when a stable hash of its
``source/book chapter`` key falls in the lowest 1/20 of the range, so the split
never depends on iteration order or Python's hash seed.

Usage (as root on Debian/Ubuntu)::

    apt-get install -y bible-kjv sword-text-web diatheke
    python -m lmlab.data.build_embedded_corpus
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pathlib
import re
import subprocess
from typing import Iterator

ASSET_DIR = pathlib.Path(__file__).parent / "assets" / "embedded"
VALIDATION_FRACTION = 1 / 20

_WEB_VERSE = re.compile(r"(?:^|\s\s)(?P<book>[A-Za-z]+(?: [A-Za-z]+)*?) (?P<chapter>\d+):(?P<verse>\d+): (?P<text>.*)$")
_TAG = re.compile(r"<[^>]*>")
_DROPPED_ELEMENTS = re.compile(r"<(note|title)\b.*?</\1>")
_KJV_CHAPTER = re.compile(r"^(?P<book>(?:[1-4] )?[A-Za-z][A-Za-z ]*?) (?P<chapter>\d+)$")
_KJV_VERSE = re.compile(r"^\s*(?P<verse>\d+) (?P<text>.*)$")


def _normalise(text: str) -> str:
  text = text.replace("\u2019", "'").replace("\u2018", "'")
  text = text.replace("\u201c", '"').replace("\u201d", '"')
  text = text.replace("\u2014", " - ").replace("\u00b6", "")
  return re.sub(r"\s+", " ", text).strip()


def _strip_osis(line: str) -> str:
  """Plain text of one line of diatheke's OSIS output (notes and titles dropped)."""
  line = _DROPPED_ELEMENTS.sub("", line)
  line = re.sub(r"</w>\s*<w", "</w> <w", line)  # adjacent words stay apart
  return _TAG.sub("", line).strip()


def kjv_chapters() -> Iterator[tuple[str, str]]:
  """Yields (key, chapter text) for the King James Version."""
  out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
  key, verses = None, []
  for line in out.splitlines():
    if m := _KJV_CHAPTER.match(line.strip()):
      if key and verses:
        yield key, _normalise(" ".join(verses))
      key, verses = f"kjv/{m['book']} {m['chapter']}", []
    elif m := _KJV_VERSE.match(line):
      verses.append(m["text"])
    elif line.strip() and verses:
      verses[-1] += " " + line.strip()  # wrapped continuation of a verse
  if key and verses:
    yield key, _normalise(" ".join(verses))


def web_chapters() -> Iterator[tuple[str, str]]:
  """Yields (key, chapter text) for the World English Bible."""
  out = subprocess.run(
      ["diatheke", "-b", "engWEB2015eb", "-f", "osis", "-k", "Genesis 1:1-Revelation 22:21"],
      check=True, capture_output=True, text=True).stdout
  # A verse is marked "Book C:V: ", after any psalm heading (which diatheke
  # repeats before every verse and is left out). Lines right after a verse
  # continue it (poetry).
  chapters: dict[str, list[str]] = {}
  key, in_verse = None, False
  for raw in out.splitlines():
    line = _strip_osis(raw)
    if not line or line.startswith("(engWEB2015eb)"):
      in_verse = False
    elif m := _WEB_VERSE.search(line):
      key, in_verse = f"web/{m['book']} {m['chapter']}", True
      # The last verse runs on into the translators' glossary: cut it there.
      chapters.setdefault(key, []).append(m["text"].split("   The following words")[0])
    elif in_verse and key:
      chapters[key][-1] += " " + line
  for key, verses in chapters.items():
    yield key, _normalise(" ".join(verses))


def is_validation(key: str) -> bool:
  digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
  return digest < VALIDATION_FRACTION * 16**8


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", type=pathlib.Path, default=ASSET_DIR)
  args = parser.parse_args()
  args.out_dir.mkdir(parents=True, exist_ok=True)
  splits = {"train": [], "validation": []}
  for key, text in [*kjv_chapters(), *web_chapters()]:
    if text:
      splits["validation" if is_validation(key) else "train"].append(text)
  for split, docs in splits.items():
    path = args.out_dir / f"{split}.txt.gz"
    # mtime=0 keeps the archive byte-identical across rebuilds.
    with gzip.GzipFile(path, "wb", mtime=0) as f:
      f.write(("\n".join(docs) + "\n").encode("utf-8"))
    print(f"{split}: {len(docs)} documents, {sum(map(len, docs))} characters -> {path}")


if __name__ == "__main__":
  main()
