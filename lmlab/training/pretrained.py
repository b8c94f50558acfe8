"""Starting a run from another run's parameters: graft them onto a new model.

``lmlab.training.checkpointing.load_params`` reads a run's parameters.
Fine-tuning needs only those the new model shares with the pretrained one:
the encoder (and, for T5, the embedding and decoder) are copied, task heads are created fresh, and
pretraining-only parts (MLM head, vocabulary projection, decoder layers an
EncT5 head drops) are left behind. Anything that does not fit is an error
naming the parameter, before any training starts.
"""

from __future__ import annotations

import logging
from typing import Mapping

import flax.linen as nn
import numpy as np
from flax import traverse_util

logger = logging.getLogger(__name__)


def graft_pretrained(fresh: Mapping, pretrained: Mapping, *, required_prefixes: tuple[str, ...],
                     source: str = "the checkpoint") -> tuple[dict, list[str], list[str]]:
  """``fresh`` with every leaf that ``pretrained`` also has replaced by the pretrained value.

  Args:
    fresh: The new model's initialised parameters (nested dicts of arrays or shapes;
      leaves boxed with sharding names, ``nn.Partitioned``, keep their box).
    pretrained: The pretraining run's parameters.
    required_prefixes: Top-level names that must come from ``pretrained``
      (e.g. ``("encoder",)``); if none of their leaves is found there, the
      checkpoint belongs to another model family.
    source: How to name the checkpoint in errors.

  Returns:
    ``(params, new_leaves, unused_leaves)``: the grafted tree, the paths
    initialised fresh (task heads), and the pretrained paths left behind.

  Raises:
    ValueError: A shared parameter has another shape, or the checkpoint lacks
      parameters under ``required_prefixes`` (most of them: another family;
      some: another config).
  """
  flat_fresh = traverse_util.flatten_dict(dict(fresh), sep="/")
  flat_old = traverse_util.flatten_dict(dict(nn.meta.unbox(pretrained)), sep="/")
  required = [p for p in flat_fresh if p.split("/")[0] in required_prefixes]
  missing = [p for p in required if p not in flat_old]
  # Mostly missing: not a different size of the same network but another network.
  if required and 2 * len(missing) > len(required):
    raise ValueError(
        f"{source} shares no parameters with this model's {', '.join(required_prefixes)}: it was "
        f"written by another model family (its top-level parameters: "
        f"{sorted({p.split('/')[0] for p in flat_old})}). Fine-tune it with the matching model "
        "config (EncoderConfig for BERT-style/BiGS runs, T5Config for T5/ByT5/MrT5 runs).")
  if missing:
    raise ValueError(f"{source} lacks {len(missing)} parameters this model needs, e.g. "
                     f"{missing[:3]}: the model config differs from the pretraining config "
                     "(depth, mixer, position scheme, quantization?). Use the same model gin file.")
  grafted = {}
  for path, value in flat_fresh.items():
    if path not in flat_old:
      grafted[path] = value
      continue
    # A fresh leaf may be boxed with its sharding names (nn.Partitioned): keep the box.
    target = value.unbox() if isinstance(value, nn.meta.AxisMetadata) else value
    old = np.asarray(flat_old[path])
    if tuple(old.shape) != tuple(target.shape):
      raise ValueError(f"Parameter {path} has shape {tuple(old.shape)} in {source} but "
                       f"{tuple(target.shape)} in this model: the model config differs from the "
                       "pretraining config. Use the same model gin file (and vocabulary).")
    old = old.astype(target.dtype)
    grafted[path] = value.replace_boxed(old) if isinstance(value, nn.meta.AxisMetadata) else old
  new = sorted(p for p in flat_fresh if p not in flat_old)
  unused = sorted(p for p in flat_old if p not in flat_fresh)
  logger.info("Fine-tune init from %s: %d pretrained tensors, %d new (%s), %d left behind.",
              source, len(flat_fresh) - len(new), len(new), ", ".join(new[:6]), len(unused))
  return traverse_util.unflatten_dict(grafted, sep="/"), new, unused
