"""Fine-tuning rows and leaderboard files: truncation, joining, filler rows, file schemas."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.glue import leaderboard
from lmlab.glue import rows as finetune_data
from lmlab.glue.spec import TASKS

EOS = 1


def _ids(n, start=10):
  return np.concatenate([np.arange(start, start + n), [EOS]]).astype(np.int32)


def test_longest_first_truncation_keeps_both_separators():
  a, b, dropped = finetune_data.truncate_pair(_ids(10), _ids(3, 50), 10, EOS)
  # budget 10 - 2 separators = 8 content tokens: A loses 5 (10 -> 5), B keeps its 3.
  assert dropped == 5
  np.testing.assert_array_equal(a, [10, 11, 12, 13, 14, EOS])
  np.testing.assert_array_equal(b, [50, 51, 52, EOS])
  a, b, dropped = finetune_data.truncate_pair(_ids(6), _ids(6, 50), 8, EOS)
  assert dropped == 6 and len(a) == 4 and len(b) == 4  # both cut to 3 + EOS
  a, b, dropped = finetune_data.truncate_pair(_ids(3), np.zeros(0, np.int32), 8, EOS)
  assert dropped == 0 and len(b) == 0


def test_encoder_row_joins_sentences_with_token_types_and_counts_truncation():
  log = finetune_data.TruncationLog("test")
  row = finetune_data.encoder_row({"inputs_a": _ids(2), "inputs_b": _ids(3, 50)}, 10, EOS, log)
  np.testing.assert_array_equal(row["input_ids"], [10, 11, EOS, 50, 51, 52, EOS, 0, 0, 0])
  np.testing.assert_array_equal(row["token_type_ids"], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(row["segment_ids"], [1] * 7 + [0] * 3)
  assert log.truncated == 0
  finetune_data.encoder_row({"inputs_a": _ids(20), "inputs_b": _ids(3, 50)}, 10, EOS, log)
  assert (log.examples, log.truncated, log.tokens_dropped) == (2, 1, 15)


def test_t2t_row_shifts_targets_and_keeps_eos_when_cut():
  log = finetune_data.TruncationLog("test")
  row = finetune_data.t2t_row({"inputs": _ids(9), "targets": _ids(2, 70)}, 6, 4, EOS, log)
  np.testing.assert_array_equal(row["encoder_input_tokens"], [10, 11, 12, 13, 14, EOS])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [70, 71, EOS, 0])
  np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 70, 71, EOS])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 1, 0])
  assert log.truncated == 1 and log.tokens_dropped == 4


def test_batches_fill_the_last_batch_with_weightless_rows_and_keep_meta():
  examples = [{"inputs_a": _ids(2), "label": np.int64(i % 2), "idx": np.int32(i),
               "entity": b"Paris"} for i in range(5)]
  log = finetune_data.TruncationLog("test")
  out = list(finetune_data.batches(
      examples, lambda ex: finetune_data.encoder_row(ex, 6, EOS, log), 4,
      finetune_data.ENCODER_INPUTS))
  assert len(out) == 2
  last, meta = out[1]
  assert last["input_ids"].shape == (4, 6)
  np.testing.assert_array_equal(last["weight"], [1, 0, 0, 0])
  np.testing.assert_array_equal(out[0][0]["label"], [0, 1, 0, 1])
  assert meta == [{"label": 0, "idx": 4, "entity": "Paris"}]
  stacked = finetune_data.stack_meta([out[0][1], meta])
  assert stacked["idx"] == [0, 1, 2, 3, 4]


def test_sequence_longer_than_the_model_allows_is_refused():
  with pytest.raises(ValueError, match="longer than the model allows"):
    finetune_data.check_sequence_length(256, 128, "EncoderConfig.max_positions")
  finetune_data.check_sequence_length(128, 128, "EncoderConfig.max_positions")
  finetune_data.check_sequence_length(4096, None, "relative positions")


def test_glue_files_have_the_leaderboard_header_order_and_label_form(tmp_path):
  spec = TASKS["glue_mnli"]
  path = leaderboard.write_submission(str(tmp_path), spec, 1, [2, 0, 1], [2, 0, 1])
  assert path.endswith("MNLI-mm.tsv")
  assert leaderboard.read_submission(path) == [["0", "entailment"], ["1", "neutral"],
                                               ["2", "contradiction"]]
  path = leaderboard.write_submission(str(tmp_path), TASKS["glue_stsb"], 0, [0, 1], [3.14159, 0.5])
  assert open(path).read() == "index\tprediction\n0\t3.142\n1\t0.500\n"
  path = leaderboard.write_submission(str(tmp_path), TASKS["glue_cola"], 0, [0, 1], [1, 0])
  assert leaderboard.read_submission(path) == [["0", "1"], ["1", "0"]]


def test_super_glue_files_write_labels_as_each_task_expects(tmp_path):
  path = leaderboard.write_submission(str(tmp_path), TASKS["super_glue_boolq"], 0, [1, 0], [1, 0])
  assert leaderboard.read_submission(path) == [{"idx": 0, "label": "false"},
                                               {"idx": 1, "label": "true"}]
  path = leaderboard.write_submission(str(tmp_path), TASKS["super_glue_wsc"], 0, [0], [1])
  assert leaderboard.read_submission(path) == [{"idx": 0, "label": "True"}]
  path = leaderboard.write_submission(str(tmp_path), TASKS["super_glue_cb"], 0, [0], [2])
  assert leaderboard.read_submission(path) == [{"idx": 0, "label": "neutral"}]
  path = leaderboard.write_submission(str(tmp_path), TASKS["super_glue_record"], 0, [7], ["Paris"])
  assert json.loads(open(path).read()) == {"idx": 7, "label": "Paris"}


def test_multirc_file_nests_answers_under_questions_under_paragraphs(tmp_path):
  ids = [dict(paragraph=0, question=1, answer=1), dict(paragraph=0, question=1, answer=0),
         dict(paragraph=0, question=0, answer=2), dict(paragraph=3, question=4, answer=5)]
  path = leaderboard.write_submission(str(tmp_path), TASKS["super_glue_multirc"], 0, ids,
                                      [1, 0, 1, 0])
  records = leaderboard.read_submission(path)
  assert records == [
      {"idx": 0, "passage": {"questions": [
          {"idx": 0, "answers": [{"idx": 2, "label": 1}]},
          {"idx": 1, "answers": [{"idx": 0, "label": 0}, {"idx": 1, "label": 1}]}]}},
      {"idx": 3, "passage": {"questions": [{"idx": 4, "answers": [{"idx": 5, "label": 0}]}]}}]


def test_mismatched_ids_and_predictions_are_refused(tmp_path):
  with pytest.raises(ValueError, match="2 example ids but 1 predictions"):
    leaderboard.write_submission(str(tmp_path), TASKS["glue_cola"], 0, [0, 1], [1])
