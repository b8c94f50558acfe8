"""Every gin file parses, finalizes and builds its model (init + one forward pass); every gin file the docs name exists."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmlab import main as cli
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.training.optimizers import OptimizerConfig
from lmlab.training.config import DataConfig, TrainConfig

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"
MODEL_FILES = sorted((GIN_DIR / "models").glob("*.gin"))
RUN_FILES = sorted((GIN_DIR / "runs").glob("*.gin"))
OTHER_FILES = sorted((GIN_DIR / "optimizers").glob("*.gin")) + sorted(
    (GIN_DIR / "partitioning").glob("*.gin")) + sorted((GIN_DIR / "precision").glob("*.gin"))


def _is_t5(path: pathlib.Path) -> bool:
  text = path.read_text()
  return "T5Config." in text or "span_corruption.gin" in text


def test_gin_folders_are_not_empty():
  assert len(MODEL_FILES) >= 13 and len(RUN_FILES) >= 6 and OTHER_FILES


def _build_and_forward_t5(model: EncoderDecoderModel) -> None:
  model = model.with_vocab_size(300)
  params = jax.jit(lambda r: nn.meta.unbox(model.init(r, 1)))(jax.random.PRNGKey(0))
  ids = np.arange(3, 15, dtype=np.int32)[None]
  logits, _ = jax.jit(lambda p: model.module.apply({"params": p}, ids, ids[:, :5]))(params)
  assert logits.shape == (1, 5, model.config.vocab_size)
  assert bool(jnp.all(jnp.isfinite(logits)))


def _build_and_forward(model, length: int = 16) -> None:
  if isinstance(model, EncoderDecoderModel):
    _build_and_forward_t5(model)
    return
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
  if _is_t5(path):
    cli.parse_gin([str(path)], ["EncoderDecoderModel.config = @T5Config()"], [])
    model = EncoderDecoderModel().with_vocab_size(300)
    cfg = model.config
    depth = cfg.num_encoder_layers + cfg.num_decoder_layers
    shallow = dataclasses.replace(
        cfg, num_encoder_layers=min(cfg.num_encoder_layers, 2),
        num_decoder_layers=min(cfg.num_decoder_layers, 1),
        delete_gate_layer=None if cfg.delete_gate_layer is None else 1)
    small = EncoderDecoderModel(shallow, deletion=model.deletion if shallow.delete_gate_layer else None)
  else:
    cli.parse_gin([str(path)], ["MaskedLMModel.config = @EncoderConfig()"], [])
    model = MaskedLMModel().with_vocab_size(8192)
    depth = model.config.num_layers
    small = MaskedLMModel(dataclasses.replace(model.config, num_layers=min(depth, 2)))
  shapes = jax.eval_shape(lambda r: model.init(r, 1, 16), jax.random.PRNGKey(0))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert num_params > depth * model.config.d_model**2
  _build_and_forward(small)


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_run_file_builds(path, tmp_path):
  t5 = _is_t5(path)
  cli.parse_gin(["models/t5_tiny.gin" if t5 else "models/tiny.gin", str(path)],
                [f"MODEL_DIR = '{tmp_path}'"], [])
  data, train, optimizer = DataConfig(), TrainConfig(), OptimizerConfig()
  assert data.mixture_or_task_name.startswith("lmlab.")
  assert train.train_steps > 0 and optimizer.learning_rate > 0
  model = gin.query_parameter("run.model").scoped_configurable_fn()
  assert isinstance(model, EncoderDecoderModel if t5 else MaskedLMModel)
  if t5:
    assert set(data.feature_lengths) == {"inputs", "targets"}
  _build_and_forward(model)


@pytest.mark.parametrize("path", OTHER_FILES, ids=lambda p: p.name)
def test_optimizer_and_partitioning_files_parse(path, tmp_path):
  cli.parse_gin(["runs/quickstart.gin", str(path)], [f"MODEL_DIR = '{tmp_path}'"], [])
  optimizer = OptimizerConfig()
  assert optimizer.learning_rate > 0


FINETUNE_FILES = sorted((GIN_DIR / "finetune").glob("*.gin"))


@pytest.mark.parametrize("path", FINETUNE_FILES, ids=lambda p: p.name)
def test_finetune_file_names_real_tasks_and_fields(path, tmp_path):
  from lmlab.glue import spec as glue_spec  # pylint: disable=import-outside-toplevel
  from lmlab.glue.config import FinetuneConfig, for_task  # pylint: disable=import-outside-toplevel
  from lmlab.training.config import TrainConfig  # pylint: disable=import-outside-toplevel
  from lmlab.training.optimizers import OptimizerConfig  # pylint: disable=import-outside-toplevel
  t5 = "T5Config" in path.read_text()
  cli.parse_gin(["models/t5_tiny.gin" if t5 else "models/tiny.gin", str(path)],
                [f"MODEL_DIR = '{tmp_path}'", f"PRETRAINED_DIR = '{tmp_path}/pretrained'"], [])
  config = FinetuneConfig()
  names = config.task_names()
  assert names and all(n in glue_spec.TASKS for n in names)
  for name in config.per_task:
    assert name in names
    # Overrides name real fields of the three configs.
    task_config, train, optimizer = for_task(name, config, TrainConfig(), OptimizerConfig())
    assert task_config.epochs > 0 and train.batch_size > 0 and optimizer.learning_rate > 0
  assert TrainConfig().model_dir == str(tmp_path)
  assert config.init_checkpoint_dir == f"{tmp_path}/pretrained"
  assert type(config.network).__name__ == ("T5Config" if t5 else "EncoderConfig")


# A gin file named in the docs, the CLI help or another gin file's comments, as
# `folder/name.gin` or `gin/folder/name.gin`.
_GIN_REFERENCE = re.compile(r"(?<![\w/.-])(?:gin/)?([a-z0-9_]+/[a-z0-9_]+\.gin)\b")


def test_gin_files_named_in_docs_and_help_exist():
  repo = GIN_DIR.parent
  sources = {"lmlab.main --help": cli.build_parser().format_help()}
  # Text sources only: study runs may leave checkpoints and logs under experiments/.
  for pattern in ("README.md", "docs/*.md", "lmlab/**/*.py", "gin/**/*.gin", "experiments/**/*.py",
                  "experiments/**/*.gin", "experiments/**/*.md", "experiments/**/*.sh",
                  "colab/*.ipynb"):
    for path in repo.glob(pattern):
      if path.is_file():
        sources[str(path.relative_to(repo))] = path.read_text(encoding="utf-8", errors="replace")
  missing = sorted({(where, name) for where, text in sources.items()
                    for name in _GIN_REFERENCE.findall(text) if not (GIN_DIR / name).is_file()})
  assert not missing, f"references to gin files that do not exist: {missing}"
