"""Training throughput: lmlab encoder vs Hugging Face ``BertForMaskedLM`` on CPU.

Both systems run full training steps (forward, backward, global-norm clipping,
AdamW update) at an identical configuration: same vocabulary, width, depth,
heads, MLP width, 512 learned positions, 2 token types, exact GELU, post-LN,
tied output embedding, dropout 0.1, float32, same batch and sequence length,
and the loss over the same 15% of positions. Parameter counts are printed and
must match. Each system is warmed up (compilation, first iterations) before
timing; the per-step time is the median over repeats.

lmlab is measured twice: with the MLM head over every position (the same
arithmetic as HF, "lmlab full head"), and as the trainer runs it by default,
with the head only on the masked positions ("lmlab gathered head",
``MaskedLMModel.max_prediction_fraction = 0.2``, as in the original BERT).

Usage::

    pip install -e ".[bench]"
    python experiments/benchmarks/bench_encoder_vs_hf.py [--config tiny|base|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from typing import Optional

import jax
import numpy as np

from lmlab.wrappers.masked_lm import MaskedLMModel
from lmlab.models import EncoderConfig
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lmlab.training.trainer import create_train_state, make_train_step
from timing import time_interleaved  # sibling module: experiments/benchmarks/timing.py

MASK_RATE = 0.15


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  name: str
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  batch_size: int
  sequence_length: int

  def encoder_config(self) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=self.vocab_size, d_model=self.d_model, num_layers=self.num_layers,
        num_heads=self.num_heads, d_ff=self.d_ff, max_positions=512, num_token_types=2,
        mlp_activation="gelu", norm_position="post", norm_type="layernorm", norm_eps=1e-12,
        position_scheme="learned", use_bias=True, tie_output_embedding=True,
        dropout_rate=0.1, attention_dropout_rate=0.1)


CONFIGS = {
    "tiny": BenchConfig("tiny", 8192, 128, 2, 2, 512, 32, 128),
    "base": BenchConfig("base", 30522, 768, 12, 12, 3072, 8, 128),
}


def synthetic_batch(cfg: BenchConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens with exactly 15% of positions per row selected for the loss."""
  rng = np.random.RandomState(seed)
  shape = (cfg.batch_size, cfg.sequence_length)
  targets = rng.randint(5, cfg.vocab_size, size=shape).astype(np.int32)
  weights = np.zeros(shape, np.float32)
  per_row = round(MASK_RATE * cfg.sequence_length)
  for row in range(cfg.batch_size):
    weights[row, rng.choice(cfg.sequence_length, per_row, replace=False)] = 1.0
  inputs = np.where(weights > 0, 3, targets).astype(np.int32)
  return {"input_ids": inputs, "targets": targets, "loss_weights": weights,
          "segment_ids": np.ones(shape, np.int32),
          "positions": np.tile(np.arange(cfg.sequence_length, dtype=np.int32), (cfg.batch_size, 1))}


def lmlab_runner(cfg: BenchConfig, max_prediction_fraction: Optional[float]):
  """A closure running one lmlab train step, and the model's parameter count."""
  model = MaskedLMModel(cfg.encoder_config(), max_prediction_fraction=max_prediction_fraction)
  opt_config = OptimizerConfig(learning_rate=1e-4, warmup_steps=0, schedule="constant",
                               weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_grad_norm=1.0)
  optimizer = make_optimizer(opt_config, 1000)
  state = create_train_state(model, optimizer, 0, cfg.batch_size, cfg.sequence_length)
  step_fn = jax.jit(make_train_step(model, optimizer, make_schedule(opt_config, 1000)),
                    donate_argnums=(0,))
  batch = jax.device_put(synthetic_batch(cfg))
  holder = {"state": state}

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch)
    jax.block_until_ready(metrics["loss_sum"])

  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  return step, num_params, holder


def hf_runner(cfg: BenchConfig):
  """A closure running one PyTorch train step of HF BertForMaskedLM, and its parameter count."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  bert_config = transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff, hidden_act="gelu",
      max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, tie_word_embeddings=True)
  model = transformers.BertForMaskedLM(bert_config)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6,
                                weight_decay=0.01)
  batch = synthetic_batch(cfg)
  input_ids = torch.from_numpy(batch["input_ids"]).long()
  labels = torch.from_numpy(np.where(batch["loss_weights"] > 0, batch["targets"], -100)).long()
  attention_mask = torch.ones_like(input_ids)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    loss.item()

  num_params = sum(p.numel() for p in model.parameters())
  return step, num_params


def run(cfg: BenchConfig, warmup: int, steps: int, repeats: int) -> dict:
  tokens = cfg.batch_size * cfg.sequence_length
  full_step, lmlab_params, _ = lmlab_runner(cfg, None)
  gathered_step, _, _ = lmlab_runner(cfg, 0.2)
  hf_step, hf_params = hf_runner(cfg)
  seconds = time_interleaved({"lmlab full head": full_step, "lmlab gathered head": gathered_step,
                              "HF BertForMaskedLM": hf_step}, warmup, steps, repeats)
  results = {system: tokens / step_seconds for system, step_seconds in seconds.items()}
  if lmlab_params != hf_params:
    raise AssertionError(f"Parameter counts differ: lmlab {lmlab_params:,} vs HF {hf_params:,}.")
  hf = results["HF BertForMaskedLM"]
  print(f"\n[{cfg.name}] {cfg.num_layers} layers, d_model {cfg.d_model}, vocab {cfg.vocab_size}, "
        f"batch {cfg.batch_size} x {cfg.sequence_length}; parameters lmlab {lmlab_params:,} = "
        f"HF {hf_params:,}")
  print(f"{'system':<22}{'tokens/s':>12}{'vs HF':>9}")
  for system, rate in results.items():
    print(f"{system:<22}{rate:>12,.0f}{rate / hf:>8.2f}x")
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}, {platform.processor() or platform.machine()}, {threads} cores")
  for name in (CONFIGS if args.config == "all" else [args.config]):
    run(CONFIGS[name], args.warmup, args.steps, args.repeats)


if __name__ == "__main__":
  main()
