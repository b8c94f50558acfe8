"""Checkpoints: train state and data-iterator position, saved atomically by orbax.

A checkpoint is one orbax step directory with two items:
* ``state``: the train state pytree (params, optimizer state, step, RNG key
  data), written with orbax's standard (optionally async) handler;
* ``data``: the tf.data iterator position of this process, written with
  ``tf.train.Checkpoint`` so a resumed run sees exactly the batches an
  uninterrupted run would.

Orbax writes into a temporary directory and renames it when complete, so a
crash never leaves a half-written step that looks finished. On restore, a
step that fails to load is moved aside to ``corrupt_checkpoints/`` (kept,
never overwritten) and the previous step is tried.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath

logger = logging.getLogger(__name__)


class CheckpointShapeError(ValueError):
  """A checkpoint in MODEL_DIR was written by a model of another shape."""


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores a tf.data iterator's position with ``tf.train.Checkpoint``."""

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(iterator=args.iterator).write(
        os.fspath(directory / f"process_{jax.process_index()}"))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    prefix = os.fspath(directory / f"process_{jax.process_index()}")
    tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


class Checkpointer:
  """Periodic, keep-last-N checkpoints of train state plus data position."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_iterator: Any = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = DataIteratorSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def check_shapes(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointShapeError if ``step`` holds parameters of other shapes.

    Only parameters are compared: they define the model, and their tree is a
    plain nested dict both in the checkpoint metadata and in the live state.
    """
    try:
      saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
      saved = getattr(saved, "tree", saved)["params"]
    except Exception:  # pylint: disable=broad-except
      return  # unreadable metadata: restore decides whether the step is corrupt
    saved_shapes, model_shapes = _leaf_shapes(saved), _leaf_shapes(abstract_state.params)
    problems = [f"params{k}: checkpoint {saved_shapes[k]} vs model {v}"
                for k, v in model_shapes.items() if k in saved_shapes and saved_shapes[k] != v]
    problems += [f"params{k}: only in the {'model' if k in model_shapes else 'checkpoint'}"
                 for k in sorted(set(model_shapes) ^ set(saved_shapes))]
    if problems:
      raise CheckpointShapeError(
          f"The checkpoint at {self.directory / str(step)} was written by a model of another shape "
          f"({len(problems)} mismatches), e.g.\n  " + "\n  ".join(problems[:5]) +
          "\nUse a fresh MODEL_DIR (--gin.MODEL_DIR=...) for this model, or run with the model "
          "config the checkpoint was trained with (see config.gin in MODEL_DIR).")

  def restore_latest(self, abstract_state: Any, data_iterator: Any = None) -> tuple[Optional[int], Any]:
    """Restores the newest loadable step, moving unloadable ones aside.

    Returns:
      ``(step, state)``, or ``(None, None)`` when there is no loadable checkpoint.
    """
    for step in reversed(self.all_steps()):
      self.check_shapes(step, abstract_state)
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = DataIteratorRestore(data_iterator)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        self._quarantine(step, e)
        continue
      return step, restored["state"]
    return None, None

  def _quarantine(self, step: int, error: Exception) -> None:
    bad_dir = self.directory.parent / "corrupt_checkpoints"
    bad_dir.mkdir(parents=True, exist_ok=True)
    target = bad_dir / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
      shutil.move(os.fspath(self.directory / str(step)), os.fspath(target))
    logger.warning("Checkpoint step %d could not be restored (%s: %s); moved it to %s and "
                   "falling back to the previous checkpoint.", step, type(error).__name__,
                   str(error).splitlines()[0] if str(error) else "", target)
    self._manager.reload()
