"""Rebuilds the offline downstream suite shipped in ``lmlab/data/assets/offline``.

Five small labelled tasks, GLUE-shaped, made from two public-domain English
Bible translations that Debian packages provide, so the suite is rebuilt
without a network (the same sources as the embedded corpus,
``lmlab.data.build_embedded_corpus``, whose parsing helpers this reuses):

* King James Version (1611), package ``bible-kjv`` (dumped with ``bible``).
* World English Bible (2015), package ``sword-text-web`` (dumped with
  ``diatheke`` from package ``diatheke``); its deuterocanon has no KJV
  counterpart and is left out.

Every verse is keyed ``Book chapter:verse`` (KJV book names; the WEB's
``I Samuel`` is ``1 Samuel``). The tasks (``lmlab.glue.offline_tasks``
registers them as ``offline_<name>``):

* ``translation`` (single sentence): is the verse from the KJV or the WEB?
  Each verse key is used once, in one translation.
* ``testament`` (single sentence): is the verse from the Old or the New
  Testament? Verses of either translation.
* ``paraphrase`` (pair): a KJV verse and a WEB verse; ``equivalent`` when the
  WEB verse translates the same verse, ``not_equivalent`` when it is a
  different verse 1 to 3 verses away in the same chapter.
* ``order`` (pair): two consecutive verses of one translation;
  ``in_order`` as in the text, ``swapped`` when the second comes first.
* ``overlap`` (pair regression): a KJV verse and a WEB verse (the same verse
  or one 1 to 3 verses away, half each) scored 0 to 5: five times the
  Jaccard overlap of their content-word sets (lowercased words minus
  ``STOPWORDS``, which includes archaic forms such as ``thee``). 5 is the same
  content vocabulary, 0 none in common; the 0 to 5 range is STS-B's, so
  text-to-text targets round it as STS-B's are.

Splits: each chapter goes to train (80%), validation (10%) or test (10%) by
a stable hash of its ``Book chapter`` key, the same for both translations,
so a verse and its neighbours (used by the pair tasks) stay in one split. A
verse text found in chapters of two different splits (formulas such as
"And the LORD spake unto Moses, saying,") is dropped everywhere, so no text
is shared between splits. Only verses of ``MIN_CHARS`` to ``MAX_CHARS``
characters are used (short enough for 128-token rows; formulaic short
verses out). Pair examples keep the two verses' lengths within a factor of
``MAX_LENGTH_RATIO`` so length alone does not give the label away.

Every binary task is exactly balanced in each split, so the majority-class
baseline is 50%. The output is deterministic (sorted iteration, seeded
``random.Random`` per task and split, gzip with ``mtime=0``): building twice
gives the same bytes. ``manifest.json`` records sizes, label counts and
baselines; ``README.md`` is generated from it.

Note: the embedded pretraining corpus is made of every chapter of these two
Bibles, so a model pretrained on it has seen the suite's verses (not its
labels). The suite measures what fine-tuning extracts, not memorisation of
unseen text; its own test split is disjoint from its train split.

Usage (as root on Debian/Ubuntu)::

    apt-get install -y bible-kjv sword-text-web diatheke
    python -m lmlab.data.build_offline_suite
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import pathlib
import random
import re
import shutil
import subprocess
from typing import Callable, Iterator, NamedTuple, Sequence

from lmlab.data.build_embedded_corpus import (_KJV_CHAPTER, _KJV_VERSE, _WEB_VERSE, _normalise,
                                              _strip_osis)

ASSET_DIR = pathlib.Path(__file__).parent / "assets" / "offline"
SPLITS = ("train", "validation", "test")
SIZES = {"train": 3000, "validation": 500, "test": 500}  # examples per task and split
TEST_FRACTION, VALIDATION_FRACTION = 0.1, 0.1
MIN_CHARS, MAX_CHARS = 30, 200
MAX_LENGTH_RATIO = 2.0
NEARBY = (1, 2, 3)  # how far (in verses) a "nearby different verse" is
SEED = 20240601
SOURCE_COMMANDS = ("bible", "diatheke")  # what the build runs (packages bible-kjv, diatheke)
WEB_MODULE = "engWEB2015eb"
NEW_TESTAMENT_FIRST_BOOK = "Matthew"
_ROMAN = {"I": "1", "II": "2", "III": "3"}
_WEB_BOOKS = {"Revelation of John": "Revelation"}
_WORD = re.compile(r"[a-z]+")
STOPWORDS = frozenset("""
a about after again against all also am an and any are as at be because been before being
but by can could did do does doing done down for from had has have having he her here hers
herself him himself his how i if in into is it its itself let may me might more most my
myself no nor not now o of off on once one only or other our ours ourselves out over own
said same saying says shall she should so some such than that the their theirs them
themselves then there these they this those through thus to too unto up upon us very was we
were what when where which while who whom why will with would ye you your yours yourself
yourselves thee thou thy thine hath hast doth dost art shalt wilt unto saith spake
""".split())


class Verse(NamedTuple):
  """One verse: where it is and its text in one translation."""
  book: str
  chapter: int
  verse: int
  text: str

  @property
  def key(self) -> str:
    return f"{self.book} {self.chapter}:{self.verse}"

  @property
  def chapter_key(self) -> str:
    return f"{self.book} {self.chapter}"


def _run(command: Sequence[str]) -> str:
  if shutil.which(command[0]) is None:
    raise FileNotFoundError(f"{command[0]!r} is not installed; the offline suite is built from "
                            "Debian packages: apt-get install -y bible-kjv sword-text-web diatheke")
  return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def kjv_verses() -> Iterator[Verse]:
  """The King James Version, verse by verse, as ``bible`` prints it (continuations joined)."""
  book, chapter, verses = None, 0, []
  for line in _run(["bible", "-l100000", "gen1:1-rev22:21"]).splitlines():
    if m := _KJV_CHAPTER.match(line.strip()):
      yield from (Verse(book, chapter, n, _normalise(t)) for n, t in verses)
      book, chapter, verses = m["book"], int(m["chapter"]), []
    elif m := _KJV_VERSE.match(line):
      verses.append((int(m["verse"]), m["text"]))
    elif line.strip() and verses:
      verses[-1] = (verses[-1][0], verses[-1][1] + " " + line.strip())
  yield from (Verse(book, chapter, n, _normalise(t)) for n, t in verses)


def _kjv_book(web_book: str) -> str:
  """A WEB book name as the KJV names it (``II Samuel`` -> ``2 Samuel``)."""
  first, _, rest = web_book.partition(" ")
  if first in _ROMAN and rest:
    return f"{_ROMAN[first]} {rest}"
  return _WEB_BOOKS.get(web_book, web_book)


def web_verses() -> Iterator[Verse]:
  """The World English Bible, verse by verse (notes, titles and psalm headings dropped).

  Reads diatheke's OSIS output as ``build_embedded_corpus.web_chapters`` does
  (a verse starts at ``Book C:V:``; the lines after it continue it), keeping
  the verses apart instead of joining each chapter.
  """
  out = _run(["diatheke", "-b", WEB_MODULE, "-f", "osis", "-k", "Genesis 1:1-Revelation 22:21"])
  verses: dict[tuple[str, int, int], list[str]] = {}
  key, in_verse = None, False
  for raw in out.splitlines():
    line = _strip_osis(raw)
    if not line or line.startswith(f"({WEB_MODULE})"):
      in_verse = False
    elif m := _WEB_VERSE.search(line):
      key, in_verse = (_kjv_book(m["book"]), int(m["chapter"]), int(m["verse"])), True
      verses.setdefault(key, []).append(m["text"].split("   The following words")[0])
    elif in_verse and key:
      verses[key][-1] += " " + line
  for (book, chapter, number), parts in verses.items():
    yield Verse(book, chapter, number, _normalise(" ".join(parts)))


def split_of(chapter_key: str) -> str:
  """``train``, ``validation`` or ``test`` by a stable hash of ``Book chapter``."""
  fraction = int(hashlib.sha256(chapter_key.encode()).hexdigest()[:8], 16) / 16**8
  if fraction < TEST_FRACTION:
    return "test"
  return "validation" if fraction < TEST_FRACTION + VALIDATION_FRACTION else "train"


def content_words(text: str) -> frozenset[str]:
  return frozenset(_WORD.findall(text.lower())) - STOPWORDS


def overlap_score(a: str, b: str) -> float:
  """5 x the Jaccard overlap of the two texts' content words (0: none shared, 5: the same set)."""
  x, y = content_words(a), content_words(b)
  return round(5.0 * len(x & y) / len(x | y), 3) if x | y else 0.0


