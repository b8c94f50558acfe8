"""seqio tasks for every GLUE and SuperGLUE task, in encoder and text-to-text formats.

For each spec ``s`` of ``lmlab.glue.spec.TASKS`` (read from TFDS):

* ``lmlab.<s>`` / ``lmlab.<s>_bytes``: encoder format (8k SentencePiece /
  UTF-8 bytes). Features ``inputs_a``, ``inputs_b`` (sentence A and B, each
  tokenized with EOS; B is just EOS for single-sentence tasks), ``label``
  (TFDS label id, float for STS-B, -1 on test splits), ``idx`` and ``group``
  (the unit one prediction is made for), plus per-kind extras below.
* ``lmlab.<s>_t2t`` / ``lmlab.<s>_byt5_t2t``: text to text (T5 SentencePiece
  with sentinels / ByT5 bytes). Features ``inputs`` ("rte sentence1: ...
  sentence2: ...") and ``targets`` (the class name, the STS-B score rounded to
  0.2, the ReCoRD answer), with the same ``label``/``idx``/``group``.

Candidate framings (encoder format; one row per candidate, ``label`` 1 on
correct candidates, 0 otherwise):

* COPA: a row per choice, A = premise + "because"/"so" (cause/effect),
  B = the choice; ``choice`` is 0 or 1, ``group`` the example index.
* ReCoRD: a row per distinct candidate entity, A = the passage
  ("@highlight" lines as sentences), B = the query with "@placeholder"
  replaced by the entity; string features ``entity`` and ``answers`` (gold
  answers joined by ``ANSWER_SEPARATOR``); ``group`` = ``idx_query``.
* MultiRC: a row per answer (as in TFDS), A = paragraph, B = question +
  answer; ``group`` = a question id unique across paragraphs
  (``idx_paragraph * 1000 + idx_question``); ids ``idx_paragraph``,
  ``idx_question``, ``idx_answer``.

Other framings: WiC A = "<word>: <sentence1>", B = sentence2; WSC A = the text
with the pronoun marked ``*it*`` and the candidate noun phrase ``#the cat#``,
B = "<pronoun> refers to <noun phrase>". Everything else: the spec's two text
fields. Mixtures ``lmlab.{glue,super_glue}_t2t_{proportional,equal}`` combine
the text-to-text tasks with a training set.

Tasks of a researcher's own files (``lmlab.glue.file_tasks.FileTask``) are
registered the same way, in the same four formats, by
:func:`register_file_tasks`; their examples come from the files (a
``seqio.FunctionDataSource``) instead of TFDS, and their text-to-text prompt
starts with the task's name.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from lmlab.glue import file_tasks
from lmlab.glue import metrics as glue_metrics
from lmlab.data import vocabularies
from lmlab.glue import spec as glue_spec
from lmlab.glue.spec import TaskSpec

logger = logging.getLogger(__name__)

ANSWER_SEPARATOR = "\x1f"
MULTIRC_QUESTIONS_PER_PARAGRAPH = 1000
FORMATS = ("encoder", "encoder_bytes", "t2t", "byt5_t2t")


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _text(value.item())
  return str(value)


def _texts(value: Any) -> list[str]:
  return [_text(v) for v in np.asarray(value).reshape(-1).tolist()]


def _record_passage(passage: str) -> str:
  """The article text followed by its "@highlight" summary lines, as sentences."""
  pieces = [p.strip().rstrip(".") for p in re.split(r"@highlight", passage) if p.strip()]
  return ". ".join(pieces) + "." if pieces else ""


def _wsc_marked(text: str, noun: str, noun_index: int, pronoun: str, pronoun_index: int) -> str:
  """The WSC text with the pronoun as ``*pronoun*`` and the noun phrase as ``#noun phrase#``."""
  words = text.split(" ")
  noun_len = max(1, len(noun.split(" ")))
  marks = {pronoun_index: ("*", "*", max(1, len(pronoun.split(" ")))),
           noun_index: ("#", "#", noun_len)}
  out, i = [], 0
  while i < len(words):
    if i in marks:
      left, right, length = marks[i]
      out.append(left + " ".join(words[i:i + length]) + right)
      i += length
    else:
      out.append(words[i])
      i += 1
  return " ".join(out)


