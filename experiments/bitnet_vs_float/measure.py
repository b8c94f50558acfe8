"""BitNet study measure: weight bytes as trained (float32) and as served (2-bit packed).

  python experiments/bitnet_vs_float/measure.py --model_dir=RUN --out=measures.json

Loads the finished run. For a BitNet run (``EncoderConfig.dense_quantization``
set) it builds the serving model's parameter shapes
(``quantization_serving=True``), converts the trained latent weights with
``lmlab.models.quantized.export_packed`` and checks on a validation batch
that the packed model's MLM logits equal the training model's (the packing
is exact, so they must, bit for bit). Writes:

- ``linear_float_bytes``: float32 bytes of the projection kernels that BitNet
  quantises (attention and MLP), as the run stores them;
- ``linear_served_bytes``: bytes of those kernels when served (packed codes
  plus scales for BitNet; unchanged for a float run);
- ``model_served_bytes``: every parameter as served (embeddings, norms and
  the MLM head stay float);
- ``linear_compression``: float over served bytes of the projections;
- ``packed_logits_max_abs_diff`` (BitNet only): 0 when the packed model
  reproduces the training model.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from studylib.trained import load_run, write_measures  # noqa: E402  pylint: disable=wrong-import-position

QUANTIZED_KERNELS = ("kernel", "kernel_packed", "kernel_int8", "kernel_scale")


def _is_projection(path: str) -> bool:
  """Attention and MLP kernels: the layers BitNet quantises (not embeddings or the MLM head)."""
  leaf = path.rsplit("/", 1)[-1]
  return leaf in QUANTIZED_KERNELS and ("attention" in path or "mlp" in path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", type=pathlib.Path, required=True)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()

  from lmlab.data import pipeline  # pylint: disable=import-outside-toplevel
  from lmlab.models import quantized  # pylint: disable=import-outside-toplevel
  from lmlab.wrappers.masked_lm import MaskedLMModel  # pylint: disable=import-outside-toplevel

  run = load_run(args.model_dir, "EncoderConfig")
  cfg, params = run.network, run.params
  values = {"linear_float_bytes": float(quantized.tree_bytes(params, _is_projection)),
            "model_float_bytes": float(quantized.tree_bytes(params))}
  served = params
  if cfg.dense_quantization not in (None, "none"):
    length = run.values["DataConfig.sequence_length"]
    serving_model = MaskedLMModel(dataclasses.replace(cfg, quantization_serving=True))
    template = jax.eval_shape(lambda r: serving_model.init(r, 1, length), jax.random.PRNGKey(0))
    served = quantized.export_packed(params, template)
    batch = next(pipeline.get_dataset(run.task, "validation", length, 8, shuffle=False, seed=0,
                                      repeat=True).as_numpy_iterator())
    trained = np.asarray(MaskedLMModel(cfg).apply(params, batch))
    packed = np.asarray(serving_model.apply(served, batch))
    values["packed_logits_max_abs_diff"] = float(np.max(np.abs(trained - packed)))
  values["linear_served_bytes"] = float(quantized.tree_bytes(served, _is_projection))
  values["model_served_bytes"] = float(quantized.tree_bytes(served))
  values["linear_compression"] = values["linear_float_bytes"] / values["linear_served_bytes"]
  write_measures(args.out, values)


if __name__ == "__main__":
  main()
