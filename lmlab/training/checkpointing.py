"""The one owner of lmlab's checkpoint layout, used by every run mode.

Under a run's ``MODEL_DIR``::

  checkpoints/<step>/state   the whole train state (orbax)
  checkpoints/<step>/data    this process's data position (tf.train.Checkpoint)
  corrupt_checkpoints/       steps that failed to load, moved aside (never deleted)
  best/<step>/params         parameters of the best evaluation so far (fine-tuning)
  best.json                  its step, metric name and score

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
import json
import logging
import os
import shutil
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

logger = logging.getLogger(__name__)


class CheckpointShapeError(ValueError):
  """A checkpoint in MODEL_DIR was written by a model of another shape."""


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores a tf.data iterator's position with ``tf.train.Checkpoint``."""

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only runs with a tf.data input)
    directory.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(iterator=args.iterator).write(
        os.fspath(directory / f"process_{jax.process_index()}"))

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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


# ---------------------------------------------------------------------------
# Parameters only: initialising from another run, and the best checkpoint.


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(model_dir, "checkpoints")


def latest_step(model_dir: str) -> Optional[int]:
  """The newest finished checkpoint step of the run in ``model_dir`` (None if there is none)."""
  directory = checkpoint_dir(model_dir)
  if not os.path.isdir(directory):
    return None
  steps = [int(name) for name in os.listdir(directory)
           if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state"))]
  return max(steps) if steps else None


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def load_params(model_dir: str, step: Optional[int] = None, *,
                what: str = "FinetuneConfig.init_checkpoint_dir") -> tuple[int, dict]:
  """``(step, params)`` of the run in ``model_dir`` (newest step by default), as host numpy arrays.

  Only the parameters are returned; the optimizer state is read but dropped,
  so any optimizer configuration can start from them.

  Raises:
    FileNotFoundError: ``model_dir`` has no checkpoint (or not ``step``).
    ValueError: The checkpoint cannot be read (corrupt or not an lmlab state).
  """
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"Model directory {model_dir} does not exist: point {what} at the "
                            "MODEL_DIR of an lmlab run.")
  step = latest_step(model_dir) if step is None else step
  path = os.path.join(checkpoint_dir(model_dir), str(step), "state")
  if step is None or not os.path.isdir(path):
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in "
                            f"{checkpoint_dir(model_dir)}: pretrain first (--run_mode=train) or "
                            f"point {what} at a run that has one.")
  try:
    state = ocp.StandardCheckpointer().restore(path)
  except Exception as error:  # noqa: BLE001 - orbax raises many types for unreadable data
    raise ValueError(f"Checkpoint {path} cannot be read ({type(error).__name__}: {error}); it may "
                     "be corrupt or incomplete. Pick another step (e.g. "
                     "FinetuneConfig.init_checkpoint_step).") from error
  if not isinstance(state, Mapping) or "params" not in state:
    raise ValueError(f"Checkpoint {path} holds no 'params': it is not an lmlab train state.")
  return int(step), _to_numpy(state["params"])


def best_dir(model_dir: str) -> str:
  return os.path.join(model_dir, "best")


def _best_manager(model_dir: str) -> ocp.CheckpointManager:
  """Orbax keeps the one best step under ``best/`` by its recorded score (higher is better)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda metrics: metrics["score"], best_mode="max",
      keep_checkpoints_without_metrics=False, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(best_dir(model_dir), options=options, item_names=("params",))


def read_best(model_dir: str) -> Optional[dict]:
  """``{"step", "metric", "score"}`` of the best checkpoint so far, or None."""
  path = os.path.join(model_dir, "best.json")
  if not os.path.exists(path) or not os.path.isdir(best_dir(model_dir)):
    return None
  with open(path, encoding="utf-8") as f:
    best = json.load(f)
  return best if os.path.isdir(os.path.join(best_dir(model_dir), str(best["step"]))) else None


def save_best(model_dir: str, step: int, metric: str, score: float, params: Any) -> None:
  """Makes ``params`` the best checkpoint (collective: every process calls it).

  Orbax writes the new step atomically and only then drops the old one;
  ``best.json`` names the step and its score.
  """
  manager = _best_manager(model_dir)
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
               metrics={"score": float(score)}, force=True)
  manager.wait_until_finished()
  manager.close()
  if jax.process_index() == 0:
    write_json(os.path.join(model_dir, "best.json"),
               {"step": int(step), "metric": metric, "score": float(score)})


def restore_best(model_dir: str, like: Any) -> Any:
  """The best parameters, placed like the arrays of ``like`` (same shardings)."""
  best = read_best(model_dir)
  if best is None:
    raise FileNotFoundError(f"No best checkpoint in {best_dir(model_dir)}.")
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
  manager = _best_manager(model_dir)
  restored = manager.restore(best["step"], args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))
  manager.close()
  return restored["params"]


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, default=float)
    f.write("\n")
  os.replace(tmp, path)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