class Bible:
  """Both translations, aligned by verse key, the usable verses grouped by split."""

  def __init__(self, kjv: Sequence[Verse], web: Sequence[Verse]):
    self.text = {"kjv": {v.key: v for v in kjv}, "web": {v.key: v for v in web}}
    order = {}  # book -> canonical position, from the KJV's order
    for v in kjv:
      order.setdefault(v.book, len(order))
    self.new_testament = {b for b, i in order.items() if i >= order[NEW_TESTAMENT_FIRST_BOOK]}
    # A text in chapters of two splits (a repeated formula) is dropped from every split.
    splits_of_text = collections.defaultdict(set)
    for verses in self.text.values():
      for v in verses.values():
        splits_of_text[v.text].add(split_of(v.chapter_key))
    shared = {t for t, s in splits_of_text.items() if len(s) > 1}
    self.usable = {name: {k for k, v in verses.items()
                          if MIN_CHARS <= len(v.text) <= MAX_CHARS and v.text not in shared}
                   for name, verses in self.text.items()}
    common = [v for k, v in self.text["kjv"].items() if k in self.text["web"]]
    common.sort(key=lambda v: (order[v.book], v.chapter, v.verse))
    self.keys = {s: [v.key for v in common if split_of(v.chapter_key) == s] for s in SPLITS}

  def verse(self, translation: str, key: str) -> Verse:
    return self.text[translation][key]

  def ok(self, translation: str, key: str) -> bool:
    return key in self.usable[translation]

  def neighbour(self, key: str, offset: int) -> str:
    v = self.text["kjv"][key]
    return f"{v.book} {v.chapter}:{v.verse + offset}"


