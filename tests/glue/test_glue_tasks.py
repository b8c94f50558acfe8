"""GLUE/SuperGLUE preprocessing: one real-shaped example per task, label round trips, registry."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from lmlab.glue import spec as glue_spec
from lmlab.glue import tasks as glue_tasks
from lmlab.glue.spec import BUILTIN_TASKS, TASKS as ALL_TASKS

# The built-in GLUE/SuperGLUE tasks (file tasks registered by other tests join ALL_TASKS).
TASKS = {name: spec for name, spec in ALL_TASKS.items() if name in BUILTIN_TASKS}

# One example per task, shaped like the TFDS features (strings, ids, labels).
PAIR = {"sentence1": "The cat sat.", "sentence2": "A cat was sitting."}
EXAMPLES = {
    "glue_cola": {"sentence": "They drank the pub.", "label": 0, "idx": 5},
    "glue_sst2": {"sentence": "a gorgeous film", "label": 1, "idx": 6},
    "glue_mrpc": {**PAIR, "label": 1, "idx": 7},
    "glue_qqp": {"question1": "How old are you?", "question2": "What is your age?", "label": 1,
                 "idx": 8},
    "glue_stsb": {**PAIR, "label": 3.85, "idx": 9},
    "glue_mnli": {"premise": "He ran.", "hypothesis": "He moved.", "label": 0, "idx": 10},
    "glue_qnli": {"question": "Who ran?", "sentence": "Ann ran.", "label": 0, "idx": 11},
    "glue_rte": {**PAIR, "label": 1, "idx": 12},
    "glue_wnli": {**PAIR, "label": 1, "idx": 13},
    "glue_ax": {"premise": "He ran.", "hypothesis": "He sat.", "label": -1, "idx": 14},
    "super_glue_boolq": {"question": "is it wet", "passage": "It rained.", "label": 1, "idx": 1},
    "super_glue_cb": {"premise": "He said it rained.", "hypothesis": "It rained.", "label": 2,
                      "idx": 2},
    "super_glue_copa": {"premise": "The man fell.", "choice1": "He slipped.",
                        "choice2": "He sang.", "question": "cause", "label": 0, "idx": 3},
    "super_glue_multirc": {"paragraph": "Ann has a dog.", "question": "What does Ann have?",
                           "answer": "A dog", "label": 1,
                           "idx": {"paragraph": 4, "question": 2, "answer": 9}},
    "super_glue_record": {"passage": "Paris is big.\n@highlight\nLyon is far",
                          "query": "@placeholder is big.", "entities": ["Paris", "Lyon", "Paris"],
                          "answers": ["Paris"], "idx": {"passage": 3, "query": 17}},
    "super_glue_rte": {"premise": "He ran.", "hypothesis": "He moved.", "label": 0, "idx": 4},
    "super_glue_wic": {"word": "bank", "sentence1": "The river bank.",
                       "sentence2": "The bank loan.", "start1": 10, "end1": 14, "start2": 4,
                       "end2": 8, "label": 0, "idx": 5},
    "super_glue_wsc": {"text": "The cat chased the mouse because it was hungry.",
                       "span1_index": 0, "span1_text": "The cat", "span2_index": 6,
                       "span2_text": "it", "label": 1, "idx": 6},
    "super_glue_axb": {"sentence1": "He ran.", "sentence2": "He sat.", "label": 1, "idx": 7},
    "super_glue_axg": {"premise": "She ran.", "hypothesis": "Someone ran.", "label": 0, "idx": 8},
}

# (text_a, text_b, label) of the encoder format's first row; t2t (inputs, targets).
ENCODER = {
    "glue_cola": ("They drank the pub.", "", 0),
    "glue_sst2": ("a gorgeous film", "", 1),
    "glue_mrpc": ("The cat sat.", "A cat was sitting.", 1),
    "glue_qqp": ("How old are you?", "What is your age?", 1),
    "glue_stsb": ("The cat sat.", "A cat was sitting.", 3.85),
    "glue_mnli": ("He ran.", "He moved.", 0),
    "glue_qnli": ("Who ran?", "Ann ran.", 0),
    "glue_rte": ("The cat sat.", "A cat was sitting.", 1),
    "glue_wnli": ("The cat sat.", "A cat was sitting.", 1),
    "glue_ax": ("He ran.", "He sat.", -1),
    "super_glue_boolq": ("is it wet", "It rained.", 1),
    "super_glue_cb": ("He said it rained.", "It rained.", 2),
    "super_glue_copa": ("The man fell because", "He slipped.", 1),
    "super_glue_multirc": ("Ann has a dog.", "What does Ann have? A dog", 1),
    "super_glue_record": ("Paris is big. Lyon is far.", "Paris is big.", 1),
    "super_glue_rte": ("He ran.", "He moved.", 0),
    "super_glue_wic": ("bank: The river bank.", "The bank loan.", 0),
    "super_glue_wsc": ("#The cat# chased the mouse because *it* was hungry.",
                       "it refers to The cat", 1),
    "super_glue_axb": ("He ran.", "He sat.", 1),
    "super_glue_axg": ("She ran.", "Someone ran.", 0),
}
T2T = {
    "glue_cola": ("cola sentence: They drank the pub.", "unacceptable"),
    "glue_sst2": ("sst2 sentence: a gorgeous film", "positive"),
    "glue_mrpc": ("mrpc sentence1: The cat sat. sentence2: A cat was sitting.", "equivalent"),
    "glue_qqp": ("qqp question1: How old are you? question2: What is your age?", "duplicate"),
    "glue_stsb": ("stsb sentence1: The cat sat. sentence2: A cat was sitting.", "3.8"),
    "glue_mnli": ("mnli premise: He ran. hypothesis: He moved.", "entailment"),
    "glue_qnli": ("qnli question: Who ran? sentence: Ann ran.", "entailment"),
    "glue_rte": ("rte sentence1: The cat sat. sentence2: A cat was sitting.", "not_entailment"),
    "glue_wnli": ("wnli sentence1: The cat sat. sentence2: A cat was sitting.", "entailment"),
    "glue_ax": ("ax premise: He ran. hypothesis: He sat.", ""),
    "super_glue_boolq": ("boolq question: is it wet passage: It rained.", "True"),
    "super_glue_cb": ("cb premise: He said it rained. hypothesis: It rained.", "neutral"),
    "super_glue_copa": ("copa choice1: He slipped. choice2: He sang. premise: The man fell. "
                        "question: cause", "choice1"),
    "super_glue_multirc": ("multirc paragraph: Ann has a dog. question: What does Ann have? "
                           "answer: A dog", "True"),
    "super_glue_record": ("record query: @placeholder is big. entities: Paris, Lyon passage: "
                          "Paris is big. Lyon is far.", "Paris"),
    "super_glue_rte": ("rte premise: He ran. hypothesis: He moved.", "entailment"),
    "super_glue_wic": ("wic word: bank sentence1: The river bank. sentence2: The bank loan.",
                       "False"),
    "super_glue_wsc": ("wsc text: #The cat# chased the mouse because *it* was hungry. span1: The "
                       "cat span2: it", "True"),
    "super_glue_axb": ("axb sentence1: He ran. sentence2: He sat.", "not_entailment"),
    "super_glue_axg": ("axg premise: She ran. hypothesis: Someone ran.", "entailment"),
}


def test_every_task_has_an_example_and_expectations():
  assert set(EXAMPLES) == set(TASKS) == set(ENCODER) == set(T2T)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_one_example_becomes_the_expected_rows(name):
  spec = TASKS[name]
  rows = glue_tasks.example_rows(spec, EXAMPLES[name], text_to_text=False, train=False)
  text_a, text_b, label = ENCODER[name]
  assert (rows[0]["text_a"], rows[0]["text_b"]) == (text_a, text_b)
  assert rows[0]["label"] == pytest.approx(label)
  (t2t,) = glue_tasks.example_rows(spec, EXAMPLES[name], text_to_text=True, train=False)
  assert (t2t["inputs"], t2t["targets"]) == T2T[name]


def test_candidate_tasks_expand_to_one_row_per_candidate():
  copa = glue_tasks.example_rows(TASKS["super_glue_copa"], EXAMPLES["super_glue_copa"], False, True)
  assert [(r["choice"], r["label"], r["group"]) for r in copa] == [(0, 1, 3), (1, 0, 3)]
  assert copa[1]["text_b"] == "He sang."
  record = glue_tasks.example_rows(TASKS["super_glue_record"], EXAMPLES["super_glue_record"],
                                   False, True)
  assert [(r["entity"], r["label"]) for r in record] == [("Paris", 1), ("Lyon", 0)]  # deduped
  assert record[1]["text_b"] == "Lyon is big." and record[0]["group"] == 17
  many = dict(EXAMPLES["super_glue_record"], answers=["Paris", "Lyon"])
  train = glue_tasks.example_rows(TASKS["super_glue_record"], many, True, train=True)
  assert [r["targets"] for r in train] == ["Paris", "Lyon"]  # one training row per answer
  (val,) = glue_tasks.example_rows(TASKS["super_glue_record"], many, True, train=False)
  assert val["answers"] == "Paris\x1fLyon"
  multirc = glue_tasks.example_rows(TASKS["super_glue_multirc"], EXAMPLES["super_glue_multirc"],
                                    False, True)
  assert multirc[0]["group"] == 4 * glue_tasks.MULTIRC_QUESTIONS_PER_PARAGRAPH + 2
  assert (multirc[0]["idx_paragraph"], multirc[0]["idx_question"], multirc[0]["idx_answer"]) == (
      4, 2, 9)


@pytest.mark.parametrize("name", sorted(n for n, s in TASKS.items() if s.label_names))
def test_labels_round_trip_through_target_text(name):
  spec = TASKS[name]
  for label in range(len(spec.label_names)):
    example = dict(EXAMPLES[name], label=label)
    (row,) = glue_tasks.example_rows(spec, example, text_to_text=True, train=False)
    assert glue_tasks.postprocess_prediction(spec, row["targets"]) == label
  assert glue_tasks.postprocess_prediction(spec, "no such class") == -1


def _t5_string_to_float(string, default=-1.0):
  """t5/data/postprocessors.py string_to_float."""
  try:
    return float(string)
  except ValueError:
    return default


def test_stsb_and_record_postprocessing():
  assert glue_tasks.postprocess_prediction(TASKS["glue_stsb"], "3.8") == pytest.approx(3.8)
  assert glue_tasks.postprocess_prediction(TASKS["super_glue_record"], " Paris ") == "Paris"


@pytest.mark.parametrize("text", ["three", "", "3.8.1", "n/a", "4,2"])
def test_unparseable_stsb_score_is_minus_one_like_t5(text):
  stsb = TASKS["glue_stsb"]
  assert glue_tasks.postprocess_prediction(stsb, text) == _t5_string_to_float(text) == -1.0
  # The seqio path scores it as -1 too: predictions 1 -1 3 against labels 1 2 3, centred
  # 0 -2 2 and -1 0 1: r = 2 / sqrt(8 * 2) = 1/2 (reading it as 0.0 instead gave r = 0.65).
  task = seqio.get_mixture_or_task("lmlab.glue_stsb_t2t")
  examples = [{"label": 1.0}, {"label": 2.0}, {"label": 3.0}]
  targets = [task.postprocess_fn("", example=e, is_target=True) for e in examples]
  predictions = [task.postprocess_fn(t, example=e) for t, e in zip(["1.0", text, "3.0"], examples)]
  assert predictions == [1.0, -1.0, 3.0]
  assert task.metric_fns[0](targets, predictions)["pearson"] == pytest.approx(50.0)


def test_every_format_and_mixture_is_registered():
  for name, formats in glue_tasks.TASK_NAMES.items():
    assert set(formats) == set(glue_tasks.FORMATS)
    for task in formats.values():
      assert task in seqio.TaskRegistry.names()
  glue = seqio.get_mixture_or_task("lmlab.glue_t2t_proportional")
  assert {t.name for t in glue.tasks} == {f"lmlab.{n}_t2t" for n in glue_spec.GLUE_TASKS
                                           if n != "glue_ax"}
  assert glue.get_rate(seqio.get_mixture_or_task("lmlab.glue_rte_t2t")) == 2490
  equal = seqio.get_mixture_or_task("lmlab.super_glue_t2t_equal")
  assert len(equal.tasks) == 8


@pytest.mark.parametrize("name", ["lmlab.glue_mrpc", "lmlab.super_glue_copa_t2t",
                                  "lmlab.super_glue_record"])
def test_seqio_tasks_read_tfds_examples(name):
  """Through seqio with TFDS's mock of the real feature spec: tokenized, EOS-terminated rows."""
  with tfds.testing.mock_data(num_examples=4):
    task = seqio.get_mixture_or_task(name)
    rows = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False,
                                 try_in_mem_cache=False).as_numpy_iterator())
  keys = ("inputs", "targets") if name.endswith("_t2t") else ("inputs_a", "inputs_b")
  assert len(rows) >= 4
  for row in rows:
    for key in keys:
      assert row[key][-1] == 1 and row[key].dtype == np.int32
    assert {"label", "idx", "group"} <= set(row)