def _stsb_target(score: float) -> str:
  """A score as T5 writes STS-B targets: rounded to 0.2, one decimal ("" when there is none)."""
  if np.isnan(score):
    return ""
  return f"{round(score * 5) / 5:.1f}"


def example_rows(spec: TaskSpec, example: Mapping[str, Any], text_to_text: bool,
                 train: bool) -> list[dict]:
  """The rows one TFDS example becomes (strings and numbers, before tokenization).

  Encoder rows hold ``text_a``/``text_b``; text-to-text rows ``inputs``/``targets``.
  Every row also has ``label``, ``idx``, ``group`` and the kind's extras.
  """
  get = lambda key: _text(example[key])
  label = example.get("label", -1)
  label = float(label) if spec.kind == "regression" else int(label)
  idx = example.get("idx", 0)
  base = {"label": label}
  if spec.name == "super_glue_multirc":
    p, q, a = (int(idx[k]) for k in ("paragraph", "question", "answer"))
    base.update(idx=a, group=p * MULTIRC_QUESTIONS_PER_PARAGRAPH + q, idx_paragraph=p,
                idx_question=q, idx_answer=a)
  elif spec.name == "super_glue_record":
    base.update(idx=int(idx["query"]), group=int(idx["query"]), idx_passage=int(idx["passage"]),
                idx_query=int(idx["query"]))
  else:
    base.update(idx=int(idx), group=int(idx))
  task = spec.name if spec.benchmark == glue_spec.FILE else spec.name.split(
      "_", 2 if spec.benchmark == glue_spec.SUPER_GLUE else 1)[-1]

  if spec.name == "super_glue_copa":
    connector = {"cause": "because", "effect": "so"}.get(get("question"), get("question"))
    choices = [get("choice1"), get("choice2")]
    if text_to_text:
      inputs = (f"copa choice1: {choices[0]} choice2: {choices[1]} premise: {get('premise')} "
                f"question: {get('question')}")
      target = spec.label_names[label] if label >= 0 else ""
      return [{**base, "inputs": inputs, "targets": target, "choice": max(label, 0)}]
    premise = get("premise").rstrip(".")
    return [{**base, "text_a": f"{premise} {connector}", "text_b": choice,
             "label": int(label == i) if label >= 0 else -1, "choice": i}
            for i, choice in enumerate(choices)]

  if spec.name == "super_glue_record":
    passage, query = _record_passage(get("passage")), get("query")
    entities = list(dict.fromkeys(_texts(example["entities"])))
    answers = list(dict.fromkeys(_texts(example["answers"])))
    joined = ANSWER_SEPARATOR.join(answers)
    if text_to_text:
      inputs = f"record query: {query} entities: {', '.join(entities)} passage: {passage}"
      targets = answers if train and answers else [answers[0] if answers else ""]
      return [{**base, "inputs": inputs, "targets": t, "answers": joined, "entity": t}
              for t in targets]
    return [{**base, "text_a": passage, "text_b": query.replace("@placeholder", entity),
             "label": int(entity in answers) if answers else -1, "entity": entity,
             "answers": joined} for entity in entities]

  if spec.name == "super_glue_wsc":
    noun, pronoun = get("span1_text"), get("span2_text")
    marked = _wsc_marked(get("text"), noun, int(example["span1_index"]), pronoun,
                         int(example["span2_index"]))
    if text_to_text:
      return [{**base, "inputs": f"wsc text: {marked} span1: {noun} span2: {pronoun}",
               "targets": spec.label_names[label] if label >= 0 else ""}]
    return [{**base, "text_a": marked, "text_b": f"{pronoun} refers to {noun}"}]

  fields = {name: get(name) for name in spec.text_fields}
  if text_to_text:
    inputs = " ".join([task] + [f"{name}: {value}" for name, value in fields.items()])
    if spec.kind == "regression":
      target = _stsb_target(label)
    else:
      target = spec.label_names[label] if label >= 0 else ""
    return [{**base, "inputs": inputs, "targets": target}]
  if spec.name == "super_glue_wic":
    return [{**base, "text_a": f"{fields['word']}: {fields['sentence1']}",
             "text_b": fields["sentence2"]}]
  if spec.name == "super_glue_multirc":
    return [{**base, "text_a": fields["paragraph"],
             "text_b": f"{fields['question']} {fields['answer']}"}]
  values = list(fields.values())
  return [{**base, "text_a": values[0], "text_b": values[1] if len(values) > 1 else ""}]


