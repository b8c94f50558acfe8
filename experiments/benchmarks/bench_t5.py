"""T5-family speed on CPU: training vs Hugging Face, MrT5 hard deletion, KV-cache decoding.

Three tables, each a comparison timed within one run (absolute figures on a
shared machine are noisy; the ratios are what to read):

1. ``train``: full training steps (forward, backward, global-norm clipping at
   1, AdamW) of lmlab's ``EncoderDecoderModel`` and of Hugging Face
   ``T5ForConditionalGeneration`` (PyTorch) at the same T5 v1.1 configuration
   (gated-GELU, untied output layer, no dropout, float32) on the same batch of
   span-corruption-shaped random data. AdamW on both sides (the same
   hyper-parameters, weight decay off for norm scales and relative position
   tables) rather than Adafactor, whose two implementations differ in more
   than speed. lmlab's z-loss is switched off so both compute the same
   objective. Parameter counts are checked equal. Throughput counts input plus
   target tokens.
2. ``mrt5``: encoder forward time of a ByT5-like encoder against MrT5 (the same
   encoder with a delete gate after block ``--gate_layer``) at forced deletion
   rates. The gate is overridden (``encode_lower(..., gate_override=...)``) to
   the deletion value on an exact fraction of each row's bytes and 0 elsewhere;
   the timed path is the whole hard deletion of inference: lower blocks,
   ``keep_tokens`` on the host, upper blocks on the shortened rows (each shape
   compiled before timing). The "proportional" column is what the time would be
   if the blocks after the gate got cheaper exactly in proportion to the kept
   bytes (attention's quadratic term, the gate and the host copy ignored).
3. ``decode``: ``EncoderDecoderModel.predict(..., method="greedy")`` with and
   without the key/value cache. The EOS id is set to an id outside the
   vocabulary, so no row can stop early and every call generates exactly
   ``--decode_len`` tokens per row (checked). The time is the whole
   ``predict`` call, encoder included, the same on both sides.

XLA:CPU runs on all cores; PyTorch gets ``--threads`` (default: all cores).

Usage::

    pip install -e ".[bench]"
    python experiments/benchmarks/bench_t5.py [--only train|mrt5|decode] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmlab.wrappers.encoder_decoder import EncoderDecoderModel
from lmlab.models.byte_level import keep_tokens
from lmlab.models.config import T5Config
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lmlab.training.trainer import create_train_state, make_train_step
from timing import time_interleaved, time_steps  # sibling module: experiments/benchmarks/timing.py

# Shared by both sides of the training comparison.
LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY, CLIP_NORM = 1e-4, (0.9, 0.999), 1e-8, 0.01, 1.0
NOISE_DENSITY, MEAN_SPAN = 0.15, 3.0


def params_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


# -- 1. training: lmlab vs Hugging Face -------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainBench:
  """T5 v1.1 small widths; depth, vocabulary and batch shape are flags."""

  vocab_size: int = 32128
  num_layers: int = 8
  d_model: int = 512
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  batch_size: int = 8
  inputs_length: int = 512
  targets_length: int = 114

  def t5_config(self, **overrides) -> T5Config:
    return T5Config(vocab_size=self.vocab_size, d_model=self.d_model, num_heads=self.num_heads,
                    head_dim=self.head_dim, d_ff=self.d_ff, num_encoder_layers=self.num_layers,
                    num_decoder_layers=self.num_layers, mlp_activation="gated_gelu_tanh",
                    dropout_rate=0.0, tie_word_embeddings=False, **overrides)

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * (self.inputs_length + self.targets_length)


def span_corruption_batch(cfg: TrainBench, seed: int = 0) -> dict[str, np.ndarray]:
  """Random ids laid out like T5 span corruption: sentinels in the inputs, spans in the targets.

  Only the shapes and id ranges matter for speed: inputs are text ids with a
  sentinel (counting down from the top of the vocabulary) every
  ``MEAN_SPAN / NOISE_DENSITY`` positions, targets alternate sentinels and
  ``MEAN_SPAN``-token spans, both end in EOS, and every position is real (as in
  packed pretraining batches).
  """
  rng = np.random.RandomState(seed)
  num_sentinels = min(100, cfg.vocab_size // 4)
  text_high = cfg.vocab_size - num_sentinels
  inputs = rng.randint(2, text_high, size=(cfg.batch_size, cfg.inputs_length))
  stride = max(int(round(MEAN_SPAN / NOISE_DENSITY)), 2)
  slots = np.arange(stride // 2, cfg.inputs_length - 1, stride)
  inputs[:, slots] = cfg.vocab_size - 1 - (np.arange(len(slots)) % num_sentinels)
  inputs[:, -1] = 1
  targets = rng.randint(2, text_high, size=(cfg.batch_size, cfg.targets_length))
  span = int(MEAN_SPAN) + 1
  marks = np.arange(0, cfg.targets_length - 1, span)
  targets[:, marks] = cfg.vocab_size - 1 - (np.arange(len(marks)) % num_sentinels)
  targets[:, -1] = 1
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  ones = lambda x: np.ones(x.shape, np.int32)
  arange = lambda x: np.tile(np.arange(x.shape[1], dtype=np.int32), (x.shape[0], 1))
  return {
      "encoder_input_tokens": inputs.astype(np.int32), "encoder_segment_ids": ones(inputs),
      "encoder_positions": arange(inputs),
      "decoder_input_tokens": decoder_inputs.astype(np.int32),
      "decoder_target_tokens": targets.astype(np.int32),
      "decoder_loss_weights": np.ones(targets.shape, np.float32),
      "decoder_segment_ids": ones(targets), "decoder_positions": arange(targets),
  }


def lmlab_train_runner(cfg: TrainBench):
  """A closure running one jitted lmlab train step (state donated), its parameter count, the state."""
  model = EncoderDecoderModel(cfg.t5_config(), z_loss=0.0)
  opt_config = OptimizerConfig(optimizer="adamw", learning_rate=LEARNING_RATE, schedule="constant",
                               warmup_steps=0, weight_decay=WEIGHT_DECAY, b1=BETAS[0], b2=BETAS[1],
                               eps=EPS, clip_grad_norm=CLIP_NORM)
  optimizer = make_optimizer(opt_config, 1000)
  state = create_train_state(model, optimizer, 0, cfg.batch_size, cfg.inputs_length)
  step_fn = jax.jit(make_train_step(model, optimizer, make_schedule(opt_config, 1000)),
                    donate_argnums=(0,))
  batch = jax.device_put(span_corruption_batch(cfg))
  holder = {"state": state, "loss": None}

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch)
    holder["loss"] = float(jax.block_until_ready(metrics["loss_sum"]) / metrics["weight_sum"])

  return step, params_count(state.params), holder


def hf_train_runner(cfg: TrainBench, threads: int):
  """A closure running one PyTorch train step of HF ``T5ForConditionalGeneration``, and its size."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  hf_config = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
      num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
      feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
      tie_word_embeddings=False)
  model = transformers.T5ForConditionalGeneration(hf_config)
  if model.lm_head.weight is model.shared.weight:
    # transformers 5 always ties the output layer to the embedding (scaling only
    # when the config asks for tying); T5 v1.1 has its own, as lmlab's
    # ``tie_word_embeddings=False`` does.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  model.train()
  decay, no_decay = [], []
  for name, param in model.named_parameters():
    (no_decay if "layer_norm" in name or "relative_attention_bias" in name else decay).append(param)
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=LEARNING_RATE, betas=BETAS, eps=EPS)
  batch = span_corruption_batch(cfg)
  tensor = lambda name: torch.from_numpy(batch[name]).long()
  inputs, decoder_inputs = tensor("encoder_input_tokens"), tensor("decoder_input_tokens")
  labels, attention_mask = tensor("decoder_target_tokens"), torch.ones_like(inputs)
  holder = {"loss": None}

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=inputs, attention_mask=attention_mask, decoder_input_ids=decoder_inputs,
                 labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    optimizer.step()
    holder["loss"] = loss.item()

  num_params = sum(p.numel() for p in model.parameters())
  return step, num_params, holder, model.config._attn_implementation  # pylint: disable=protected-access