def _similar_length(a: str, b: str) -> bool:
  return max(len(a), len(b)) <= MAX_LENGTH_RATIO * min(len(a), len(b))


def _balanced(rng: random.Random, candidates: dict[str, list], n: int, task: str,
              split: str) -> list:
  """Shuffled ``(label, candidate)`` pairs: ``n // len(candidates)`` per label, none twice."""
  per_label = n // len(candidates)
  out = []
  for label in sorted(candidates):
    pool = candidates[label]
    if len(pool) < per_label:
      raise ValueError(f"{task}/{split}: only {len(pool)} candidates for label {label!r}, "
                       f"{per_label} needed; lower SIZES.")
    out += [(label, c) for c in rng.sample(pool, per_label)]
  rng.shuffle(out)
  return out


def translation_examples(bible: Bible, split: str, rng: random.Random, n: int) -> list[dict]:
  keys = [k for k in bible.keys[split] if bible.ok("kjv", k) and bible.ok("web", k)]
  rng.shuffle(keys)  # each key once: half shown in the KJV, half in the WEB
  half = len(keys) // 2
  candidates = {"kjv": keys[:half], "web": keys[half:]}
  return [{"id": f"{label}/{key}", "sentence": bible.verse(label, key).text, "label": label}
          for label, key in _balanced(rng, candidates, n, "translation", split)]