UNPARSEABLE_SCORE = -1.0  # T5's string_to_float default


def postprocess_prediction(spec: TaskSpec, text: str) -> Union[int, float, str]:
  """Decoded text-to-text output -> label id, score or entity, as T5's postprocessors.

  A class name that matches no label gives -1 (``string_label_to_class_id``);
  a score that is not a number gives ``UNPARSEABLE_SCORE`` = -1.0
  (``string_to_float``), outside STS-B's 0..5 range.
  """
  text = text.strip()
  if spec.kind == "regression":
    try:
      return float(text)
    except ValueError:
      return UNPARSEABLE_SCORE
  if spec.kind == "entity_ranking":
    return text
  return spec.label_names.index(text) if text in spec.label_names else -1


# ---------------------------------------------------------------------------
# tf.data plumbing
# ---------------------------------------------------------------------------


def _columns(spec: TaskSpec, text_to_text: bool) -> dict[str, tf.DType]:
  text_keys = ("inputs", "targets") if text_to_text else ("text_a", "text_b")
  columns = {k: tf.string for k in text_keys}
  columns.update(label=tf.float32 if spec.kind == "regression" else tf.int32, idx=tf.int32,
                 group=tf.int32)
  if spec.name == "super_glue_copa":
    columns["choice"] = tf.int32
  if spec.name == "super_glue_record":
    columns.update(entity=tf.string, answers=tf.string, idx_passage=tf.int32, idx_query=tf.int32)
  if spec.name == "super_glue_multirc":
    columns.update(idx_paragraph=tf.int32, idx_question=tf.int32, idx_answer=tf.int32)
  return columns


def _flat_keys(example: Mapping[str, Any], prefix: str = "") -> list[str]:
  keys = []
  for key in sorted(example):
    if isinstance(example[key], Mapping):
      keys += _flat_keys(example[key], f"{prefix}{key}/")
    else:
      keys.append(prefix + key)
  return keys


def _lookup(example, key: str):
  for part in key.split("/"):
    example = example[part]
  return example


def expand_examples(spec: TaskSpec, text_to_text: bool, dataset: tf.data.Dataset,
                    split: Optional[str] = None) -> tf.data.Dataset:
  """TFDS examples -> the format's rows (strings not yet tokenized), one element per row."""
  columns = _columns(spec, text_to_text)
  train = split == spec.train_split
  keys = _flat_keys(dataset.element_spec)

  def to_rows(*values):
    example: dict[str, Any] = {}
    for key, value in zip(keys, values):
      node = example
      *parents, leaf = key.split("/")
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = value
    rows = example_rows(spec, example, text_to_text, train)
    out = []
    for name, dtype in columns.items():
      values_ = [row.get(name, "" if dtype == tf.string else 0) for row in rows]
      out.append(np.asarray(values_, dtype=object if dtype == tf.string else dtype.as_numpy_dtype))
    return out

  def map_fn(example):
    outputs = tf.numpy_function(to_rows, [_lookup(example, k) for k in keys],
                                list(columns.values()), stateful=False)
    result = {}
    for (name, _), tensor in zip(columns.items(), outputs):
      tensor.set_shape([None])
      result[name] = tensor
    return tf.data.Dataset.from_tensor_slices(result)

  return dataset.flat_map(map_fn)


