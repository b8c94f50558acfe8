"""Every gin file parses, finalizes, and builds its model (init + one forward pass)."""

from __future__ import annotations

import dataclasses
import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab import main as cli
from lmlab.model_wrappers import MaskedLMModel
from lmlab.optimizers import OptimizerConfig
from lmlab.run_config import DataConfig, TrainConfig

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"
MODEL_FILES = sorted((GIN_DIR / "models").glob("*.gin"))
RUN_FILES = sorted((GIN_DIR / "runs").glob("*.gin"))


def test_gin_folders_are_not_empty():
  assert len(MODEL_FILES) >= 5 and len(RUN_FILES) >= 2


def _build_and_forward(model: MaskedLMModel, length: int = 16) -> None:
  model = model.with_vocab_size(8192)
  params = jax.jit(lambda r: nn.meta.unbox(model.init(r, 1, length)))(jax.random.PRNGKey(0))
  ids = np.arange(1, length + 1, dtype=np.int32)[None] % 8000 + 4
  batch = {"input_ids": ids, "segment_ids": np.ones_like(ids), "positions": np.arange(length)[None]}
  logits = jax.jit(model.apply)(params, batch)
  assert logits.shape == (1, length, model.config.vocab_size)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_model_file_builds(path):
  """Full-depth shapes via eval_shape; a real init + forward at the preset's width.

  Depth is cut to 2 for the real init: every layer is built by the same code,
  and initialising hundreds of millions of parameters on a 2-core CI machine
  would only test the random number generator.
  """
  cli.parse_gin([str(path)], ["MaskedLMModel.config = @EncoderConfig()"], [])
  model = MaskedLMModel().with_vocab_size(8192)
  shapes = jax.eval_shape(lambda r: model.init(r, 1, 16), jax.random.PRNGKey(0))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert num_params > model.config.num_layers * model.config.d_model**2
  shallow = dataclasses.replace(model.config, num_layers=min(model.config.num_layers, 2))
  _build_and_forward(MaskedLMModel(shallow))


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_run_file_builds(path, tmp_path):
  cli.parse_gin(["models/tiny.gin", str(path)], [f"MODEL_DIR = '{tmp_path}'"], [])
  data, train, optimizer = DataConfig(), TrainConfig(), OptimizerConfig()
  assert data.mixture_or_task_name.startswith("lmlab.")
  assert train.train_steps > 0 and optimizer.learning_rate > 0
  model = gin.query_parameter("run.model").scoped_configurable_fn()
  assert isinstance(model, MaskedLMModel)
  _build_and_forward(model)