def testament_examples(bible: Bible, split: str, rng: random.Random, n: int) -> list[dict]:
  candidates = {"old": [], "new": []}
  for key in bible.keys[split]:
    for translation in ("kjv", "web"):
      if bible.ok(translation, key):
        testament = "new" if bible.verse("kjv", key).book in bible.new_testament else "old"
        candidates[testament].append((translation, key))
  rows = []
  for label, (translation, key) in _balanced(rng, candidates, n, "testament", split):
    rows.append({"id": f"{translation}/{key}", "sentence": bible.verse(translation, key).text,
                 "label": label})
  return rows


def paraphrase_examples(bible: Bible, split: str, rng: random.Random, n: int) -> list[dict]:
  keys = [k for k in bible.keys[split] if bible.ok("kjv", k)]
  rng.shuffle(keys)  # each KJV verse once, as a positive or a negative
  candidates = {"equivalent": [], "not_equivalent": []}
  for i, key in enumerate(keys):
    kjv = bible.verse("kjv", key).text
    if i % 2 == 0:
      other = key
    else:
      offsets = [o for d in NEARBY for o in (-d, d) if bible.ok("web", bible.neighbour(key, o))]
      if not offsets:
        continue
      other = bible.neighbour(key, rng.choice(offsets))
    if bible.ok("web", other) and _similar_length(kjv, bible.verse("web", other).text):
      candidates["equivalent" if other == key else "not_equivalent"].append((key, other))
  return [{"id": f"{a}|{b}", "sentence1": bible.verse("kjv", a).text,
           "sentence2": bible.verse("web", b).text, "label": label}
          for label, (a, b) in _balanced(rng, candidates, n, "paraphrase", split)]


def order_examples(bible: Bible, split: str, rng: random.Random, n: int) -> list[dict]:
  pairs = []
  for key in bible.keys[split]:
    after = bible.neighbour(key, 1)
    for translation in ("kjv", "web"):
      if bible.ok(translation, key) and bible.ok(translation, after):
        a, b = bible.verse(translation, key).text, bible.verse(translation, after).text
        if _similar_length(a, b):
          pairs.append((translation, key, after))
  rng.shuffle(pairs)  # each pair once, kept in order or swapped
  half = len(pairs) // 2
  rows = []
  candidates = {"in_order": pairs[:half], "swapped": pairs[half:]}
  for label, (translation, key, after) in _balanced(rng, candidates, n, "order", split):
    first, second = (key, after) if label == "in_order" else (after, key)
    rows.append({"id": f"{translation}/{first}|{second}",
                 "sentence1": bible.verse(translation, first).text,
                 "sentence2": bible.verse(translation, second).text, "label": label})
  return rows


def overlap_examples(bible: Bible, split: str, rng: random.Random, n: int) -> list[dict]:
  keys = [k for k in bible.keys[split] if bible.ok("kjv", k)]
  rng.shuffle(keys)
  rows = []
  for i, key in enumerate(keys):
    if len(rows) == n:
      break
    offsets = [0] if i % 2 == 0 else [
        o for d in NEARBY for o in (-d, d) if bible.ok("web", bible.neighbour(key, o))]
    other = bible.neighbour(key, rng.choice(offsets)) if offsets else None
    if other is None or not bible.ok("web", other):
      continue
    a, b = bible.verse("kjv", key).text, bible.verse("web", other).text
    if _similar_length(a, b):
      rows.append({"id": f"{key}|{other}", "sentence1": a, "sentence2": b,
                   "label": f"{overlap_score(a, b):.3f}"})
  if len(rows) < n:
    raise ValueError(f"overlap/{split}: only {len(rows)} examples, {n} needed; lower SIZES.")
  return rows


class TaskBuild(NamedTuple):
  """How one task's examples are made and what its files hold."""
  examples: Callable[[Bible, str, random.Random, int], list[dict]]
  columns: tuple[str, ...]
  kind: str
  label_names: tuple[str, ...]