def train_table(cfg: TrainBench, warmup: int, steps: int, repeats: int, threads: int,
                with_hf: bool) -> dict[str, float]:
  tokens = cfg.tokens_per_step
  step, lmlab_params, lmlab_holder = lmlab_train_runner(cfg)
  systems = {"lmlab EncoderDecoderModel": step}
  header = (f"\n[train] T5 v1.1: {cfg.num_layers}+{cfg.num_layers} layers, d_model {cfg.d_model}, "
            f"d_ff {cfg.d_ff}, {cfg.num_heads}x{cfg.head_dim} heads, vocab {cfg.vocab_size}, batch "
            f"{cfg.batch_size} x ({cfg.inputs_length} inputs + {cfg.targets_length} targets), AdamW, "
            f"float32; parameters lmlab {lmlab_params:,}")
  if with_hf:
    hf_step, hf_params, hf_holder, attention = hf_train_runner(cfg, threads)
    name = f"HF T5 ({attention})"
    systems[name] = hf_step
  # The systems are timed in turn, so that load changes fall on both alike.
  results = {system: tokens / seconds
             for system, seconds in time_interleaved(systems, warmup, steps, repeats).items()}
  losses = [lmlab_holder["loss"]]
  if with_hf:
    losses.append(hf_holder["loss"])
    if hf_params != lmlab_params:
      raise AssertionError(f"Parameter counts differ: lmlab {lmlab_params:,} vs HF {hf_params:,}.")
    header += f" = HF {hf_params:,}"
  if not all(math.isfinite(loss) for loss in losses):
    raise AssertionError(f"Non-finite training loss: {losses}.")
  print(header)
  reference = results[name] if with_hf else None
  print(f"{'system':<28}{'tokens/s':>12}{'steps/s':>10}{'vs HF':>9}")
  for system, rate in results.items():
    ratio = f"{rate / reference:>8.2f}x" if reference else f"{'n/a':>9}"
    print(f"{system:<28}{rate:>12,.0f}{rate / tokens:>10.3f}{ratio}")
  if not with_hf:
    print("(HF column skipped: torch/transformers not installed or --no_hf)")
  return results


