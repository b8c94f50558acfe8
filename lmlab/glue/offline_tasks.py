"""The offline downstream suite: small GLUE-shaped tasks shipped inside lmlab.

Five labelled tasks built from two public-domain Bible translations
(``lmlab.data.build_offline_suite`` rebuilds them; sizes, label balance and
baselines are in ``lmlab/data/assets/offline/README.md``), so fine-tuning is
evaluated with no network and no TFDS download:

==========================  ===============  ====================================
task                        shape            labels
==========================  ===============  ====================================
``offline_translation``     single sentence  kjv / web (which translation)
``offline_testament``       single sentence  old / new (which Testament)
``offline_paraphrase``      sentence pair    not_equivalent / equivalent
``offline_order``           sentence pair    swapped / in_order
``offline_overlap``         pair regression  0-5 content-word overlap
==========================  ===============  ====================================

Each is a :class:`lmlab.glue.file_tasks.FileTask` over the shipped files, so
it is fine-tuned exactly like a GLUE task (heads, seeds, best checkpoint,
summary, prediction files). Naming one in ``FinetuneConfig.tasks``, or
``offline`` for all of them, is enough: ``FinetuneConfig`` adds the
matching tasks to its ``file_tasks`` (:func:`with_offline_tasks`) and expands
``offline`` (:func:`expand`).

Their ``TaskSpec.benchmark`` is ``file``, not ``offline``: ``lmlab.glue.tasks``
and ``lmlab.glue.leaderboard`` pick the file reader and the prediction-file
format by ``benchmark == "file"``. Membership of the suite is ``TASK_NAMES``.

The data ship gzipped; the first use decompresses them into a cache folder
named by the archives' digest (``$LMLAB_CACHE_DIR``, default
``~/.cache/lmlab``, or a temporary folder where that cannot be written), so
a changed suite never reads stale files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Iterable, Sequence

from lmlab.glue.file_tasks import FileTask

logger = logging.getLogger(__name__)

SUITE = "offline"
ASSET_DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "assets" / "offline"
SPLITS = ("train", "validation", "test")
# Short name -> (text fields, label names; () for regression, metrics). Order: the suite's.
_TASKS = {
    "translation": (("sentence",), ("kjv", "web"), ("accuracy",)),
    "testament": (("sentence",), ("old", "new"), ("accuracy",)),
    "paraphrase": (("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                   ("accuracy", "f1")),
    "order": (("sentence1", "sentence2"), ("swapped", "in_order"), ("accuracy", "f1")),
    "overlap": (("sentence1", "sentence2"), (), ("pearson", "spearman")),
}
TASK_NAMES = tuple(f"{SUITE}_{name}" for name in _TASKS)


def manifest() -> dict:
  """The shipped ``manifest.json``: per task and split, examples, label counts, baselines."""
  path = ASSET_DIR / "manifest.json"
  if not path.is_file():
    raise FileNotFoundError(f"The offline suite is missing: no {path}. Reinstall lmlab, or "
                            "rebuild it with python -m lmlab.data.build_offline_suite.")
  return json.loads(path.read_text(encoding="utf-8"))


def archive(name: str, split: str) -> pathlib.Path:
  """The shipped gzipped TSV of task ``name`` (``offline_order`` or ``order``) and ``split``."""
  short = name.removeprefix(f"{SUITE}_")
  if short not in _TASKS:
    raise ValueError(f"No offline task {name!r}; the suite has {list(TASK_NAMES)}.")
  path = ASSET_DIR / short / f"{split}.tsv.gz"
  if not path.is_file():
    raise FileNotFoundError(f"The offline suite file {path} is missing. Reinstall lmlab, or "
                            "rebuild it with python -m lmlab.data.build_offline_suite.")
  return path


def _cache_root() -> pathlib.Path:
  root = os.environ.get("LMLAB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "lmlab")
  return pathlib.Path(root)


@functools.lru_cache(maxsize=None)
def data_dir() -> str:
  """A folder holding ``<task>/<split>.tsv``, the shipped archives decompressed (once)."""
  archives = [archive(name, split) for name in _TASKS for split in SPLITS]
  digest = hashlib.sha256()
  for path in archives:
    digest.update(path.relative_to(ASSET_DIR).as_posix().encode() + b"\0" + path.read_bytes())
  for root in (_cache_root(), pathlib.Path(tempfile.gettempdir()) / f"lmlab-{os.getuid()}"):
    target = root / f"offline_{digest.hexdigest()[:16]}"
    try:
      for path in archives:
        out = target / path.relative_to(ASSET_DIR).with_suffix("")  # .tsv.gz -> .tsv
        if not out.is_file():
          out.parent.mkdir(parents=True, exist_ok=True)
          partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
          partial.write_bytes(gzip.decompress(path.read_bytes()))
          os.replace(partial, out)  # atomic: a concurrent reader sees all of it or nothing
      return str(target)
    except OSError as e:
      logger.warning("Cannot decompress the offline suite into %s (%s); trying elsewhere.",
                     target, e)
  raise OSError("Cannot decompress the offline suite anywhere; set LMLAB_CACHE_DIR to a "
                "writable folder.")


def file_task(name: str) -> FileTask:
  """The ``FileTask`` of offline task ``name`` (``offline_paraphrase``)."""
  short = name.removeprefix(f"{SUITE}_")
  if short not in _TASKS:
    raise ValueError(f"No offline task {name!r}; the suite has {list(TASK_NAMES)}.")
  text_fields, label_names, metrics = _TASKS[short]
  return FileTask(
      name=f"{SUITE}_{short}", train=f"{short}/train.tsv", validation=f"{short}/validation.tsv",
      test=f"{short}/test.tsv", format="tsv", text_fields=text_fields, label_field="label",
      kind="regression" if not label_names else "classification",
      label_names=label_names or None, metrics=metrics, id_field="id", data_dir=data_dir())


def expand(names: Iterable[str]) -> list[str]:
  """``names`` with ``offline`` replaced by every task of the suite, in place."""
  out = []
  for name in names:
    out += TASK_NAMES if name == SUITE else [name]
  return out


def with_offline_tasks(tasks: Sequence[str] | str,
                       file_tasks: Sequence[FileTask]) -> tuple[FileTask, ...]:
  """``file_tasks`` plus the offline tasks that ``tasks`` names and ``file_tasks`` lacks.

  A file task of the same name that the researcher defined wins. The suite's
  files are only decompressed when one of its tasks is named.
  """
  names = expand([tasks] if isinstance(tasks, str) else list(tasks))
  defined = {getattr(t, "name", None) for t in file_tasks}
  wanted = [n for n in names if n in TASK_NAMES and n not in defined]
  return tuple(file_tasks) + tuple(file_task(n) for n in wanted)