TASKS = {
    "translation": TaskBuild(translation_examples, ("id", "sentence", "label"), "classification",
                             ("kjv", "web")),
    "testament": TaskBuild(testament_examples, ("id", "sentence", "label"), "classification",
                           ("old", "new")),
    "paraphrase": TaskBuild(paraphrase_examples, ("id", "sentence1", "sentence2", "label"),
                            "classification", ("not_equivalent", "equivalent")),
    "order": TaskBuild(order_examples, ("id", "sentence1", "sentence2", "label"),
                       "classification", ("swapped", "in_order")),
    "overlap": TaskBuild(overlap_examples, ("id", "sentence1", "sentence2", "label"),
                         "regression", ()),
}


def _seed(task: str, split: str) -> int:
  return int(hashlib.sha256(f"{SEED}/{task}/{split}".encode()).hexdigest()[:8], 16)


def tsv_bytes(columns: Sequence[str], rows: Sequence[dict]) -> bytes:
  """A TSV (no quoting, as ``lmlab.glue.file_readers`` reads TSV) of ``rows``, gzipped, mtime 0."""
  lines = ["\t".join(columns)]
  for row in rows:
    cells = [str(row[c]) for c in columns]
    if any(c != c.strip() or "\t" in c or "\n" in c or not c for c in cells):
      raise ValueError(f"a cell of {row['id']} is empty or holds a tab or line break: {cells}")
    lines.append("\t".join(cells))
  buffer = io.BytesIO()
  with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as f:
    f.write(("\n".join(lines) + "\n").encode("utf-8"))
  return buffer.getvalue()