def test_unprepared_data_and_unknown_tasks_say_how_to_fix_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"tfds build glue/rte --data_dir={tmp_path}"):
    glue_tasks.check_prepared("glue_rte", str(tmp_path))
  with pytest.raises(ValueError, match="Unknown GLUE/SuperGLUE task 'glue_nope'"):
    glue_tasks.check_prepared("glue_nope", str(tmp_path))


def test_text_to_text_tasks_score_with_their_official_metrics():
  """seqio's evaluation path: postprocess outputs and targets, then the task's metric function."""
  task = seqio.get_mixture_or_task("lmlab.glue_mrpc_t2t")
  examples = [{"label": 1}, {"label": 0}, {"label": 1}]
  targets = [task.postprocess_fn("", example=e, is_target=True) for e in examples]
  predictions = [task.postprocess_fn(t, example=e) for t, e in
                 zip(["equivalent", "equivalent", "bogus"], examples)]
  assert predictions == [1, 1, -1]
  (metric_fn,) = task.metric_fns
  scores = metric_fn(targets, predictions)
  # accuracy 1/3; F1 of class 1: TP 1, FP 1, FN 1 -> 0.5
  assert scores["accuracy"] == pytest.approx(100 / 3) and scores["f1"] == pytest.approx(50.0)
  record = seqio.get_mixture_or_task("lmlab.super_glue_record_t2t")
  gold = record.postprocess_fn("", example={"answers": b"Paris\x1fthe Paris"}, is_target=True)
  assert gold == ["Paris", "the Paris"]
  assert record.metric_fns[0]([gold], ["paris"])["record_exact_match"] == 100.0
  multirc = seqio.get_mixture_or_task("lmlab.super_glue_multirc_t2t")
  rows = [{"group": 7, "label": 1}, {"group": 7, "label": 0}, {"group": 8, "label": 1}]
  targets = [multirc.postprocess_fn("", example=r, is_target=True) for r in rows]
  predictions = [multirc.postprocess_fn(t, example=r) for t, r in zip(["True", "False", "False"], rows)]
  scores = multirc.metric_fns[0](targets, predictions)
  assert scores["exact_match"] == pytest.approx(50.0)  # question 7 right, question 8 wrong


def test_specs_are_found_from_every_format_name():
  for name, formats in glue_tasks.TASK_NAMES.items():
    for task in formats.values():
      assert glue_spec.get_spec(task).name == name
