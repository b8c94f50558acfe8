"""Fine-tune initialisation from a pretraining checkpoint: what is copied, what is fresh, what fails."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmlab.training import checkpointing, pretrained
from lmlab.wrappers.classification import ClassificationModel
from lmlab.glue.spec import TASKS
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.models.config import T5Config

ENCODER = EncoderConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                        max_positions=32)
BIGS = dataclasses.replace(ENCODER, mixer="bigs", ssm_state_size=4)
T5 = T5Config(vocab_size=64, d_model=16, num_heads=2, head_dim=8, d_ff=32,
              num_encoder_layers=2, num_decoder_layers=2)


def _params(wrapper, seed=0):
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(wrapper.init(jax.random.PRNGKey(seed), 2, 8)))


def _save_run(model_dir, params, step=7):
  path = model_dir / "checkpoints" / str(step) / "state"
  path.parent.mkdir(parents=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {"params": params, "step": np.int32(step)})
  checkpointer.wait_until_finished()
  return path


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("config", [ENCODER, BIGS], ids=["bert", "bigs"])
def test_encoder_is_copied_and_heads_are_fresh(tmp_path, config):
  old = _params(MaskedLMModel(config), seed=1)
  _save_run(tmp_path, old)
  step, loaded = checkpointing.load_params(str(tmp_path))
  assert step == 7
  model = ClassificationModel(config, TASKS["glue_mnli"])
  fresh = _params(model, seed=2)
  params, new, unused = pretrained.graft_pretrained(fresh, loaded, required_prefixes=("encoder",))
  got, want, init = _leaves(params["encoder"]), _leaves(old["encoder"]), _leaves(fresh["encoder"])
  assert got.keys() == want.keys()
  for name in got:
    np.testing.assert_array_equal(got[name], want[name])
  assert any(not np.array_equal(want[n], init[n]) for n in want)  # really replaced
  assert {p.split("/")[0] for p in new} == {"pooler", "classifier"}
  assert params["classifier"]["kernel"].shape[-1] == 3
  assert unused and all(not p.startswith("encoder/") for p in unused)  # the MLM head


def test_t5_checkpoint_feeds_an_enct5_head_with_fewer_decoder_layers(tmp_path):
  old = _params(EncoderDecoderModel(T5), seed=1)
  _save_run(tmp_path, old)
  _, loaded = checkpointing.load_params(str(tmp_path))
  model = ClassificationModel(dataclasses.replace(T5, num_decoder_layers=1), TASKS["glue_stsb"])
  params, new, unused = pretrained.graft_pretrained(
      _params(model), loaded, required_prefixes=("token_embedder", "encoder", "decoder"))
  np.testing.assert_array_equal(params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"],
                                old["decoder"]["layers_0"]["self_attention"]["query"]["kernel"])
  assert new == ["classifier/bias", "classifier/kernel"]
  assert "decoder/logits_dense/kernel" in unused
  assert any(p.startswith("decoder/layers_1/") for p in unused)


def test_checkpoint_of_another_family_is_refused(tmp_path):
  _save_run(tmp_path, _params(EncoderDecoderModel(T5)))
  _, loaded = checkpointing.load_params(str(tmp_path))
  fresh = _params(ClassificationModel(ENCODER, TASKS["glue_cola"]))
  with pytest.raises(ValueError, match="another model family"):
    pretrained.graft_pretrained(fresh, loaded, required_prefixes=("encoder",))


def test_checkpoint_of_another_shape_is_refused(tmp_path):
  _save_run(tmp_path, _params(MaskedLMModel(dataclasses.replace(ENCODER, d_ff=48))))
  _, loaded = checkpointing.load_params(str(tmp_path))
  fresh = _params(ClassificationModel(ENCODER, TASKS["glue_cola"]))
  with pytest.raises(ValueError, match=r"has shape \(48,\) in the checkpoint but \(32,\)"):
    pretrained.graft_pretrained(fresh, loaded, required_prefixes=("encoder",))


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpointing.load_params(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="pretrain first"):
    checkpointing.load_params(str(tmp_path))
  path = _save_run(tmp_path, _params(MaskedLMModel(ENCODER)))
  for item in path.rglob("*"):
    if item.is_file() and item.stat().st_size > 0:
      item.write_bytes(b"garbage")
  with pytest.raises(ValueError, match="cannot be read"):
    checkpointing.load_params(str(tmp_path))
