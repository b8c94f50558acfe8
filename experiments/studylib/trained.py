"""Reading a finished pretraining run back, for a study's measure script.

A run's MODEL_DIR holds ``config.operative.gin`` (every binding the run used)
and its checkpoints. ``load_run`` parses the gin file into a fresh gin
config (lmlab's configurables registered by importing ``lmlab.main``) and
returns what a measurement needs: the network config as the run built it, the
newest parameters and the run's data settings.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import gin


@dataclasses.dataclass
class TrainedRun:
  model_dir: pathlib.Path
  step: int
  params: Any  # plain nested dict of host arrays
  values: dict[str, Any]  # single-line ``NAME = literal`` bindings of config.operative.gin
  network: Any  # the EncoderConfig / T5Config the run built

  @property
  def task(self) -> Optional[str]:
    return self.values.get("DataConfig.mixture_or_task_name")


def load_run(model_dir: pathlib.Path, network: str) -> TrainedRun:
  """Parses the run's gin config, builds the configurable ``network`` (e.g. ``'T5Config'``), loads params.

  The network config is built while the run's bindings are active, so it is
  exactly as bound; an unbound ``vocab_size`` (filled from the task at run
  time) is taken from the embedding table.
  """
  import lmlab.configurables  # pylint: disable=import-outside-toplevel,unused-import  # registers configurables
  import lmlab.main  # pylint: disable=import-outside-toplevel,unused-import
  from lmlab.training import checkpointing  # pylint: disable=import-outside-toplevel
  from studylib.collect import operative_values  # pylint: disable=import-outside-toplevel

  model_dir = pathlib.Path(model_dir)
  gin_file = model_dir / "config.operative.gin"
  if not gin_file.exists():
    raise FileNotFoundError(f"{gin_file} is missing: {model_dir} is not a finished lmlab run.")
  gin.clear_config()
  try:
    gin.parse_config_file(str(gin_file), skip_unknown=True)
    config = gin.get_configurable(network)()
  finally:
    gin.clear_config()
  step, params = checkpointing.load_params(str(model_dir), what="--model_dir")
  embedder = _find(params, "token_embedder")
  embedding = embedder.get("embedding") if isinstance(embedder, dict) else None
  if getattr(config, "vocab_size", 0) is None and embedding is not None:
    config = dataclasses.replace(config, vocab_size=int(embedding.shape[0]))
  return TrainedRun(model_dir, step, params, operative_values(gin_file), config)


def _find(tree: Any, key: str) -> Any:
  """The first value named ``key`` in a nested dict (depth first)."""
  if isinstance(tree, dict):
    if key in tree:
      return tree[key]
    for sub in tree.values():
      found = _find(sub, key)
      if found is not None:
        return found
  return None


def write_measures(path: pathlib.Path, values: dict[str, float]) -> None:
  """The measure script's output: a JSON object of numbers."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(values, indent=1), encoding="utf-8")
  print(json.dumps(values, indent=1))