class _SplitAwareSource(seqio.TfdsDataSource):
  """A TFDS source whose examples are expanded with knowledge of the split.

  ReCoRD text-to-text makes one training row per gold answer but one row per
  query elsewhere, so the expansion needs the split name, which seqio
  preprocessors do not receive; the source applies it instead.
  """

  def __init__(self, spec: TaskSpec, text_to_text: bool):
    super().__init__(tfds_name=spec.tfds_name)
    self._spec, self._text_to_text = spec, text_to_text

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None,
                  **kwargs) -> tf.data.Dataset:
    dataset = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                  **kwargs)
    return expand_examples(self._spec, self._text_to_text, dataset, split)

  def num_input_examples(self, split: str) -> Optional[int]:
    # Candidate tasks have more rows than TFDS examples, and mocked or partly
    # prepared datasets have no split statistics: report "unknown".
    del split
    return None


def _vocabulary(fmt: str) -> seqio.Vocabulary:
  return {"encoder": vocabularies.embedded_vocabulary,
          "encoder_bytes": vocabularies.byte_vocabulary,
          "t2t": vocabularies.embedded_vocabulary_with_sentinels,
          "byt5_t2t": vocabularies.byt5_vocabulary}[fmt]()


@seqio.map_over_dataset
def _rename_pair(row):
  out = {k: v for k, v in row.items() if k not in ("text_a", "text_b")}
  out["inputs_a"], out["inputs_b"] = row["text_a"], row["text_b"]
  return out


def seqio_postprocessor(spec: TaskSpec):
  """seqio ``postprocess_fn`` of a text-to-text task: outputs and targets in the metric's form.

  Predictions become label ids / scores / entities via
  :func:`postprocess_prediction`; targets are read from the example's own
  ``label`` (or ``answers``), never parsed from target text. MultiRC values
  carry their question id, which exact match groups by.
  """
  def postprocess(output, example=None, is_target=False):
    if is_target:
      if spec.kind == "entity_ranking":
        answers = _text(example["answers"])
        return answers.split(ANSWER_SEPARATOR) if answers else []
      value = float(example["label"]) if spec.kind == "regression" else int(example["label"])
    else:
      value = postprocess_prediction(spec, _text(output))
    if spec.kind == "answer_scoring":
      return {"group": int(example["group"]), "value": value}
    return value
  return postprocess


def task_name(spec_name: str, fmt: str) -> str:
  suffix = {"encoder": "", "encoder_bytes": "_bytes", "t2t": "_t2t", "byt5_t2t": "_byt5_t2t"}[fmt]
  return f"lmlab.{spec_name}{suffix}"


def _file_source(spec: TaskSpec, text_to_text: bool) -> seqio.FunctionDataSource:
  """The rows of a registered file task's examples, read from its files (held in memory)."""
  task = file_tasks.registered(spec.name)
  columns = _columns(spec, text_to_text)

  def dataset_fn(split: str, shuffle_files: bool = False, seed: Optional[int] = None):
    del shuffle_files, seed  # one file per split: the fine-tuning data shuffles the rows
    rows = []
    for example in task.examples(split):
      fields = dict(zip(spec.text_fields, example.texts))
      rows += example_rows(spec, {**fields, "label": example.label, "idx": example.idx},
                           text_to_text, train=split == spec.train_split)
    return tf.data.Dataset.from_tensor_slices({
        name: np.asarray([row[name] for row in rows],
                         object if dtype == tf.string else dtype.as_numpy_dtype)
        for name, dtype in columns.items()})

  counts = {split: len(task.examples(split)) for split in task.paths()}
  return seqio.FunctionDataSource(dataset_fn, splits=list(counts), num_input_examples=counts)


