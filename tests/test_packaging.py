"""A built wheel carries every gin file, and an installed copy finds them.

Gin files are not Python package data: ``setup.cfg`` ships them as
``data_files`` under ``<prefix>/share/lmlab/gin``, one line per folder, and
``lmlab.main.default_gin_search_paths`` looks there. A folder missing from
that list is invisible in a checkout (the repo's ``gin/`` is searched first)
and only breaks a real install, so these tests check the list, the wheel and
the installed layout.
"""

from __future__ import annotations

import configparser
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import gin
import pytest

from lmlab import main as cli

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO_ROOT / "gin"
GIN_FILES = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*") if p.is_file())
INSTALLED_GIN = "share/lmlab/gin"
WHEEL_GIN = re.compile(r"^lmlab-[^/]+\.data/data/" + INSTALLED_GIN + r"/(.+)$")

# Build outputs and local state that must not leak into the copy the wheel is built from.
_SKIP_AT_ROOT = {".git", ".venv", "build", "dist", "runs", ".whl"}
_SKIP_ANYWHERE = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}


def _data_files() -> dict[str, list[str]]:
  parser = configparser.ConfigParser()
  parser.read(REPO_ROOT / "setup.cfg")
  section = parser["options.data_files"]
  return {dest: value.split() for dest, value in section.items()}


def test_setup_cfg_ships_every_gin_folder():
  """One ``data_files`` line per folder of gin/, each taking that folder's gin files."""
  assert GIN_FILES, f"no gin files under {GIN_DIR}"
  not_gin = [f for f in GIN_FILES if not f.endswith(".gin")]
  assert not not_gin, f"only *.gin files are shipped; these are not: {not_gin}"
  folders = sorted({pathlib.PurePosixPath(f).parent.as_posix() for f in GIN_FILES})
  expected = {f"{INSTALLED_GIN}/{folder}": [f"gin/{folder}/*.gin"] for folder in folders}
  listed = {dest: globs for dest, globs in _data_files().items() if dest.startswith(INSTALLED_GIN)}
  assert listed == expected, (
      "setup.cfg [options.data_files] must list every folder of gin/ as\n  "
      + "\n  ".join(f"{dest} = {globs[0]}" for dest, globs in expected.items()))


def _ignore_build_outputs(folder: str, names: list[str]) -> set[str]:
  skip = _SKIP_ANYWHERE | (_SKIP_AT_ROOT if pathlib.Path(folder) == REPO_ROOT else set())
  return {n for n in names if n in skip or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """A wheel built from a clean copy of the source tree (no stale build/ folder can leak in)."""
  source = tmp_path_factory.mktemp("source") / "lmlab"
  shutil.copytree(REPO_ROOT, source, ignore=_ignore_build_outputs)
  out = tmp_path_factory.mktemp("wheel")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
       "--no-index", "-q", "-w", str(out)],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, (
      f"pip wheel failed (it needs setuptools>=70.1 in this environment):\n{proc.stderr[-3000:]}")
  wheels = list(out.glob("lmlab-*.whl"))
  assert len(wheels) == 1, wheels
  return wheels[0]


def test_wheel_contains_every_gin_file(wheel):
  with zipfile.ZipFile(wheel) as archive:
    shipped = sorted(m.group(1) for m in map(WHEEL_GIN.match, archive.namelist()) if m)
  assert shipped == GIN_FILES, {"missing": sorted(set(GIN_FILES) - set(shipped)),
                                "unexpected": sorted(set(shipped) - set(GIN_FILES))}


def test_installed_gin_files_resolve_from_the_prefix(wheel, tmp_path, monkeypatch):
  """Installed layout: the wheel's data under sys.prefix and no checkout's gin/ to fall back on."""
  prefix = tmp_path / "prefix"
  with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
      if WHEEL_GIN.match(name):
        target = prefix / name.split("/data/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(name))
  monkeypatch.setattr(sys, "prefix", str(prefix))
  # As if lmlab/main.py lived in site-packages, next to the gin-config package (also
  # called gin): neither the checkout's gin/ nor that package may be searched.
  site_packages = tmp_path / "site-packages"
  (site_packages / "gin").mkdir(parents=True)
  (site_packages / "gin" / "__init__.py").write_text("")
  monkeypatch.setattr(cli, "__file__", str(site_packages / "lmlab" / "main.py"))
  assert cli.default_gin_search_paths() == [str(prefix / INSTALLED_GIN)]

  # gin keeps one process-wide list of search paths; start this test from an empty one
  # (and a cwd without gin files) so that only the installed copy can answer.
  monkeypatch.setattr(gin.config, "_LOCATION_PREFIXES", [""])
  monkeypatch.chdir(tmp_path)
  bindings = [f"MODEL_DIR = '{tmp_path}/run'", f"PRETRAINED_DIR = '{tmp_path}/pretrained'"]
  for name in GIN_FILES:
    gin.clear_config(clear_constants=True)
    cli.parse_gin([name], bindings, [])  # includes resolve through the search path too
    assert gin.config_str().strip(), f"{name} bound nothing"