# -- 2. ByT5 vs MrT5 hard deletion ------------------------------------------------


ENCODER_SIZES = {
    # ByT5-small widths (12 encoder blocks, d_model 1472, d_ff 3584).
    "small": dict(d_model=1472, d_ff=3584, num_heads=6, head_dim=64, num_encoder_layers=12),
    # Narrower, same depth: the layer-count arithmetic is unchanged, each block is cheaper.
    "mini": dict(d_model=512, d_ff=1024, num_heads=8, head_dim=64, num_encoder_layers=12),
    "tiny": dict(d_model=64, d_ff=128, num_heads=2, head_dim=32, num_encoder_layers=4),
}


def byte_config(size: str, gate_layer: Optional[int]) -> T5Config:
  return T5Config(vocab_size=384, num_decoder_layers=1, dropout_rate=0.0,
                  delete_gate_layer=gate_layer, **ENCODER_SIZES[size])


def forced_gate(cfg: T5Config, batch: int, length: int, deletion: float, seed: int = 0) -> np.ndarray:
  """``delete_gate_scale`` on exactly ``round(deletion * length)`` random bytes per row, 0 elsewhere."""
  rng = np.random.RandomState(seed)
  gate = np.zeros((batch, length), np.float32)
  count = int(round(deletion * length))
  for row in range(batch):
    gate[row, rng.permutation(length)[:count]] = cfg.delete_gate_scale
  return gate


def byt5_runner(cfg: T5Config, ids: np.ndarray):
  """A closure running the plain (ungated) encoder forward."""
  module = EncoderDecoderModel(cfg).module
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), ids[:, :4], ids[:, :3])["params"])
  encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode")[0])
  ids = jnp.asarray(ids)
  return lambda: jax.block_until_ready(encode(params, ids))


