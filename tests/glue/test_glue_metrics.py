"""GLUE/SuperGLUE metrics against hand-computed values, including the degenerate cases.

Every expected number below is worked out by hand in the comment beside it;
scores are percentages. Any warning is an error here: the degenerate cases
must give a defined number quietly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from lmlab.glue import metrics as gm
from lmlab.glue import seeds
from lmlab.glue.spec import TASKS

pytestmark = pytest.mark.filterwarnings("error")


# ---------------------------------------------------------------------------
# Classification and regression
# ---------------------------------------------------------------------------


def test_matthews_correlation_on_a_hand_counted_confusion_matrix():
  labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
  predictions = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
  # TP 3 (rows 0-2), FN 1 (row 3), FP 2 (rows 4-5), TN 4 (rows 6-9)
  # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
  #     = (12 - 2) / sqrt(5 * 4 * 6 * 5) = 10 / sqrt(600) = 1 / sqrt(6)
  assert gm.matthews_corrcoef(predictions, labels) == pytest.approx(100 / math.sqrt(6))
  assert gm.matthews_corrcoef([0, 1, 1], [0, 1, 1]) == pytest.approx(100.0)
  assert gm.matthews_corrcoef([1, 0, 0], [0, 1, 1]) == pytest.approx(-100.0)


def test_matthews_correlation_is_zero_for_one_class():
  assert gm.matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0  # one predicted class
  assert gm.matthews_corrcoef([1, 0, 1, 0], [0, 0, 0, 0]) == 0.0  # one gold class
  assert gm.matthews_corrcoef([2, 2], [2, 2]) == 0.0  # both


def test_mrpc_f1_and_accuracy_by_hand():
  labels = [1, 1, 1, 0, 0, 1]
  predictions = [1, 0, 1, 1, 0, 1]
  # TP 3 (rows 0, 2, 5), FN 1 (row 1), FP 1 (row 3), TN 1 (row 4)
  # P = 3/4, R = 3/4 -> F1 = 3/4; accuracy = 4/6
  assert gm.f1(predictions, labels) == pytest.approx(75.0)
  assert gm.accuracy(predictions, labels) == pytest.approx(200 / 3)
  scores = gm.compute(TASKS["glue_mrpc"], predictions, labels)
  assert scores == pytest.approx({"f1": 75.0, "accuracy": 200 / 3,
                                  "average": (75.0 + 200 / 3) / 2})


def test_f1_degenerate_and_unparseable_predictions():
  assert gm.f1([0, 0, 0], [1, 0, 1]) == 0.0  # no positive prediction: P = 0/0
  assert gm.f1([1, 0], [0, 0]) == 0.0  # no positive label: R = 0/0
  # A text-to-text output that failed to parse (-1) against label 1 is a wrong negative:
  # labels 1 1 0, predictions 1 -1 0: TP 1, FN 1, FP 0 -> P 1, R 1/2, F1 2/3
  assert gm.f1([1, -1, 0], [1, 1, 0]) == pytest.approx(200 / 3)


def _t5_f1_score_with_invalid(targets, predictions) -> float:
  """t5/evaluation/metrics.py f1_score_with_invalid: an invalid prediction becomes 1 - target."""
  targets, predictions = np.asarray(targets), np.array(predictions)
  invalid = np.logical_and(predictions != 0, predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  return 100 * float(sk_metrics.f1_score(targets, predictions))


def test_f1_counts_an_invalid_prediction_as_wrong_like_t5():
  # predictions -1 1, labels 0 1: T5 reads -1 as 1 (the opposite of 0), a false positive:
  # TP 1, FP 1, FN 0 -> P 1/2, R 1 -> F1 2/3 (as "not positive" it was a free true negative: F1 1)
  assert _t5_f1_score_with_invalid([0, 1], [-1, 1]) == pytest.approx(200 / 3)
  assert gm.f1([-1, 1], [0, 1]) == pytest.approx(200 / 3)
  assert gm.multirc_f1a([-1, 1], [0, 1]) == pytest.approx(200 / 3)
  assert gm.compute(TASKS["glue_qqp"], [-1, 1], [0, 1]) == pytest.approx(
      {"f1": 200 / 3, "accuracy": 50.0, "average": (200 / 3 + 50.0) / 2})
  rng = np.random.default_rng(0)
  for _ in range(50):
    labels = rng.integers(0, 2, size=20)
    predictions = rng.choice([-1, 0, 1, 2], size=20)
    assert gm.f1(predictions, labels) == pytest.approx(_t5_f1_score_with_invalid(labels, predictions))
    # Accuracy and MCC take the invalid ids as they are, as T5's scikit-learn calls do.
    assert gm.accuracy(predictions, labels) == pytest.approx(
        100 * sk_metrics.accuracy_score(labels, predictions))
    assert gm.matthews_corrcoef(predictions, labels) == pytest.approx(
        100 * sk_metrics.matthews_corrcoef(labels, predictions))


def test_cb_macro_f1_over_three_classes():
  labels = [0, 0, 0, 1, 1, 2]
  predictions = [0, 0, 1, 1, 2, 2]
  # class 0: TP 2, FP 0, FN 1 -> P 1,   R 2/3 -> F1 4/5
  # class 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2 -> F1 1/2
  # class 2: TP 1, FP 1, FN 0 -> P 1/2, R 1   -> F1 2/3
  # mean = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
  assert gm.macro_f1(predictions, labels) == pytest.approx(100 * 59 / 90)
  scores = gm.compute(TASKS["super_glue_cb"], predictions, labels)
  # accuracy 4/6
  assert scores == pytest.approx({"accuracy": 200 / 3, "macro_f1": 100 * 59 / 90,
                                  "average": (200 / 3 + 100 * 59 / 90) / 2})


def test_macro_f1_does_not_make_an_unparseable_prediction_a_class():
  # labels 0 1 2, predictions 0 1 -1: classes 0 and 1 F1 1, class 2 F1 0
  # with num_classes=3 the mean is over {0, 1, 2}: 2/3
  assert gm.macro_f1([0, 1, -1], [0, 1, 2], num_classes=3) == pytest.approx(200 / 3)
  # without it, -1 is a fourth class with F1 0: 2/4
  assert gm.macro_f1([0, 1, -1], [0, 1, 2]) == pytest.approx(50.0)


def test_pearson_and_spearman_by_hand():
  # x = 1 2 3 4 (mean 2.5), y = 2 4 5 9 (mean 5)
  # dx = -1.5 -.5 .5 1.5, dy = -3 -1 0 4
  # Sxy = 4.5 + .5 + 0 + 6 = 11, Sxx = 5, Syy = 9 + 1 + 0 + 16 = 26
  # r = 11 / sqrt(130)
  assert gm.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(100 * 11 / math.sqrt(130))
  # y is increasing, so the ranks agree exactly
  assert gm.spearman([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(100.0)
  # ranks of y = 10 30 20 40 are 1 3 2 4: d = 0 -1 1 0, sum d^2 = 2
  # rho = 1 - 6 * 2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8
  assert gm.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(80.0)
  # ties take the mean rank: x = 1 1 2 -> 1.5 1.5 3, y ranks 1 2 3
  # dx = -.5 -.5 1, dy = -1 0 1: 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2
  assert gm.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(100 * math.sqrt(3) / 2)


def test_correlations_are_zero_for_a_constant_vector():
  assert gm.pearson([2.5, 2.5, 2.5], [1.0, 3.0, 2.0]) == 0.0
  assert gm.spearman([2.5, 2.5, 2.5], [1.0, 3.0, 2.0]) == 0.0
  assert gm.pearson([1.0, 3.0, 2.0], [4.0, 4.0, 4.0]) == 0.0
  with pytest.raises(ValueError, match="finite"):
    gm.pearson([1.0, float("nan")], [1.0, 2.0])


@pytest.mark.parametrize("fn", [gm.accuracy, gm.matthews_corrcoef, gm.f1, gm.macro_f1,
                                gm.pearson, gm.spearman])
def test_empty_or_mismatched_inputs_are_errors(fn):
  with pytest.raises(ValueError, match="empty"):
    fn([], [])
  with pytest.raises(ValueError, match="2 predictions for 3 labels"):
    fn([1, 0], [1, 0, 1])


# ---------------------------------------------------------------------------
# MultiRC
# ---------------------------------------------------------------------------


def test_multirc_f1a_and_exact_match_over_three_questions():
  groups = ["a", "a", "a", "b", "b", "c", "c"]
  labels = [1, 0, 1, 0, 1, 0, 0]
  predictions = [1, 0, 1, 1, 1, 0, 0]
  # question a: all 3 right; b: row 3 wrong; c: both right -> EM 2/3
  assert gm.multirc_exact_match(predictions, labels, groups) == pytest.approx(200 / 3)
  # F1a over the 7 options: TP 3 (rows 0, 2, 4), FP 1 (row 3), FN 0
  # P 3/4, R 1 -> F1 = 2 * 3/4 / (7/4) = 6/7
  assert gm.multirc_f1a(predictions, labels) == pytest.approx(600 / 7)
  scores = gm.compute(TASKS["super_glue_multirc"], predictions, labels, groups=groups)
  assert scores == pytest.approx({"f1a": 600 / 7, "exact_match": 200 / 3,
                                  "average": (600 / 7 + 200 / 3) / 2})


def test_multirc_exact_match_does_not_depend_on_row_order():
  # the same answers as above, interleaved across questions
  order = [5, 3, 0, 6, 1, 4, 2]
  groups = np.array(["a", "a", "a", "b", "b", "c", "c"])[order]
  labels = np.array([1, 0, 1, 0, 1, 0, 0])[order]
  predictions = np.array([1, 0, 1, 1, 1, 0, 0])[order]
  assert gm.multirc_exact_match(predictions, labels, groups) == pytest.approx(200 / 3)
  with pytest.raises(ValueError, match="groups"):
    gm.compute(TASKS["super_glue_multirc"], predictions, labels)


# ---------------------------------------------------------------------------
# ReCoRD
# ---------------------------------------------------------------------------


def test_record_answer_normalisation():
  assert gm.normalize_answer("The  U.S.  Army!") == "us army"
  assert gm.normalize_answer("An Apple, a day.") == "apple day"
  assert gm.normalize_answer("Theodore") == "theodore"  # only whole-word articles go
  # "the Eiffel Tower" and "Eiffel Tower" normalise alike
  assert gm.exact_match("the Eiffel Tower", "EIFFEL tower.") == 1.0


def test_record_f1_and_exact_match_take_the_best_gold_answer():
  predictions = ["the Eiffel Tower", "Paris, France", "Berlin", "New York City"]
  answers = [["Eiffel Tower", "Tower"], ["PARIS", "Lyon France"], ["Bonn"],
             ["York", "new york"]]
  # q1: "eiffel tower" equals the first answer -> F1 1, EM 1
  # q2: "paris france" vs "paris": 1 shared, P 1/2, R 1 -> 2/3;
  #     vs "lyon france": 1 shared, P 1/2, R 1/2 -> 1/2. Best 2/3, EM 0
  # q3: nothing shared -> 0, 0
  # q4: "new york city" vs "york": P 1/3, R 1 -> 1/2;
  #     vs "new york": P 2/3, R 1 -> 4/5. Best (the second) 4/5, EM 0
  # F1 = (1 + 2/3 + 0 + 4/5) / 4 = 37/60, EM = 1/4
  scores = gm.record_scores(predictions, answers)
  assert scores == pytest.approx({"record_f1": 100 * 37 / 60, "record_exact_match": 25.0})
  full = gm.compute(TASKS["super_glue_record"], predictions, answers=answers)
  assert full == pytest.approx({**scores, "average": (100 * 37 / 60 + 25.0) / 2})


def test_record_edge_cases():
  # repeated tokens count once per match: "cat cat" vs "cat": 1 shared, P 1/2, R 1 -> 2/3
  assert gm.token_f1("cat cat", "cat") == pytest.approx(2 / 3)
  assert gm.record_scores(["x"], [[]]) == {"record_f1": 0.0, "record_exact_match": 0.0}
  with pytest.raises(ValueError, match="empty"):
    gm.record_scores([], [])
  with pytest.raises(ValueError, match="2 predictions for 1 answer lists"):
    gm.record_scores(["a", "b"], [["a"]])


# ---------------------------------------------------------------------------
# AX-g
# ---------------------------------------------------------------------------


def test_gender_parity_pairs_consecutive_indices():
  # by idx the predictions are 1 1 | 0 1 | 0 0: pairs agree, differ, agree -> 2/3
  assert gm.gender_parity([1, 1, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5]) == pytest.approx(200 / 3)
  # the same examples shuffled: rows hold idx 0 2 1 4 3 5, so the predictions
  # are 1 0 1 0 1 0; pairing rows as they come would give 0, sorting gives 2/3
  assert gm.gender_parity([1, 0, 1, 0, 1, 0], [0, 2, 1, 4, 3, 5]) == pytest.approx(200 / 3)


def test_gender_parity_errors_and_compute():
  with pytest.raises(ValueError, match="odd"):
    gm.gender_parity([1, 1, 0], [0, 1, 2])
  with pytest.raises(ValueError, match="duplicates"):
    gm.gender_parity([1, 1], [0, 0])
  spec = TASKS["super_glue_axg"]
  # parity as above (2/3); labels 1 1 0 0 0 1 vs predictions 1 1 0 1 0 0: 4/6 right
  scores = gm.compute(spec, [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 0, 1], idx=[0, 1, 2, 3, 4, 5])
  assert scores == pytest.approx({"gender_parity": 200 / 3, "accuracy": 200 / 3})
  assert gm.main_score(spec, scores) == pytest.approx(200 / 3)


# ---------------------------------------------------------------------------
# Candidate aggregation
# ---------------------------------------------------------------------------


def test_argmax_per_group_picks_the_best_row_and_the_first_on_ties():
  scores = [0.2, 0.7, 0.5, 0.5, -1.0, 3.0, 1.0, 3.0]
  groups = [10, 10, 11, 11, 12, 13, 13, 13]
  # 10: 0.7 at row 1; 11: tie 0.5 -> first row 2; 12: single row 4; 13: tie 3.0 -> row 5
  assert gm.argmax_per_group(scores, groups) == {10: 1, 11: 2, 12: 4, 13: 5}


def test_argmax_per_group_with_interleaved_groups_and_nan():
  # COPA-like: two rows per example, interleaved; "a" -> row 3 (3 > 2), "b" tie -> row 0
  assert gm.argmax_per_group([1.0, 2.0, 1.0, 3.0], ["b", "a", "b", "a"]) == {"a": 3, "b": 0}
  # a NaN score never beats a real one; an all-NaN group takes its first row
  nan = float("nan")
  assert gm.argmax_per_group([nan, 0.1, nan, nan], [0, 0, 1, 1]) == {0: 1, 1: 2}
  assert gm.argmax_per_group([], []) == {}


def test_copa_from_candidate_scores():
  # examples 0 and 1, rows (choice 0, choice 1) each; gold choices 1 and 1
  best = gm.argmax_per_group([0.1, 0.9, 0.8, 0.3], [0, 0, 1, 1])
  choice = [0, 1, 0, 1]
  predictions = [choice[best[g]] for g in sorted(best)]  # 1, 0
  assert gm.compute(TASKS["super_glue_copa"], predictions, [1, 1]) == {"accuracy": 50.0}


# ---------------------------------------------------------------------------
# compute / main_score over the spec table
# ---------------------------------------------------------------------------


def _inputs(spec) -> dict:
  """Small valid inputs of the right kind for ``spec``."""
  if spec.kind == "regression":
    return dict(predictions=[0.5, 1.5, 2.5, 3.5], labels=[0.0, 2.0, 2.0, 4.0])
  if spec.kind == "answer_scoring":
    return dict(predictions=[1, 0, 1, 1], labels=[1, 0, 0, 1], groups=[0, 0, 1, 1])
  if spec.kind == "entity_ranking":
    return dict(predictions=["a cat", "dog"], labels=None, answers=[["cat"], ["bird"]])
  return dict(predictions=[0, 1, 1, 0], labels=[0, 1, 0, 0], idx=[0, 1, 2, 3])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_compute_returns_exactly_the_tasks_metrics(name):
  spec = TASKS[name]
  assert set(spec.metrics) <= set(gm.METRICS)
  inputs = _inputs(spec)
  predictions, labels = inputs.pop("predictions"), inputs.pop("labels")
  if any(m in gm.SPLIT_METRICS for m in spec.metrics):
    predictions = {split: predictions for split in spec.validation_splits}
    labels = {split: labels for split in spec.validation_splits}
  scores = gm.compute(spec, predictions, labels, **inputs)
  want = set(spec.metrics) | ({"average"} if spec.main_metric == "average" else set())
  assert set(scores) == want
  assert all(np.isfinite(v) and -100.0 <= v <= 100.0 for v in scores.values())
  assert gm.main_score(spec, scores) == scores[spec.main_metric]


def test_mnli_is_scored_per_validation_split():
  mnli = TASKS["glue_mnli"]
  matched = gm.compute_split_metrics(mnli, "validation_matched", [0, 1, 2, 2], [0, 1, 2, 0])
  mismatched = gm.compute(mnli, [2, 2], [2, 1], split="validation_mismatched")
  # 3 of 4 right, 1 of 2 right
  assert matched == {"accuracy_matched": 75.0}
  assert mismatched == {"accuracy_mismatched": 50.0}
  assert gm.main_score(mnli, {**matched, **mismatched}) == 75.0
  both = gm.compute(mnli, {"validation_matched": [0, 1, 2, 2], "validation_mismatched": [2, 2]},
                    {"validation_matched": [0, 1, 2, 0], "validation_mismatched": [2, 1]})
  assert both == {"accuracy_matched": 75.0, "accuracy_mismatched": 50.0}
  with pytest.raises(ValueError, match="split"):
    gm.compute(mnli, [0, 1], [0, 1])
  with pytest.raises(ValueError, match="validation_matched"):
    gm.compute(mnli, [0, 1], [0, 1], split="validation")
  # tasks with one validation split ignore the split name
  assert gm.compute(TASKS["glue_rte"], [0, 1], [0, 0], split="validation") == {"accuracy": 50.0}


def test_main_score_recomputes_a_missing_average():
  assert gm.main_score(TASKS["glue_mrpc"], {"f1": 80.0, "accuracy": 70.0}) == 75.0
  assert gm.main_score(TASKS["glue_cola"], {"matthews_corrcoef": 41.0}) == 41.0
  with pytest.raises(ValueError, match="accuracy"):
    gm.main_score(TASKS["glue_mrpc"], {"f1": 80.0})


# ---------------------------------------------------------------------------
# seqio metric functions
# ---------------------------------------------------------------------------


def test_seqio_metric_fn_for_each_target_form():
  sst2 = gm.seqio_metric_fn(TASKS["glue_sst2"])
  assert sst2(targets=[1, 0, 1], predictions=[1, -1, 1]) == pytest.approx({"accuracy": 200 / 3})
  stsb_fn = gm.seqio_metric_fn(TASKS["glue_stsb"])
  stsb = stsb_fn(targets=[1.0, 2.0, 3.0], predictions=[1.0, 3.0, 2.0])
  # centred (-1 0 1) and (-1 1 0): r = 1 / (sqrt 2 sqrt 2) = 1/2; ranks identical -> rho 1/2
  assert stsb == pytest.approx({"pearson": 50.0, "spearman": 50.0, "average": 50.0})
  record = gm.seqio_metric_fn(TASKS["super_glue_record"])(
      targets=[["Cat", "the cat"], ["dog"]], predictions=["cat", "a bird"])
  assert record == pytest.approx({"record_f1": 50.0, "record_exact_match": 50.0, "average": 50.0})
  mnli = gm.seqio_metric_fn(TASKS["glue_mnli"])  # defaults to validation_matched
  assert mnli([0, 1], [0, 2]) == {"accuracy_matched": 50.0}
  assert gm.seqio_metric_fn(TASKS["glue_mnli"], "validation_mismatched")([0], [0]) == {
      "accuracy_mismatched": 100.0}


def test_seqio_metric_fn_for_multirc_reads_question_ids_from_targets():
  multirc = gm.seqio_metric_fn(TASKS["super_glue_multirc"])
  targets = [{"group": 0, "value": 1}, {"group": 0, "value": 0}, {"group": 1, "value": 1}]
  # predictions 1 0 0: question 0 right, question 1 wrong -> EM 1/2
  # F1a: TP 1, FN 1, FP 0 -> P 1, R 1/2 -> 2/3
  want = {"f1a": 200 / 3, "exact_match": 50.0, "average": (200 / 3 + 50.0) / 2}
  assert multirc(targets, [1, 0, 0]) == pytest.approx(want)
  as_dicts = [{"group": 0, "value": 1}, {"group": 0, "value": 0}, {"group": 1, "value": 0}]
  assert multirc(targets, as_dicts) == pytest.approx(want)
  with pytest.raises(ValueError, match="group"):
    multirc([1, 0, 1], [1, 0, 0])


# ---------------------------------------------------------------------------
# Several seeds
# ---------------------------------------------------------------------------


def test_bootstrap_ci_of_two_seeds_by_hand():
  # resampling 2 values gives means 0 (p 1/4), 50 (p 1/2), 100 (p 1/4);
  # the 2.5% and 97.5% quantiles are 0 and 100, the 30% and 70% ones both 50
  assert seeds.bootstrap_ci([0.0, 100.0]) == (50.0, 0.0, 100.0)
  assert seeds.bootstrap_ci([0.0, 100.0], confidence=0.4) == (50.0, 50.0, 50.0)


def test_bootstrap_ci_is_reproducible_and_narrows_with_agreement():
  mean, low, high = seeds.bootstrap_ci([80.0, 82.0, 84.0, 86.0])
  assert mean == pytest.approx(83.0)  # (80 + 82 + 84 + 86) / 4
  assert 80.0 <= low < mean < high <= 86.0
  assert seeds.bootstrap_ci([80.0, 82.0, 84.0, 86.0]) == (mean, low, high)
  assert seeds.bootstrap_ci([80.0, 82.0, 84.0, 86.0], seed=0) == (mean, low, high)
  _, tight_low, tight_high = seeds.bootstrap_ci([82.9, 83.0, 83.1, 83.0])
  assert tight_high - tight_low < (high - low) / 10
  assert seeds.bootstrap_ci([71.5]) == (71.5, 71.5, 71.5)
  with pytest.raises(ValueError, match="non-empty"):
    seeds.bootstrap_ci([])


def test_seed_table_rows():
  lines = seeds.seed_table({"glue_rte": [{"accuracy": 60.0, "main": 60.0},
                                      {"accuracy": 70.0, "main": 70.0}],
                         "glue_mrpc": [{"f1": 90.0, "accuracy": 85.0, "average": 87.5}]})
  assert lines[0] == "| task | metric | n seeds | mean | 95% CI low | 95% CI high |"
  # two seeds 60 and 70: mean 65, interval [60, 70] (as in the two-seed case above)
  assert lines[2:] == ["| glue_rte | accuracy | 2 | 65.00 | 60.00 | 70.00 |",
                       "| glue_mrpc | f1 | 1 | 90.00 | 90.00 | 90.00 |",
                       "| glue_mrpc | accuracy | 1 | 85.00 | 85.00 | 85.00 |",
                       "| glue_mrpc | average | 1 | 87.50 | 87.50 | 87.50 |"]
