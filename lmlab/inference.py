"""``--run_mode=infer`` for encoder–decoder models: decode inputs, write predictions as JSONL.

Inputs come from a UTF-8 text file (one input per line) or from a task's
evaluation split (then each prediction is written next to its target).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

import gin
import jax
import numpy as np

from lmlab.wrappers.encoder_decoder import DECODE_METHODS, EncoderDecoderModel

logger = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InferConfig:
  """What ``--run_mode=infer`` decodes and how.

  Attributes:
    input_file: UTF-8 text file, one input per line (blank lines skipped).
      None: the first ``num_examples`` examples of the task's eval split.
    num_examples: Examples taken from the task when there is no input file.
    batch_size: Rows decoded together.
    max_decode_length: Most target tokens generated per input.
    method: ``greedy``, ``beam`` or ``sample``.
    beam_size: Beams for ``beam``.
    length_penalty_alpha: Beam length penalty exponent.
    temperature: Sampling temperature.
    top_k: Sample from the k most likely tokens (0: all).
    top_p: Nucleus sampling mass (1: all).
    seed: Seed of sampling.
    truncate_inputs: Inputs longer than the configured inputs length are
      truncated with a warning (True) or rejected with an error (False).
    use_cache: Decode with the key/value cache.
    output_file: Where predictions go; None: ``MODEL_DIR/inference/predictions.jsonl``.
  """

  input_file: Optional[str] = None
  num_examples: int = 16
  batch_size: int = 8
  max_decode_length: int = 64
  method: str = "greedy"
  beam_size: int = 4
  length_penalty_alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  truncate_inputs: bool = True
  use_cache: bool = True
  output_file: Optional[str] = None

  def __post_init__(self):
    if self.method not in DECODE_METHODS:
      raise ValueError(f"InferConfig.method={self.method!r} is not one of {DECODE_METHODS}.")
    if self.batch_size < 1 or self.max_decode_length < 1:
      raise ValueError("InferConfig needs batch_size >= 1 and max_decode_length >= 1.")


def read_input_lines(path: str) -> list[str]:
  """Non-blank lines of a UTF-8 file; invalid UTF-8 is an error naming the line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"InferConfig.input_file {path!r} does not exist.")
  lines = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{number} is not valid UTF-8 ({e.reason} at byte {e.start}); "
                         "re-encode the file as UTF-8.") from e
      if text.strip():
        lines.append(text.rstrip("\r\n"))
  if not lines:
    raise ValueError(f"InferConfig.input_file {path!r} has no non-blank line to decode.")
  return lines


def _task_examples(task_name: str, split: str, lengths: dict, count: int):
  """(input ids, input text, target text) of the task's first ``count`` examples."""
  from lmlab.data import pipeline  # pylint: disable=g-import-not-at-top
  provider = pipeline.get_task_or_mixture(task_name)
  dataset = provider.get_dataset(sequence_length=dict(lengths), split=split, shuffle=False,
                                 num_epochs=1, use_cached=False)
  vocab = provider.output_features["inputs"].vocabulary
  examples = []
  for ex in dataset.take(count).as_numpy_iterator():
    inputs = [int(t) for t in ex["inputs"]]
    examples.append((inputs, vocab.decode(inputs), vocab.decode([int(t) for t in ex["targets"]])))
  if not examples:
    raise ValueError(f"Task {task_name!r} split {split!r} yielded no example to decode.")
  return examples


def run_seq2seq_infer(model: EncoderDecoderModel, params, step: int, task_name: str, split: str,
                      lengths: dict, model_dir: str, config: Optional[InferConfig] = None) -> list[dict]:
  """Decodes every input and writes one JSON object per line; returns the records."""
  from lmlab.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config or InferConfig()
  vocab = pipeline.vocabulary_for(task_name)
  inputs_length = int(lengths["inputs"])
  if config.input_file:
    texts = read_input_lines(config.input_file)
    ids, _ = pipeline.encode_inputs(task_name, texts, inputs_length, truncate=config.truncate_inputs)
    examples = [(list(row), text, None) for row, text in zip(np.asarray(ids), texts)]
  else:
    examples = _task_examples(task_name, split, lengths, config.num_examples)
  rng = jax.random.PRNGKey(config.seed)
  records = []
  for start in range(0, len(examples), config.batch_size):
    chunk = examples[start:start + config.batch_size]
    batch = np.zeros((config.batch_size, inputs_length), np.int32)
    for row, (ids, _, _) in enumerate(chunk):
      ids = [t for t in ids if t][:inputs_length]
      batch[row, :len(ids)] = ids
    batch[len(chunk):, 0] = model.config.eos_id  # filler rows must not be empty
    rng, key = jax.random.split(rng)
    result = jax.device_get(model.predict(
        params, batch, max_decode_length=config.max_decode_length, method=config.method,
        beam_size=config.beam_size, length_penalty_alpha=config.length_penalty_alpha,
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, rng=key,
        use_cache=config.use_cache))
    tokens = result.tokens[:, 0] if result.tokens.ndim == 3 else result.tokens
    for row, (_, text, target) in enumerate(chunk):
      predicted = [int(t) for t in tokens[row] if t not in (model.config.pad_id, model.config.eos_id)]
      record = {"input": text, "prediction": vocab.decode(predicted), "step": step}
      if target is not None:
        record["target"] = target
      records.append(record)
  if jax.process_index() == 0:
    path = config.output_file or os.path.join(model_dir, "inference", "predictions.jsonl")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    logger.info("Wrote %d predictions to %s", len(records), path)
  return records
