"""Attention kernels and whole training steps lower for GPU and TPU from a CPU host.

Lowering (``jit(...).trace(...).lower(lowering_platforms=(platform,))``)
runs the Pallas Triton and Mosaic lowerings and the cuDNN custom-call
builder without an accelerator, so it catches illegal block shapes,
layouts and unsupported primitives here. Each test asserts the custom call
that shows the intended kernel is in the module: ``tpu_custom_call`` for
Mosaic (splash and our Pallas kernels on TPU), the Triton call on CUDA and
``__cudnn$fmha...`` for cuDNN's fused attention. Nothing is compiled or run,
and parameters and batches are abstract (``jax.eval_shape`` /
``ShapeDtypeStruct``), so the file stays cheap.

Shapes suit TPU tiles: ``d_model`` 256 with two heads of 128, length 128,
batch 8. The Pallas model-level cases need kernels that lower for CUDA
(Triton) and TPU (Mosaic) under ``pallas_kernels._tiling.dispatch``.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from lmlab.models import attention
from lmlab.models.config import EncoderConfig, T5Config
from lmlab.training import trainer
from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.wrappers.masked_lm import MaskedLMModel
from pallas_kernels.cross_lowering import (CUDNN_ATTENTION_PREFIX, MOSAIC_TPU_CALL, PLATFORMS,
                                           custom_calls, kernel_call_for, lower_text)

BATCH, LENGTH, HEADS, HEAD_DIM = 8, 128, 2, 128
VISIBILITIES = {"segments": (True, False), "causal": (False, True), "both": (True, True)}


def _abstract(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def _qkv(dtype):
  return [_abstract((BATCH, LENGTH, HEADS, HEAD_DIM), dtype)] * 3


def _attend(backend, segments: bool, causal: bool):
  """``f(q, k, v, seg)``: our attention with the chosen visibility."""
  def attend(q, k, v, seg):
    return attention.dot_product_attention(
        q, k, v, q_segment_ids=seg if segments else None,
        kv_segment_ids=seg if segments else None, causal=causal, backend=backend)
  return attend


def _summed(fn):
  return lambda *a: jnp.sum(fn(*a).astype(jnp.float32))


def _kernel_names(text: str) -> set[str]:
  """Names of the Mosaic kernels a TPU module calls."""
  return set(re.findall(r'kernel_name = "([\w.\-]+)"', text))


# -- splash (TPU) -----------------------------------------------------------------------


@pytest.mark.parametrize("visibility", sorted(VISIBILITIES))
def test_splash_forward_and_backward_lower_for_tpu(visibility):
  segments, causal = VISIBILITIES[visibility]
  attend = _attend("splash", segments, causal)
  args = (*_qkv(jnp.bfloat16), _abstract((BATCH, LENGTH), jnp.int32))

  forward = lower_text(attend, *args, platform="tpu")
  assert MOSAIC_TPU_CALL in custom_calls(forward)
  assert {n.split("_")[2] for n in _kernel_names(forward)} == {"fwd"}

  backward = lower_text(jax.grad(_summed(attend), argnums=(0, 1, 2)), *args, platform="tpu")
  assert MOSAIC_TPU_CALL in custom_calls(backward)
  # One forward kernel (saving residuals) and the two gradient kernels.
  assert {n.split("_")[2] for n in _kernel_names(backward)} == {"fwd", "dq", "dkv"}


# -- cuDNN (CUDA) -----------------------------------------------------------------------


@pytest.fixture
def cudnn_lowering_host(monkeypatch):
  """Lets our ``cudnn`` backend lower cuDNN's fused attention on a CPU host.

  Two questions about the machine stand in the way, neither of which
  changes the lowered module: our backend asks ``jax.default_backend()``
  whether it is on a GPU (else it takes the library's XLA path), and
  ``jax.nn.dot_product_attention(implementation="cudnn")`` asks the CUDA
  plugin for the cuDNN version (``jax._src.lib.cuda_versions``, absent
  without ``jax-cuda*-plugin``) and uses the answer only to refuse
  unsupported features (compute capability 10.3 before cuDNN 9.11, MLA
  before 9.10). Both are answered as a GPU host with cuDNN 9.8 would.
  """
  from jax._src.cudnn import fused_attention_stablehlo
  from jax._src.lib import cuda_versions
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  if cuda_versions is None:
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 90800)


@pytest.mark.parametrize("visibility", ["none"] + sorted(VISIBILITIES))
def test_cudnn_backend_lowers_to_cudnn_fused_attention_for_cuda(visibility, cudnn_lowering_host):
  segments, causal = VISIBILITIES.get(visibility, (False, False))
  attend = _attend("cudnn", segments, causal)
  args = (*_qkv(jnp.bfloat16), _abstract((BATCH, LENGTH), jnp.int32))
  text = lower_text(jax.value_and_grad(_summed(attend), argnums=(0, 1, 2)), *args,
                    platform="cuda")
  calls = {c for c in custom_calls(text) if c.startswith(CUDNN_ATTENTION_PREFIX)}
  # Segments reach cuDNN as a mask folded into its bias; causality as its own mask type.
  kind = "ScaleBiasSoftmax" if segments else "Softmax"
  assert calls == {f"__cudnn$fmha{kind}", f"__cudnn$fmha{kind}Backward"}
  assert ("CAUSAL" in text) == causal


# -- whole training steps and serving ---------------------------------------------------


def _mlm_batch():
  ints = _abstract((BATCH, LENGTH), jnp.int32)
  return {"input_ids": ints, "segment_ids": ints, "positions": ints, "targets": ints,
          "loss_weights": _abstract((BATCH, LENGTH), jnp.float32)}


def _seq2seq_batch():
  ints = _abstract((BATCH, LENGTH), jnp.int32)
  batch = {name: ints for name in (
      "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
      "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
      "decoder_positions")}
  batch["decoder_loss_weights"] = _abstract((BATCH, LENGTH), jnp.float32)
  return batch


TINY_ENCODER = EncoderConfig(vocab_size=256, d_model=HEADS * HEAD_DIM, num_layers=1,
                             num_heads=HEADS, d_ff=512, max_positions=LENGTH, dropout_rate=0.0,
                             attention_dropout_rate=0.0)
TINY_T5 = T5Config(vocab_size=256, d_model=HEADS * HEAD_DIM, num_heads=HEADS, head_dim=HEAD_DIM,
                   d_ff=512, num_encoder_layers=1, num_decoder_layers=1)
TRAINED = {
    "bert_pallas": (MaskedLMModel(dataclasses.replace(TINY_ENCODER, attention_backend="pallas")),
                    _mlm_batch, PLATFORMS),
    "t5_pallas": (EncoderDecoderModel(dataclasses.replace(TINY_T5, attention_backend="pallas")),
                  _seq2seq_batch, PLATFORMS),
    "bert_splash": (MaskedLMModel(dataclasses.replace(TINY_ENCODER, attention_backend="splash")),
                    _mlm_batch, ("tpu",)),
}


def _train_step_text(model, batch, platform: str) -> str:
  """The Trainer's jitted step (forward, backward, AdamW update) lowered for ``platform``."""
  optimizer = optax.adamw(1e-3)
  step = trainer.make_train_step(model, optimizer, optax.constant_schedule(1e-3))
  state = jax.eval_shape(
      lambda: trainer.create_train_state(model, optimizer, 0, BATCH, LENGTH))
  return lower_text(step, state, batch, platform=platform)


@pytest.mark.parametrize("name,platform", [(name, platform) for name, (_, _, platforms)
                                           in TRAINED.items() for platform in platforms])
def test_training_step_lowers_with_kernels(name, platform):
  model, batch, _ = TRAINED[name]
  text = _train_step_text(model, batch(), platform)
  assert kernel_call_for(platform) in custom_calls(text)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("quantization", ["bitlinear", "int8"])
def test_quantized_serving_forward_lowers_with_lowbit_kernels(quantization, platform):
  serving = MaskedLMModel(dataclasses.replace(
      TINY_ENCODER, dense_quantization=quantization, quantization_serving=True))
  packed = jax.eval_shape(lambda: serving.init(jax.random.PRNGKey(0), BATCH, LENGTH))
  text = lower_text(serving.apply, packed, _mlm_batch(), platform=platform)
  assert kernel_call_for(platform) in custom_calls(text)
