"""One GLUE/SuperGLUE task in one input format: its seqio task, vocabulary and batches."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator, Optional

import jax
import numpy as np

from lmlab.glue import rows as finetune_data
from lmlab.glue import spec as glue_spec
from lmlab.glue.config import FinetuneConfig


def load_glue_tasks():
  # Imported lazily: it pulls in TensorFlow and registers the tasks.
  from lmlab.glue import tasks as glue_tasks  # pylint: disable=g-import-not-at-top
  return glue_tasks


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a global batch's rows (all of it with one process)."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return batch
  rows = len(next(iter(batch.values())))
  if rows % count:
    raise ValueError(f"A batch of {rows} rows does not split over {count} processes: use a batch "
                     "size divisible by the process count.")
  share = rows // count
  return {k: v[index * share:(index + 1) * share] for k, v in batch.items()}


# Evaluation splits up to this many batch values are built once and kept in memory.
HELD_EVAL_TOKENS = 32_000_000


@dataclasses.dataclass
class TaskData:
  """The seqio task of one spec in one format, and how to turn its examples into batches.

  Every process reads the whole (small) split and builds the same global
  batches; ``local_rows`` picks each process's share before it reaches the
  devices.
  """
  spec: glue_spec.TaskSpec
  seqio_name: str
  text_to_text: bool
  vocabulary: Any
  config: FinetuneConfig
  single_sequence: bool = False  # EncT5: the text-to-text prompt as one encoder row
  framing: Optional[finetune_data.PairFraming] = None  # encoder rows; None: A EOS B EOS
  _held: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def eos_id(self) -> int:
    return int(self.vocabulary.eos_id)

  def examples(self, split: str, *, shuffle: bool, seed: int, repeat: bool,
               limit: Optional[int]):
    import seqio  # pylint: disable=g-import-not-at-top
    task = seqio.get_mixture_or_task(self.seqio_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, seed=seed,
                               try_in_mem_cache=False)
    if limit:
      dataset = dataset.take(limit)
    if shuffle:
      dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      dataset = dataset.repeat()
    return dataset.as_numpy_iterator()

  def batches(self, split: str, batch_size: int, log: finetune_data.TruncationLog, **kwargs):
    """``(batch, meta)`` pairs of global batches (``examples``' keyword arguments)."""
    cfg = self.config
    framing = self.framing or finetune_data.PairFraming(self.eos_id)
    if self.text_to_text:
      make = lambda ex: finetune_data.t2t_row(ex, cfg.sequence_length, cfg.target_length,
                                              self.eos_id, log)
      consumed = finetune_data.T2T_INPUTS
    elif self.single_sequence:
      make = lambda ex: finetune_data.encoder_row({"inputs_a": ex["inputs"]}, cfg.sequence_length,
                                                  framing, log)
      consumed = finetune_data.T2T_INPUTS
    else:
      make = lambda ex: finetune_data.encoder_row(ex, cfg.sequence_length, framing, log)
      consumed = finetune_data.ENCODER_INPUTS
    label_dtype = np.float32 if self.spec.kind == "regression" else np.int32
    return finetune_data.batches(self.examples(split, **kwargs), make, batch_size, consumed,
                                 label_dtype=label_dtype)

  def eval_batches(self, split: str, batch_size: int, limit: Optional[int],
                   log: finetune_data.TruncationLog):
    """``(batch, meta)`` pairs of an evaluation split, in order.

    Built once and kept for the task's later validations (every epoch, every
    seed) when the split is small (``HELD_EVAL_TOKENS``); a larger split is
    streamed again each time.
    """
    key = (split, batch_size, limit)
    if key in self._held:
      return self._held[key]
    stream = self.batches(split, batch_size, log, shuffle=False, seed=0, repeat=False, limit=limit)
    pairs, tokens = [], 0
    for batch, meta in stream:
      pairs.append((batch, meta))
      tokens += sum(np.size(v) for v in batch.values())
      if tokens > HELD_EVAL_TOKENS:  # too big to hold: hand on what was built, then stream
        return itertools.chain(pairs, stream)
    self._held[key] = pairs
    return pairs

  def train_batches(self, batch_size: int, seed: int,
                    log: finetune_data.TruncationLog) -> "callable":
    """A function of the first step giving this process's training batches from that step on.

    The shuffled, repeated stream depends only on ``seed``, so skipping the
    batches of the steps already done puts a resumed run exactly where an
    uninterrupted one would be.
    """
    def from_step(start_step: int) -> Iterator[dict]:
      stream = self.batches(self.spec.train_split, batch_size, log, shuffle=True, seed=seed,
                            repeat=True, limit=self.config.max_train_examples)
      return (local_rows(batch) for batch, _ in itertools.islice(stream, start_step, None))
    return from_step

  def count(self, split: str, limit: Optional[int]) -> int:
    """Rows in a split (after candidate expansion), counted once to size the schedule."""
    return sum(1 for _ in self.examples(split, shuffle=False, seed=0, repeat=False, limit=limit))


def pair_framing(vocabulary, network) -> finetune_data.PairFraming:
  """How encoder rows join sentences for this vocabulary (BERT: [CLS] A [SEP] B [SEP], ...)."""
  from lmlab.data import vocabularies  # pylint: disable=g-import-not-at-top
  special = vocabularies.special_tokens(vocabulary)
  prefix = () if special.cls_id is None else (special.cls_id,)
  token_types = getattr(network, "num_token_types", 2) != 1
  return finetune_data.PairFraming(special.eos_id, prefix, tuple(special.pair_separator), token_types)


def task_data(spec: glue_spec.TaskSpec, config: FinetuneConfig, head: str) -> TaskData:
  """The task of ``spec`` in the format ``head`` reads, tokenized with ``config.vocabulary`` if set."""
  import seqio  # pylint: disable=g-import-not-at-top
  glue_tasks = load_glue_tasks()
  # T5-family models (text to text and EncT5) read the prompt in the T5 vocabulary.
  t5_vocabulary = head in ("text_to_text", "enct5")
  key = ("byt5_t2t" if config.byte_level else "t2t") if t5_vocabulary else (
      "encoder_bytes" if config.byte_level else "encoder")
  name = glue_tasks.TASK_NAMES[spec.name][key]
  if config.vocabulary:
    from lmlab.data import task_vocabulary, vocabularies  # pylint: disable=g-import-not-at-top
    vocab = vocabularies.load_vocabulary(config.vocabulary)
    name = task_vocabulary.with_vocabulary(name, vocab, vocabularies.vocabulary_name(vocab))
  feature = "inputs" if t5_vocabulary else "inputs_a"
  vocabulary = seqio.get_mixture_or_task(name).output_features[feature].vocabulary
  framing = None if t5_vocabulary else pair_framing(vocabulary, config.network)
  return TaskData(spec, name, head == "text_to_text", vocabulary, config,
                  single_sequence=head == "enct5", framing=framing)