def mrt5_runner(cfg: T5Config, ids: np.ndarray, gate: np.ndarray):
  """A closure running MrT5's hard-deletion encoder path with a forced gate, and the kept length."""
  module = EncoderDecoderModel(cfg).module
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), ids[:, :4], ids[:, :3])["params"])
  lower = jax.jit(lambda p, x, g: module.apply({"params": p}, x, gate_override=g,
                                               method="encode_lower"))
  upper = jax.jit(lambda p, h, s, pos, g: module.apply({"params": p}, h, s, pos, g,
                                                       method="encode_upper"))
  segment_ids = np.ones(ids.shape, np.int32)
  positions = np.arange(ids.shape[1], dtype=np.int32)[None]
  ids, gate = jnp.asarray(ids), jnp.asarray(gate)
  holder = {}

  def forward():
    hidden, lower_gate = lower(params, ids, gate)
    kept = keep_tokens(np.asarray(hidden), segment_ids, positions, np.asarray(lower_gate),
                       threshold=cfg.delete_threshold, pad_gate=cfg.delete_gate_scale,
                       key_bias=cfg.hard_delete_key_bias)
    holder["length"], holder["kept"] = kept.hidden.shape[1], kept.kept_fraction
    return jax.block_until_ready(upper(params, kept.hidden, kept.segment_ids, kept.positions,
                                       kept.key_bias))

  return forward, holder


def mrt5_table(size: str, batch: int, length: int, gate_layer: int, deletions: list[float],
               warmup: int, steps: int, repeats: int) -> dict[str, float]:
  ids = np.random.RandomState(0).randint(3, 259, size=(batch, length)).astype(np.int32)
  byt5 = byte_config(size, None)
  mrt5 = byte_config(size, gate_layer)
  layers = byt5.num_encoder_layers
  base = time_steps(byt5_runner(byt5, ids), warmup, steps, repeats)
  rows = [("ByT5", 0.0, length, base, 1.0)]
  for deletion in deletions:
    forward, holder = mrt5_runner(mrt5, ids, forced_gate(mrt5, batch, length, deletion))
    seconds = time_steps(forward, warmup, steps, repeats)
    kept = holder["kept"]
    rows.append((f"MrT5 {deletion:.0%} deleted", 1.0 - kept, holder["length"], seconds,
                 (gate_layer + (layers - gate_layer) * kept) / layers))
  widths = ENCODER_SIZES[size]
  print(f"\n[mrt5] encoder forward, {size}: {layers} blocks, d_model {widths['d_model']}, d_ff "
        f"{widths['d_ff']}, batch {batch} x {length} bytes; MrT5 gate before block {gate_layer}, "
        "hard deletion (lower blocks, keep_tokens on host, upper blocks)")
  print(f"{'encoder':<20}{'deleted':>9}{'kept len':>10}{'ms/forward':>12}{'vs ByT5':>9}"
        f"{'proportional':>14}")
  results = {}
  for name, deleted, kept_len, seconds, expected in rows:
    results[name] = seconds / base
    print(f"{name:<20}{deleted:>9.0%}{kept_len:>10}{seconds * 1e3:>12,.1f}{seconds / base:>8.2f}x"
          f"{expected:>13.2f}x")
  return results


# -- 3. greedy decoding with and without the cache ----------------------------------


def decode_table(cfg: TrainBench, batch: int, inputs_length: int, decode_length: int,
                 warmup: int, steps: int, repeats: int) -> dict[str, float]:
  # An EOS id outside the vocabulary: argmax never picks it, so every row runs
  # the full ``decode_length`` steps on both sides.
  config = cfg.t5_config(eos_id=cfg.vocab_size)
  model = EncoderDecoderModel(config)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  rng = np.random.RandomState(1)
  inputs = jnp.asarray(rng.randint(2, cfg.vocab_size, size=(batch, inputs_length)), jnp.int32)
  results, tokens = {}, {}
  for use_cache in (False, True):
    holder = {}

    def run_once(use_cache=use_cache, holder=holder):
      holder["result"] = jax.block_until_ready(model.predict(
          params, inputs, max_decode_length=decode_length, method="greedy", use_cache=use_cache))

    seconds = time_steps(run_once, warmup, steps, repeats)
    name = "with KV cache" if use_cache else "without cache"
    results[name] = batch * decode_length / seconds
    tokens[name] = np.asarray(holder["result"].tokens)
    if tokens[name].shape[-1] != decode_length or (tokens[name] == config.eos_id).any():
      raise AssertionError(f"{name}: expected {decode_length} generated tokens per row, got "
                           f"shape {tokens[name].shape}.")
  same = np.array_equal(tokens["without cache"], tokens["with KV cache"])
  print(f"\n[decode] greedy, T5 v1.1 widths: {cfg.num_layers}+{cfg.num_layers} layers, d_model "
        f"{cfg.d_model}, vocab {cfg.vocab_size}; batch {batch} x {inputs_length} inputs, "
        f"{decode_length} generated tokens per row (no early EOS), encoder included; outputs "
        f"{'identical' if same else 'DIFFER'} with and without the cache")
  print(f"{'mode':<16}{'ms/predict':>12}{'tokens/s':>12}{'vs no cache':>13}")
  reference = results["without cache"]
  for name, rate in results.items():
    print(f"{name:<16}{batch * decode_length / rate * 1e3:>12,.1f}{rate:>12,.1f}"
          f"{rate / reference:>12.2f}x")
  return results