def _register(spec: TaskSpec, fmt: str) -> str:
  name = task_name(spec.name, fmt)
  text_to_text = fmt in ("t2t", "byt5_t2t")
  source = (_file_source(spec, text_to_text) if spec.benchmark == glue_spec.FILE
            else _SplitAwareSource(spec, text_to_text))
  vocab = _vocabulary(fmt)
  keys = ("inputs", "targets") if text_to_text else ("inputs_a", "inputs_b")
  preprocessors = ([] if text_to_text else [_rename_pair]) + [
      seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  # Text-to-text tasks carry their official metrics for seqio's evaluator; encoder-format
  # rows are scored by lmlab.glue.finetune, which owns the heads that make their predictions.
  evaluation = dict(postprocess_fn=seqio_postprocessor(spec),
                    metric_fns=[glue_metrics.seqio_metric_fn(spec)]) if text_to_text else {}
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=preprocessors,
      output_features={k: seqio.Feature(vocab, add_eos=True) for k in keys},
      shuffle_buffer_size=1024, **evaluation)
  return name


TASK_NAMES: dict[str, dict[str, str]] = {
    spec.name: {fmt: _register(spec, fmt) for fmt in FORMATS} for spec in glue_spec.TASKS.values()}


def _register_mixture(name: str, members: list[str], rate_of) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task_name(m, "t2t"), rate_of(m)) for m in members])


for _benchmark, _members in ((glue_spec.GLUE, glue_spec.GLUE_TASKS),
                             (glue_spec.SUPER_GLUE, glue_spec.SUPER_GLUE_TASKS)):
  _trainable = [m for m in _members if not glue_spec.TASKS[m].is_diagnostic]
  _register_mixture(f"lmlab.{_benchmark}_t2t_proportional", _trainable,
                    lambda m: float(glue_spec.TASKS[m].train_examples))
  _register_mixture(f"lmlab.{_benchmark}_t2t_equal", _trainable, lambda m: 1.0)


def register_file_tasks(tasks: Sequence[file_tasks.FileTask],
                        names: Optional[Sequence[str]] = None) -> list[str]:
  """Reads and checks the files of the file tasks ``names`` lists, and registers their seqio tasks.

  Every file is read in full here, so a missing file, column or label fails
  the run before any training. Each task gets ``TASK_NAMES[name]`` in every
  format of ``FORMATS``, like the GLUE tasks. Returns the registered names.
  """
  chosen = file_tasks.select(tasks, names)
  for task in file_tasks.select(tasks, None):
    if task.name not in {t.name for t in chosen}:
      logger.warning("FileTask %r is defined but not in FinetuneConfig.tasks: not fine-tuned.",
                      task.name)
  for task in chosen:
    task.check()
    spec = file_tasks.register(task)
    TASK_NAMES[spec.name] = {fmt: _register(spec, fmt) for fmt in FORMATS}
  return [task.name for task in chosen]


def check_prepared(name: Union[str, TaskSpec], tfds_data_dir: Optional[str]) -> None:
  """Raises if the task's TFDS dataset is not prepared in ``tfds_data_dir``, with the fix.

  Raises:
    ValueError: Unknown task name.
    FileNotFoundError: The dataset is not there; the message has the command
      that prepares it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = name if isinstance(name, TaskSpec) else glue_spec.get_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir)
  if builder.is_prepared():
    return
  where = tfds_data_dir or os.path.expanduser("~/tensorflow_datasets")
  dataset = spec.tfds_name.split(":")[0]
  raise FileNotFoundError(
      f"TFDS dataset {spec.tfds_name} (task {spec.name}) is not prepared in {where}. "
      f"Prepare it with:\n  tfds build {dataset} --data_dir={where}\n"
      f"then pass --tfds_data_dir={where}.")
