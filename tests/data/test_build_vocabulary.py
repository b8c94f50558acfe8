"""Training vocabularies on a user's corpus with ``python -m lmlab.data.build_vocabulary``."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import seqio
import sentencepiece as spm
import transformers
from sentencepiece import sentencepiece_model_pb2

from lmlab.data import build_vocabulary, vocabularies, wordpiece

TEXTS = ("The quick brown fox jumps over the lazy dog.", "Café au lait, naïve résumé!", "UPPER lower MiXeD",
         "digits 3.14 and 42", "")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A .txt and a gzipped .jsonl file of made-up words (plenty of distinct pieces for small vocabularies)."""
  root = tmp_path_factory.mktemp("corpus")
  rng = random.Random(0)
  syllables = ["ka", "to", "ri", "mu", "sen", "dal", "or", "ve", "ix", "qua", "ny", "bel", "th", "str", "é", "ö"]
  words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
  lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 20))) + "." for _ in range(1500)]
  lines += [t for t in TEXTS if t] * 5
  (root / "a.txt").write_text("\n".join(lines[:800]) + "\n\n", encoding="utf-8")
  with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
    for line in lines[800:]:
      f.write(json.dumps({"text": line, "id": 0}) + "\n")
  return root


def test_t5_style_folder_loads_with_sentinels_and_mask(corpus, tmp_path):
  build_vocabulary.main(["--input", str(corpus / "*.txt"), "--input", str(corpus / "*.jsonl.gz"),
                         "--output", str(tmp_path / "t5"), "--vocab_size", "600"])
  vocab = vocabularies.load_vocabulary(str(tmp_path / "t5"))
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  assert vocab.extra_ids == 100 and vocab.vocab_size == 700
  special = vocabularies.special_tokens(vocab)
  assert (special.pad_id, special.eos_id, special.unk_id, special.cls_id) == (0, 1, 2, None)
  assert vocab.tokenizer.id_to_piece(special.mask_id) == "<mask>" and vocab.tokenizer.bos_id() == -1
  assert vocab.decode(vocab.encode("naïve ☃ café")) == "naïve ☃ café"  # byte fallback
  assert vocabularies.sentinel_id(vocab, 0) == 699


def test_t5_style_without_byte_fallback_matches_hugging_face(corpus, tmp_path):
  build_vocabulary.main(["--input", str(corpus / "*.txt"), "--output", str(tmp_path / "t5"), "--vocab_size", "300",
                         "--no-byte_fallback"])
  vocab = vocabularies.load_vocabulary(str(tmp_path / "t5"))
  tokenizer = transformers.T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))
  assert len(tokenizer) == vocab.vocab_size
  assert [list(vocab.encode(t)) for t in TEXTS] == [tokenizer(t, add_special_tokens=False)["input_ids"]
                                                     for t in TEXTS]


def test_bpe_model_with_out_prefix_and_sampling(corpus, tmp_path):
  build_vocabulary.main(["--input", str(corpus / "a.txt"), "--out_prefix", str(tmp_path / "m"),
                         "--vocab_size", "500", "--model_type", "bpe", "--max_sentences", "300"])
  vocab = vocabularies.load_vocabulary(str(tmp_path / "m.model"))
  proto = sentencepiece_model_pb2.ModelProto.FromString((tmp_path / "m.model").read_bytes())
  assert proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
  assert vocab.vocab_size == 500 and vocab.extra_ids == 0
  assert isinstance(vocab.tokenizer, spm.SentencePieceProcessor)
  sample = build_vocabulary.sample((str(i) for i in range(1000)), 10)
  assert len(sample) == 10 and sample == sorted(sample, key=int)
  assert sample == build_vocabulary.sample((str(i) for i in range(1000)), 10), "reproducible"
  assert build_vocabulary.sample(["a", "b"], 10) == ["a", "b"]


def test_bert_style_folder_is_a_wordpiece_vocabulary_with_hugging_face_ids(corpus, tmp_path):
  build_vocabulary.main(["--input", str(corpus / "*"), "--style", "bert", "--output", str(tmp_path / "bert"),
                         "--vocab_size", "400"])
  vocab = vocabularies.load_vocabulary(str(tmp_path / "bert"))
  assert isinstance(vocab, wordpiece.WordPieceVocabulary) and vocab.settings.lowercase
  assert vocab.tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert vocabularies.special_tokens(vocab) == vocabularies.SpecialTokens(0, 3, 1, 4, 2, ())
  by_vocab_txt = vocabularies.load_vocabulary(str(tmp_path / "bert" / "vocab.txt"))
  assert by_vocab_txt.tokens == vocab.tokens and by_vocab_txt.settings.lowercase
  tokenizer = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "bert"))
  want = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
  assert [vocab.encode(t) for t in TEXTS] == want
  assert vocab.decode(want[1]) == tokenizer.decode(want[1]) == "cafe au lait, naive resume!"
  build_vocabulary.main(["--input", str(corpus / "*"), "--style", "bert", "--output", str(tmp_path / "cased"),
                         "--vocab_size", "300", "--cased"])
  cased = vocabularies.load_vocabulary(str(tmp_path / "cased" / "vocab.txt"))  # the folder's config: cased
  assert not cased.settings.lowercase and "C" in cased.tokens and "##é" in cased.tokens


def test_errors_name_what_is_wrong(corpus, tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nothing/\\*.txt"):
    build_vocabulary.main(["--input", str(tmp_path / "nothing" / "*.txt"), "--output", str(tmp_path / "out")])
  with pytest.raises(ValueError, match="--text_field"):
    build_vocabulary.main(["--input", str(corpus / "*.jsonl.gz"), "--text_field", "body", "--output",
                           str(tmp_path / "out")])
  with pytest.raises(SystemExit):
    build_vocabulary.main(["--input", str(corpus / "a.txt"), "--style", "bert", "--out_prefix", str(tmp_path / "p")])
  with pytest.raises(SystemExit):
    build_vocabulary.main(["--input", str(corpus / "a.txt")])  # where to write?
  # Without --input: the embedded model, as before.
  calls = []
  monkeypatch.setattr(build_vocabulary, "train", lambda prefix, size: calls.append((prefix, size)) or prefix)
  build_vocabulary.main([])
  assert calls == [(build_vocabulary.DATA_DIR / "spm" / "embedded_8k", 8192)]