def statistics(task: TaskBuild, rows: Sequence[dict]) -> dict:
  """Examples, label counts and the majority-class baseline (%) of one split."""
  out = {"examples": len(rows)}
  if task.kind == "classification":
    counts = collections.Counter(r["label"] for r in rows)
    out["label_counts"] = {name: counts[name] for name in task.label_names}
    out["majority_baseline"] = round(100.0 * max(counts.values()) / len(rows), 2)
  else:
    scores = [float(r["label"]) for r in rows]
    mean = sum(scores) / len(scores)
    out["score_mean"] = round(mean, 3)
    out["score_std"] = round((sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5, 3)
    out["score_min"], out["score_max"] = min(scores), max(scores)
  return out


def build(bible: Bible) -> dict[str, bytes]:
  """Relative path -> bytes of every file of the suite (the data, manifest and README)."""
  files, manifest = {}, {"source": {"kjv": "bible-kjv", "web": f"sword-text-web ({WEB_MODULE})"},
                         "sizes": SIZES, "tasks": {}}
  for name, task in TASKS.items():
    entry = {"kind": task.kind, "label_names": list(task.label_names),
             "text_fields": [c for c in task.columns if c not in ("id", "label")], "splits": {}}
    for split in SPLITS:
      rows = task.examples(bible, split, random.Random(_seed(name, split)), SIZES[split])
      files[f"{name}/{split}.tsv.gz"] = tsv_bytes(task.columns, rows)
      entry["splits"][split] = statistics(task, rows)
    manifest["tasks"][name] = entry
  for path, data in files.items():
    name, split = path.split("/")[0], path.split("/")[1].split(".")[0]
    manifest["tasks"][name]["splits"][split]["bytes"] = len(data)
  files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
  files["README.md"] = readme(manifest).encode()
  return files


def readme(manifest: dict) -> str:
  """The suite's README: sources, licences, tasks, sizes, label balance and baselines."""
  lines = [
      "# Offline downstream suite",
      "",
      "Five small GLUE-shaped tasks built from two public-domain Bible translations, so",
      "fine-tuning can be evaluated without a network. Fine-tune them like GLUE tasks:",
      "`FinetuneConfig.tasks = ['offline']` (all) or `['offline_paraphrase']` (one); see",
      "`gin/finetune/offline.gin` and `lmlab/glue/offline_tasks.py`.",
      "",
      "| source | licence | Debian package |",
      "|---|---|---|",
      "| King James Version (1611 text) | public domain (copyright expired; see the package's "
      "copyright file) | `bible-kjv-text` (read with `bible` from `bible-kjv`) |",
      "| World English Bible (2015 edition) | dedicated to the public domain by its translators "
      "(\"World English Bible\" is a trademark of eBible.org, so a changed text must not carry "
      "that name; ours is reformatted: notes and psalm headings dropped, whitespace normalised) "
      "| `sword-text-web` (read with `diatheke`) |",
      "",
      "## Tasks",
      "",
      "| task | shape | text fields | labels | metrics |",
      "|---|---|---|---|---|",
      "| `offline_translation` | single sentence | sentence | kjv / web: which translation | "
      "accuracy |",
      "| `offline_testament` | single sentence | sentence | old / new: which Testament | "
      "accuracy |",
      "| `offline_paraphrase` | pair | sentence1 (KJV), sentence2 (WEB) | equivalent: the same "
      "verse; not_equivalent: a different verse 1-3 verses away | accuracy, F1 |",
      "| `offline_order` | pair | sentence1, sentence2 (consecutive verses, one translation) | "
      "in_order / swapped | accuracy, F1 |",
      "| `offline_overlap` | pair regression | sentence1 (KJV), sentence2 (WEB) | 0-5: five "
      "times the Jaccard overlap of the content-word sets (stopwords and archaic function "
      "words such as thee, hath removed); the WEB verse is the same verse or one 1-3 away, "
      "half each | Pearson, Spearman |",
      "",
      "Files: `<task>/{train,validation,test}.tsv.gz`, gzipped TSV (tab separated, no "
      "quoting) with a header; `id` is the verse key(s), e.g. `kjv/Genesis 1:3` or "
      "`Genesis 1:3|Genesis 1:5`. The test files carry their labels.",
      "",
      "Splits: a stable hash of the chapter (`Book chapter`, the same for both "
      "translations) puts 80% of the chapters in train, 10% in validation and 10% in test; "
      "verse texts that occur in chapters of two splits are dropped, so no text is shared "
      "between splits. Verses of 30-200 characters only; pairs within a factor 2 in length.",
      "",
      "The embedded pretraining corpus (`../embedded`) holds every chapter of these two "
      "Bibles, so a model pretrained on it has seen the suite's text (never its labels).",
      "",
      "## Sizes, label balance and majority-class baselines",
      "",
      "| task | split | examples | label counts | majority baseline (%) | gzip bytes |",
      "|---|---|---|---|---|---|",
  ]
  total = 0
  for name, entry in manifest["tasks"].items():
    for split, s in entry["splits"].items():
      total += s["bytes"]
      if entry["kind"] == "classification":
        counts = ", ".join(f"{k} {v}" for k, v in s["label_counts"].items())
        baseline = f"{s['majority_baseline']:.2f}"
      else:
        counts = (f"score mean {s['score_mean']:.3f}, std {s['score_std']:.3f}, "
                  f"range {s['score_min']:.3f}-{s['score_max']:.3f}")
        baseline = "n/a (regression)"
      lines.append(f"| offline_{name} | {split} | {s['examples']} | {counts} | {baseline} | "
                   f"{s['bytes']} |")
  lines += [
      "",
      f"Data files together: {total} bytes. Every classification split is exactly balanced, "
      "so its majority baseline is 50%. A regression baseline that predicts a constant has "
      "no defined correlation (Pearson/Spearman 0 in expectation).",
      "",
      "## Rebuild",
      "",
      "```",
      "apt-get install -y bible-kjv sword-text-web diatheke",
      "python -m lmlab.data.build_offline_suite",
      "```",
      "",
      "The build is deterministic (sorted iteration, fixed seeds, gzip with mtime 0): it "
      "rewrites these files byte for byte (`manifest.json` and this README included).",
      "",
  ]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", type=pathlib.Path, default=ASSET_DIR)
  args = parser.parse_args()
  files = build(Bible(list(kjv_verses()), list(web_verses())))
  for path, data in sorted(files.items()):
    target = args.out_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"{len(data):8d} bytes  {target}")


if __name__ == "__main__":
  main()
