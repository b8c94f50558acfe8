"""The package's folders are its architecture: imports only go down, never in a circle.

Walks every module of ``lmlab`` and ``pallas_kernels`` with ``ast`` (nothing is
imported) and checks two rules:

* no import cycles between lmlab modules (function-local imports count too:
  a lazy import still ties two modules together);
* each room imports only itself and the rooms below it (``LAYERS``); in
  particular the networks in ``lmlab/models`` know nothing of training, data,
  gin or GLUE.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Room -> the rooms it may import (besides itself). Top-level modules of
# lmlab (main, runs, configurables, inference) form the room "lmlab".
LAYERS = {
    "pallas_kernels": set(),
    "lmlab.models": {"pallas_kernels"},
    "lmlab.wrappers": {"lmlab.models", "pallas_kernels"},
    "lmlab.data": set(),
    # The trainer drives wrappers; it never reaches into a network (an optimizer that
    # knew the SSM's parameter names was such an import).
    "lmlab.training": {"lmlab.wrappers"},
    "lmlab.convert": {"lmlab.models", "lmlab.training"},
    "lmlab.glue": {"lmlab.data", "lmlab.training", "lmlab.wrappers", "lmlab.models",
                   "lmlab.convert", "pallas_kernels"},
    "lmlab": {"lmlab.glue", "lmlab.data", "lmlab.training", "lmlab.wrappers", "lmlab.models",
              "lmlab.convert", "pallas_kernels"},
}
# Third-party packages a room must not use (networks stay free of training and data machinery).
FORBIDDEN_PACKAGES = {
    "lmlab.models": {"gin", "optax", "orbax", "clu", "seqio", "tensorflow", "tensorflow_datasets"},
    "lmlab.wrappers": {"seqio", "tensorflow", "tensorflow_datasets", "orbax"},
    "pallas_kernels": {"gin", "optax", "orbax", "clu", "seqio", "tensorflow", "flax"},
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _room(module: str) -> str:
  parts = module.split(".")
  if parts[0] == "pallas_kernels":
    return "pallas_kernels"
  if len(parts) >= 3 or (len(parts) == 2 and f"lmlab.{parts[1]}" in LAYERS):
    return f"lmlab.{parts[1]}"
  return "lmlab"


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """Every module named by an import statement in ``path`` (absolute names)."""
  names = set()
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
  files = [p for root in ("lmlab", "pallas_kernels") for p in (REPO_ROOT / root).rglob("*.py")]
  modules = {_module_name(p): p for p in files}
  graph = {}
  for name, path in modules.items():
    targets = {t for t in _imports(path, name) if t in modules}
    # A package handing on its own submodules is not a cycle.
    graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
  graph["__third_party__"] = set()
  for name, path in modules.items():
    for target in _imports(path, name):
      top = target.split(".")[0]
      if top not in ("lmlab", "pallas_kernels"):
        graph["__third_party__"].add(f"{name}->{top}")
  return graph


def test_no_import_cycles(import_graph):
  graph = {k: v for k, v in import_graph.items() if k != "__third_party__"}
  cycles, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
      elif target not in state:
        visit(target, stack + [target])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_rooms_import_only_downwards(import_graph):
  upward = []
  for module, targets in import_graph.items():
    if module == "__third_party__":
      continue
    room = _room(module)
    allowed = LAYERS[room] | {room}
    upward += [f"{module} imports {t} ({_room(t)})" for t in sorted(targets)
               if _room(t) not in allowed]
  assert not upward, "imports reaching up a layer:\n  " + "\n  ".join(upward)


def test_networks_and_kernels_use_no_training_or_data_libraries(import_graph):
  bad = []
  for edge in sorted(import_graph["__third_party__"]):
    module, package = edge.split("->")
    if package in FORBIDDEN_PACKAGES.get(_room(module), set()):
      bad.append(f"{module} imports {package}")
  assert not bad, "\n".join(bad)


def test_every_room_is_known():
  rooms = {p.name for p in (REPO_ROOT / "lmlab").iterdir()
           if p.is_dir() and (p / "__init__.py").exists()}
  assert {f"lmlab.{r}" for r in rooms} <= set(LAYERS), (
      f"a new folder in lmlab/ needs its place in LAYERS: {sorted(rooms)}")
