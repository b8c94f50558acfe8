"""Memory per device under each sharding preset, and compile time vs depth with/without scan.

Runs on N fake CPU devices (default 8) unless real accelerators are present:

  python experiments/benchmarks/bench_sharding.py            # tiny + base, depths 6 and 24
  python experiments/benchmarks/bench_sharding.py --models tiny --depths 2,8   # quick

Part 1: bytes of parameters + AdamW state that one device holds under data
parallel (DP), FSDP and FSDP + 2-way tensor parallel, computed from the exact
shardings the trainer uses (the shard shapes XLA allocates), as a ratio to DP.

Part 2: wall time to lower and compile the full train step (forward,
backward, AdamW) for two depths, with layers unrolled and with ``nn.scan``;
the ratio deep/shallow shows whether compile time grows with depth.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  _n = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_n}"

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lmlab.wrappers.masked_lm import MaskedLMModel  # noqa: E402
from lmlab.models import EncoderConfig  # noqa: E402
from lmlab.training.optimizers import OptimizerConfig, make_optimizer, make_schedule  # noqa: E402
from lmlab.training.partitioning import MeshConfig, Partitioner, per_device_bytes, with_shardings  # noqa: E402
from lmlab.training.trainer import create_train_state, make_train_step, state_shardings  # noqa: E402

# Widths of the shipped presets (gin/models/tiny.gin, bert_base.gin).
MODELS = {
    "tiny": EncoderConfig(vocab_size=8192, d_model=128, num_layers=2, num_heads=2, d_ff=512,
                          max_positions=512),
    "base": EncoderConfig(vocab_size=30522, d_model=768, num_layers=12, num_heads=12, d_ff=3072,
                          max_positions=512, num_token_types=2),
}
STRATEGIES = {"DP": (-1, 1, 1), "FSDP": (1, -1, 1), "FSDP+TP2": (1, -1, 2)}
SEQUENCE_LENGTH = 128


def _abstract_state(partitioner: Partitioner, model: MaskedLMModel, optimizer, rows: int):
  shardings = state_shardings(partitioner, model, optimizer, rows, SEQUENCE_LENGTH)
  with partitioner.context():
    abstract = jax.eval_shape(lambda: create_train_state(model, optimizer, 0, rows, SEQUENCE_LENGTH))
  return with_shardings(abstract, shardings)


def memory_table(model_names: list[str]) -> list[str]:
  optimizer = make_optimizer(OptimizerConfig(), 100)
  lines = [f"Parameters + AdamW state per device, {jax.device_count()} devices "
           f"({jax.devices()[0].platform})",
           f"{'model':<6} {'params':>12} {'strategy':<9} {'mesh (d,f,t)':<13} "
           f"{'MiB/device':>11} {'vs DP':>7}"]
  for name in model_names:
    model = MaskedLMModel(MODELS[name])
    baseline = None
    for strategy, ici in STRATEGIES.items():
      partitioner = Partitioner(MeshConfig(ici_shape=ici))
      state = _abstract_state(partitioner, model, optimizer, partitioner.data_parallel_size)
      num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
      per_device = per_device_bytes(state.params) + per_device_bytes(state.opt_state)
      baseline = baseline or per_device
      mesh = ",".join(str(v) for v in partitioner.mesh.shape.values())
      lines.append(f"{name:<6} {num_params:>12,} {strategy:<9} {mesh:<13} "
                   f"{per_device / 2**20:>11.2f} {per_device / baseline:>6.3f}x")
  return lines


def compile_seconds(config: EncoderConfig, partitioner: Partitioner, rows: int) -> float:
  """Seconds to lower and compile one train step (cache-free: a fresh function each call)."""
  model = MaskedLMModel(config, max_prediction_fraction=0.2)
  opt_config = OptimizerConfig()
  optimizer = make_optimizer(opt_config, 100)
  state = _abstract_state(partitioner, model, optimizer, rows)
  batch = {k: jax.ShapeDtypeStruct((rows, SEQUENCE_LENGTH), dtype,
                                   sharding=partitioner.batch_sharding(2))
           for k, dtype in (("input_ids", jnp.int32), ("targets", jnp.int32),
                            ("loss_weights", jnp.float32), ("segment_ids", jnp.int32),
                            ("positions", jnp.int32))}
  step = partitioner.jit(make_train_step(model, optimizer, make_schedule(opt_config, 100)),
                         out_shardings=(jax.tree_util.tree_map(lambda x: x.sharding, state),
                                        partitioner.replicated()))
  start = time.perf_counter()
  step.lower(state, batch).compile()
  return time.perf_counter() - start


def compile_table(model_name: str, depths: list[int]) -> list[str]:
  partitioner = Partitioner(MeshConfig(ici_shape=STRATEGIES["FSDP"]))
  rows = partitioner.data_parallel_size
  lines = [f"Compile time of the train step, {model_name} width, FSDP over {jax.device_count()} "
           f"devices, batch {rows} x {SEQUENCE_LENGTH}",
           f"{'layers':>6} {'unrolled s':>11} {'scan s':>8} {'unrolled/scan':>14}"]
  times = {}
  for depth in depths:
    for scan in (False, True):
      config = dataclasses.replace(MODELS[model_name], num_layers=depth, scan_layers=scan)
      times[depth, scan] = compile_seconds(config, partitioner, rows)
    lines.append(f"{depth:>6} {times[depth, False]:>11.2f} {times[depth, True]:>8.2f} "
                 f"{times[depth, False] / times[depth, True]:>13.2f}x")
  shallow, deep = depths[0], depths[-1]
  lines.append(f"growth {deep}/{shallow} layers: unrolled {times[deep, False] / times[shallow, False]:.2f}x, "
               f"scan {times[deep, True] / times[shallow, True]:.2f}x")
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="8", help="Fake CPU devices (set before JAX starts).")
  parser.add_argument("--models", default="tiny,base", help="Comma-separated: tiny, base.")
  parser.add_argument("--depths", default="6,24", help="Two depths for the compile-time table.")
  parser.add_argument("--compile_model", default="tiny", choices=sorted(MODELS),
                      help="Width used for the compile-time table.")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print("\n".join(memory_table(args.models.split(","))))
  print()
  print("\n".join(compile_table(args.compile_model, [int(d) for d in args.depths.split(",")])))


if __name__ == "__main__":
  main()
