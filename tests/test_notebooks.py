"""Executes the Colab notebooks on CPU with a short run."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

COLAB_DIR = pathlib.Path(__file__).resolve().parent.parent / "colab"


def _execute(name: str, monkeypatch, timeout: int, **env: str) -> None:
  """Runs every cell of ``colab/<name>`` in a fresh kernel that imports this checkout."""
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  repo = str(COLAB_DIR.parent)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
  notebook = nbformat.read(COLAB_DIR / name, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": str(COLAB_DIR)}})
  client.execute()


@pytest.mark.slow  # executes the whole notebook (about 80 s on 2 cores)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  _execute("quickstart.ipynb", monkeypatch, 600, LMLAB_NOTEBOOK_STEPS="20",
           LMLAB_NOTEBOOK_MODEL_DIR=str(tmp_path), MPLBACKEND="Agg")
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/loss" in r for r in records) and any("train/loss" in r for r in records)
  assert (tmp_path / "loss_curves.png").stat().st_size > 1000
  rows = (tmp_path / "inference" / "fill_mask.jsonl").read_text().splitlines()
  assert len(rows) == 2 and all("<mask>" not in json.loads(r)["filled"] for r in rows)


@pytest.mark.slow  # builds a small BERT, fine-tunes it for an epoch, exports it (about 40 s)
def test_finetune_released_checkpoint_notebook_runs(tmp_path, monkeypatch):
  _execute("finetune_released_checkpoint.ipynb", monkeypatch, 900,
           LMLAB_NOTEBOOK_DIR=str(tmp_path), LMLAB_NOTEBOOK_EPOCHS="1")
  report = json.loads((tmp_path / "agreement.json").read_text())
  assert report["rows"] == 100 and len(report["labels"]) == 100
  assert report["agreement"] == 1.0  # the exported model predicts every test row as lmlab did
  assert (tmp_path / "finetune" / "summary.md").exists()