# -- command line ---------------------------------------------------------------------


def _has_torch() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return all(importlib.util.find_spec(name) for name in ("torch", "transformers"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=["train", "mrt5", "decode"], default=None,
                      help="run one table (default: all three)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and one timed step: checks the code paths, not speed")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                      help="PyTorch threads (XLA:CPU always uses every core)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_hf", action="store_true", help="skip the Hugging Face column")
  train = parser.add_argument_group("train and decode model (T5 v1.1 small widths)")
  train.add_argument("--vocab", type=int, default=32128)
  train.add_argument("--layers", type=int, default=8, help="encoder and decoder blocks each")
  train.add_argument("--batch", type=int, default=8)
  train.add_argument("--inputs_len", type=int, default=512)
  train.add_argument("--targets_len", type=int, default=114)
  mrt5 = parser.add_argument_group("ByT5 vs MrT5")
  mrt5.add_argument("--mrt5_size", choices=list(ENCODER_SIZES), default="small")
  mrt5.add_argument("--mrt5_batch", type=int, default=8)
  mrt5.add_argument("--mrt5_len", type=int, default=1024, help="input bytes per row")
  mrt5.add_argument("--gate_layer", type=int, default=3)
  mrt5.add_argument("--deletions", default="0,0.5,0.8", help="comma-separated deletion rates")
  decode = parser.add_argument_group("greedy decoding")
  decode.add_argument("--decode_batch", type=int, default=8)
  decode.add_argument("--decode_inputs_len", type=int, default=128)
  decode.add_argument("--decode_len", type=int, default=64)
  args = parser.parse_args()
  if args.smoke:
    args.vocab, args.layers, args.batch, args.inputs_len, args.targets_len = 512, 2, 2, 32, 8
    args.mrt5_size, args.mrt5_batch, args.mrt5_len, args.gate_layer = "tiny", 2, 64, 1
    args.decode_batch, args.decode_inputs_len, args.decode_len = 2, 16, 8
    args.warmup, args.steps, args.repeats = 1, 1, 1
  with_hf = not args.no_hf and _has_torch()
  versions = f"jax {jax.__version__} on {jax.devices()[0].platform}"
  if with_hf:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(args.threads)
    versions += (f", torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
                 f"{transformers.__version__}")
  print(f"{versions}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{' [smoke sizes: not a measurement]' if args.smoke else ''}")
  widths = dict(d_model=64, num_heads=2, head_dim=32, d_ff=128) if args.smoke else {}
  train_cfg = TrainBench(vocab_size=args.vocab, num_layers=args.layers, batch_size=args.batch,
                         inputs_length=args.inputs_len, targets_length=args.targets_len, **widths)
  if args.only in (None, "train"):
    train_table(train_cfg, args.warmup, args.steps, args.repeats, args.threads, with_hf)
  if args.only in (None, "mrt5"):
    deletions = [float(x) for x in args.deletions.split(",") if x.strip()]
    mrt5_table(args.mrt5_size, args.mrt5_batch, args.mrt5_len, args.gate_layer, deletions,
               args.warmup, args.steps, args.repeats)
  if args.only in (None, "decode"):
    decode_table(train_cfg, args.decode_batch, args.decode_inputs_len, args.decode_len,
                 args.warmup, args.steps, args.repeats)


if __name__ == "__main__":
  main()
