"""Vocabularies from released tokenizer files give Hugging Face's ids (WordPiece, byte-level BPE, T5 SentencePiece).

Every tokenizer file is trained here, on a small corpus, with the
``tokenizers`` and ``sentencepiece`` libraries (no network); the reference is
``transformers`` built from the same files.
"""

from __future__ import annotations

import functools
import json
import pickle
import random

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf
import transformers
from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

from lmlab.data import bert_text, pipeline, preprocessors, tasks, tokenizer_json, vocabularies, wordpiece

SAMPLE = (
    "The quick brown fox jumps over the lazy dog.",
    "Café au lait, naïve résumé! Ångström units.",
    "UPPER lower MiXeD CaSe",
    "中文字符 and 日本語のテキスト",
    "Emoji 🙂👍🏽 and symbols © € ∑",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 101 + " and " + "é" * 60,  # over 100 characters; 60 characters (120 bytes) is not
    "  leading, trailing and   runs of   spaces  ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp",
    "punctuation!?... (brackets) [square] {curly} \"quotes\" 'single' don't",
    "digits 3.14159 42 1,000,000 2024-01-01",
    "unknown: \u0378 \U0001F9FF ☃ zero\u200bwidth",
    "İstanbul Straße ΟΔΟΣ",
    "",
    "a [MASK] and a <mask> here",
)
WORDS = ("the of and to in is was for on that with as by at from his her which this be are it an had not "
         "brown fox lazy dog café naïve units quick jumps résumé ångström case lower upper symbols emoji "
         "spaces runs tabs newlines digits square curly quotes single brackets word long").split()
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _corpus() -> list[str]:
  rng = random.Random(0)
  lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + rng.choice(".!?,") for _ in range(300)]
  return lines + list(SAMPLE) * 3


def _write_json(path, content) -> None:
  path.write_text(json.dumps(content), encoding="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Folders of tiny tokenizers: BERT uncased/cased (vocab.txt), RoBERTa (tokenizer.json and slow files), T5."""
  root = tmp_path_factory.mktemp("tokenizers")
  corpus = _corpus()
  folders = {}
  for name, lowercase in (("bert_uncased", True), ("bert_cased", False)):
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=600, special_tokens=BERT_SPECIALS,
                                                                   show_progress=False))
    folder = root / name
    folder.mkdir()
    tokenizer.model.save(str(folder))
    _write_json(folder / "tokenizer_config.json", {"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"})
    folders[name] = folder
  folder = root / "bert_uncased_accents"  # lowercase but keep accents, CJK characters not split
  folder.mkdir()
  (folder / "vocab.txt").write_bytes((folders["bert_cased"] / "vocab.txt").read_bytes())
  _write_json(folder / "tokenizer_config.json", {"do_lower_case": True, "strip_accents": False,
                                                 "tokenize_chinese_chars": False})
  folders["bert_uncased_accents"] = folder

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
  tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  roberta_config = {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                    "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "mask_token": {"__type": "AddedToken", "content": "<mask>", "lstrip": True, "rstrip": False,
                                   "normalized": False, "single_word": False, "special": True}}
  for name in ("roberta", "roberta_slow"):
    folder = root / name
    folder.mkdir()
    tokenizer.model.save(str(folder))  # vocab.json, merges.txt
    _write_json(folder / "tokenizer_config.json", roberta_config)
    folders[name] = folder
  tokenizer.save(str(folders["roberta"] / "tokenizer.json"))

  folder = root / "t5"
  folder.mkdir()
  spm.SentencePieceTrainer.train(  # T5's settings: no BOS, no byte fallback, no user-defined pieces
      sentence_iterator=iter(corpus), model_prefix=str(folder / "spiece"), model_type="unigram", vocab_size=400,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
      hard_vocab_limit=False)
  _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": 100})
  folders["t5"] = folder
  return folders


@functools.lru_cache(maxsize=None)
def _hf(folder: str, kind: str):
  cls = {"bert": transformers.BertTokenizerFast, "roberta": transformers.RobertaTokenizerFast,
         "t5": transformers.T5TokenizerFast}[kind]
  return cls.from_pretrained(folder)


def _hf_ids(tokenizer, texts) -> list[list[int]]:
  return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _check_ids(vocab, tokenizer, texts, tf_texts=None) -> list[list[int]]:
  """Python, scalar TF and batched TF encodings (of ``tf_texts``, default all) equal Hugging Face's."""
  want = _hf_ids(tokenizer, texts)
  assert [list(vocab.encode(t)) for t in texts] == want
  tf_texts = list(texts if tf_texts is None else tf_texts)
  tf_want = _hf_ids(tokenizer, tf_texts)
  assert vocab.encode_tf(tf.constant(tf_texts[1])).numpy().tolist() == tf_want[1]
  assert vocab.encode_tf(tf.constant(tf_texts)).to_list() == tf_want
  return want


def _task_ids(vocab: seqio.Vocabulary, texts) -> list[list[int]]:
  """Ids of ``texts`` through a throwaway seqio task (``seqio.preprocessors.tokenize``)."""
  name = f"lmlab_test.tokenize_{vocabularies.vocabulary_name(vocab)}"
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": list(texts)}),
      splits=["train"])
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, metric_fns=[], output_features={"targets": seqio.Feature(vocab, add_eos=False)},
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                     seqio.preprocessors.tokenize])
  try:
    dataset = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False)
    return [ex["targets"].tolist() for ex in dataset.as_numpy_iterator()]
  finally:
    seqio.TaskRegistry.remove(name)


def _check_special_tokens(vocab, tokenizer) -> None:
  special = vocabularies.special_tokens(vocab)
  assert special.cls_id == tokenizer.cls_token_id
  assert special.eos_id == tokenizer.sep_token_id
  assert special.pad_id == tokenizer.pad_token_id
  assert special.mask_id == tokenizer.mask_token_id
  assert special.unk_id == tokenizer.unk_token_id
  a, b = "The quick fox.", "Café au lait!"
  assert special.frame(vocab.encode(a)) == tokenizer(a)["input_ids"]
  assert special.frame(vocab.encode(a), vocab.encode(b)) == tokenizer(a, b)["input_ids"]
  framed = ([special.cls_id] + list(vocab.encode(a)) + [special.eos_id] + list(special.pair_separator)
            + list(vocab.encode(b)) + [special.eos_id])
  assert framed == tokenizer(a, b)["input_ids"]


# BERT WordPiece.


@pytest.mark.parametrize("lowercase,strip_accents,chinese", [(True, True, True), (False, False, True),
                                                              (True, False, False)])
def test_bert_words_match_the_tokenizers_library_on_random_unicode(lowercase, strip_accents, chinese):
  """The TF normalizer and pre-tokenizer split arbitrary text into the same words as the Rust library."""
  rng = random.Random(1)
  blocks = [(0, 0x80), (0x80, 0x800), (0x800, 0x3000), (0x3000, 0xD800), (0xE000, 0x10000), (0x10000, 0x30000),
            (0xE0000, 0x110000)]
  texts = []
  for _ in range(400):
    block = rng.choice(blocks)
    texts.append("".join(chr(rng.randrange(*rng.choice([block, (0, 0x80)]))) for _ in range(rng.randint(0, 25))))
  tables = bert_text.character_tables(lowercase=lowercase, strip_accents=strip_accents,
                                      handle_chinese_chars=chinese, clean_text=True)
  normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents,
                                          handle_chinese_chars=chinese)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  got = [[w.decode("utf-8") for w in row] for row in bert_text.words(tf.constant(texts), tables).to_list()]
  want = [[w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))] for t in texts]
  assert got == want


def test_wordpiece_follows_the_checkpoint_settings(files):
  folder = files["bert_uncased_accents"]
  vocab = vocabularies.load_vocabulary(str(folder))
  assert vocab.settings.lowercase and vocab.settings.strip_accents is False
  assert not vocab.settings.handle_chinese_chars
  fast = _hf(str(folder), "bert")
  ids = _hf_ids(fast, SAMPLE)
  assert [vocab.encode(t) for t in SAMPLE] == ids
  assert ids != _hf_ids(_hf(str(files["bert_cased"]), "bert"), SAMPLE)


@pytest.mark.parametrize("name", ["bert_uncased", "bert_cased"])
def test_wordpiece_ids_equal_hugging_face(files, name):
  folder = files[name]
  vocab = vocabularies.load_vocabulary(str(folder))
  assert isinstance(vocab, wordpiece.WordPieceVocabulary)
  fast = _hf(str(folder), "bert")
  assert vocab.vocab_size == len(fast)
  ids = _check_ids(vocab, fast, SAMPLE)
  assert sum(i == fast.unk_token_id for row in ids for i in row) < 12, "the sample is mostly in the vocabulary"
  assert ids[6][0] == fast.unk_token_id and ids[6][-1] != fast.unk_token_id, "101 characters -> [UNK]; 60 not"
  assert fast.mask_token_id in ids[-1], "a [MASK] written in the text is the mask token"
  # The constructor taking the vocabulary file (transformers 5 reads `vocab`, 4 `vocab_file`).
  lowercase = name == "bert_uncased"
  direct = transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt"), vocab_file=str(folder / "vocab.txt"),
                                          do_lower_case=lowercase)
  assert _hf_ids(direct, SAMPLE) == ids
  # The pure-Python tokenizer agrees too, except that it drops unassigned code points (U+0378 here; the
  # Rust one keeps them, giving [UNK]), lowercases a word-final Σ to ς (Rust: σ) and composes text with NFC.
  slow_cls = getattr(transformers, "BertTokenizerLegacy", transformers.BertTokenizer)
  slow = slow_cls(vocab_file=str(folder / "vocab.txt"), do_lower_case=lowercase)
  differ = [t for t, row in zip(SAMPLE, ids) if _hf_ids(slow, [t])[0] != row]
  assert differ == [t for t in SAMPLE if "\u0378" in t or (lowercase and "ΟΔΟΣ" in t)]


@pytest.mark.parametrize("name", ["bert_uncased", "bert_cased"])
def test_wordpiece_decode_specials_and_task(files, name):
  vocab = vocabularies.load_vocabulary(str(files[name]))
  fast = _hf(str(files[name]), "bert")
  ids = _hf_ids(fast, SAMPLE)
  assert [vocab.decode(row) for row in ids] == [fast.decode(row) for row in ids]
  padded = tf.ragged.constant(ids).to_tensor(0)
  assert [t.decode("utf-8") for t in vocab.decode_tf(padded).numpy()] == [fast.decode(row) for row in ids]
  text = "The quick brown fox."
  assert vocab.decode(vocab.encode(text)) == fast.decode(fast.encode(text, add_special_tokens=False))
  _check_special_tokens(vocab, fast)
  assert vocabularies.special_tokens(vocab).pair_separator == ()
  assert _task_ids(vocab, SAMPLE) == ids


def test_bert_tokenizer_json_gives_the_same_wordpiece_vocabulary(files, tmp_path):
  """BERT's fast-tokenizer file (tokenizer.json) becomes the TF WordPiece vocabulary with the same ids."""
  folder = files["bert_uncased"]
  fast = _hf(str(folder), "bert")
  fast.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
  vocab = vocabularies.load_vocabulary(str(tmp_path / "tokenizer.json"))
  assert isinstance(vocab, wordpiece.WordPieceVocabulary)
  assert [vocab.encode(t) for t in SAMPLE] == _hf_ids(fast, SAMPLE)
  assert vocabularies.special_tokens(vocab) == vocabularies.special_tokens(vocabularies.load_vocabulary(str(folder)))
  # The configuration's do_lower_case wins over the file's normalizer, as in transformers.
  cased = tmp_path / "cased"
  cased.mkdir()
  (cased / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
  (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
  vocab = vocabularies.load_vocabulary(str(cased))
  assert not vocab.settings.lowercase
  assert [vocab.encode(t) for t in SAMPLE] == _hf_ids(transformers.BertTokenizerFast.from_pretrained(str(cased)),
                                                      SAMPLE)


# Byte-level BPE (RoBERTa).


@pytest.mark.parametrize("spec", ["roberta", "roberta/tokenizer.json", "roberta_slow"])
def test_byte_level_bpe_ids_equal_hugging_face(files, spec):
  folder, _, file = spec.partition("/")
  vocab = vocabularies.load_vocabulary(str(files[folder] / file) if file else str(files[folder]))
  assert isinstance(vocab, tokenizer_json.TokenizerJsonVocabulary)
  fast = _hf(str(files[folder]), "roberta")
  assert vocab.vocab_size == len(fast)
  ids = _check_ids(vocab, fast, SAMPLE + (" leading space", "  two leading", "a<mask>b"))
  assert fast.mask_token_id in ids[-1]
  for text, row in zip(SAMPLE, ids):
    assert vocab.decode(row) == fast.decode(row)
    if "<mask>" not in text:  # <mask> takes the space before it (lstrip), like Hugging Face
      assert vocab.decode(row) == text
  padded = tf.ragged.constant(ids[:len(SAMPLE)]).to_tensor(vocab.pad_id)
  assert [t.decode("utf-8") for t in vocab.decode_tf(padded).numpy()] == [fast.decode(r) for r in ids[:len(SAMPLE)]]
  _check_special_tokens(vocab, fast)
  assert vocabularies.special_tokens(vocab).pair_separator == (fast.sep_token_id,)


def test_byte_level_bpe_in_a_task_and_a_checkpointed_iterator(files, tmp_path):
  vocab = vocabularies.load_vocabulary(str(files["roberta"]))
  fast = _hf(str(files["roberta"]), "roberta")
  assert _task_ids(vocab, SAMPLE) == _hf_ids(fast, SAMPLE)
  dataset = tf.data.Dataset.from_tensor_slices(list(SAMPLE)).map(vocab.encode_tf).repeat()
  iterator = iter(dataset)
  for _ in range(5):
    next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.save(str(tmp_path / "ckpt"))
  want = [next(iterator).numpy().tolist() for _ in range(4)]
  checkpoint.restore(path)
  assert [next(iterator).numpy().tolist() for _ in range(4)] == want == _hf_ids(fast, SAMPLE[5:9])


# T5 SentencePiece.

# Hugging Face's T5 tokenizer and SentencePiece disagree on text glued to a
# special token ("<extra_id_0>." gets an extra "▁" from Hugging Face, a sentinel
# inside a word is only matched by Hugging Face, a literal "</s>" is EOS only
# there) and on how unknown pieces decode ("<unk>" vs " ⁇ "); the sample has
# neither, and sentinels are written between spaces. seqio's TF encoder
# (tensorflow-text's SentencePiece op) breaks ties between equally likely
# segmentations differently from the Python library (and Hugging Face): 101
# "x"s split into "xx"/"x" pieces in another order, so that text is left out of
# the TF comparison.
T5_SAMPLE = SAMPLE + ("Fill <extra_id_0> the <extra_id_1> gaps <extra_id_99>",)
T5_TF_SAMPLE = tuple(t for t in T5_SAMPLE if "x" * 101 not in t)


def test_t5_sentencepiece_ids_equal_hugging_face(files):
  folder = files["t5"]
  vocab = vocabularies.load_vocabulary(str(folder))
  assert isinstance(vocab, seqio.SentencePieceVocabulary) and vocab.extra_ids == 100
  for cls in (transformers.T5TokenizerFast, transformers.T5Tokenizer):
    tokenizer = cls.from_pretrained(str(folder))
    assert vocab.vocab_size == len(tokenizer)
    ids = _check_ids(vocab, tokenizer, T5_SAMPLE, T5_TF_SAMPLE)
  for j in (0, 1, 99):
    assert tokenizer.convert_tokens_to_ids(f"<extra_id_{j}>") == vocab.vocab_size - 1 - j
    assert vocabularies.sentinel_id(vocab, j) == vocab.vocab_size - 1 - j
  for text, row in zip(T5_SAMPLE, ids):
    if tokenizer.unk_token_id not in row:
      assert vocab.decode(row) == tokenizer.decode(row).replace("<extra_id_", " <extra_id_").lstrip()
  assert vocab.decode(vocab.encode("The quick brown fox.")) == "The quick brown fox."
  special = vocabularies.special_tokens(vocab)
  assert (special.pad_id, special.eos_id, special.unk_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                              tokenizer.unk_token_id)
  assert special.cls_id is None and special.mask_id is None and special.pair_separator == ()
  a, b = "The quick fox.", "Café au lait!"
  assert special.frame(vocab.encode(a), vocab.encode(b)) == tokenizer(a, b)["input_ids"]
  assert _task_ids(vocab, T5_TF_SAMPLE) == [row for t, row in zip(T5_SAMPLE, ids) if t in T5_TF_SAMPLE]


# load_vocabulary, names, special tokens of lmlab's own vocabularies.


def test_special_tokens_of_lmlab_vocabularies():
  embedded = vocabularies.special_tokens(vocabularies.load_vocabulary("embedded"))
  assert embedded == vocabularies.SpecialTokens(0, 1, 2, vocabularies.mask_id(vocabularies.embedded_vocabulary()),
                                                None, ())
  assert embedded.ids == {0, 1, 2, embedded.mask_id}
  assert vocabularies.special_tokens(vocabularies.byte_vocabulary()) == vocabularies.SpecialTokens(0, 1, 2, 259, None)
  assert vocabularies.special_tokens(vocabularies.byt5_vocabulary()).mask_id is None
  sentinels = vocabularies.special_tokens(vocabularies.embedded_vocabulary_with_sentinels())
  assert sentinels == embedded


def test_load_vocabulary_names_files_and_folders(files, tmp_path):
  for name, vocab in [("embedded", vocabularies.embedded_vocabulary()), ("bytes", vocabularies.byte_vocabulary()),
                      ("byt5", vocabularies.byt5_vocabulary()),
                      ("embedded_sentinels", vocabularies.embedded_vocabulary_with_sentinels())]:
    assert vocabularies.load_vocabulary(name) is vocab
    assert vocabularies.vocabulary_name(vocab) == name
  folder = str(files["bert_cased"])
  assert vocabularies.load_vocabulary(folder) is vocabularies.load_vocabulary(folder + "/")
  by_file = vocabularies.load_vocabulary(folder + "/vocab.txt")  # the folder's configuration applies: cased
  assert by_file == vocabularies.load_vocabulary(folder) and not by_file.settings.lowercase
  assert vocabularies.load_vocabulary(str(files["t5"] / "spiece.model")).extra_ids == 100
  names = {vocabularies.vocabulary_name(vocabularies.load_vocabulary(str(f))) for f in files.values()}
  assert len(names) == len(files), "different files or settings, different names"
  assert vocabularies.vocabulary_name(vocabularies.load_vocabulary(str(files["t5"]))).endswith("_x100")
  roberta = vocabularies.load_vocabulary(str(files["roberta"]))
  assert pickle.loads(pickle.dumps(roberta)) == roberta
  bert = vocabularies.load_vocabulary(folder)
  copy = pickle.loads(pickle.dumps(bert))
  assert copy == bert and copy.encode("Café au lait") == bert.encode("Café au lait")

  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError) as error:
    vocabularies.load_vocabulary(str(tmp_path / "empty"))
  for looked_for in ("empty", "spiece.model", "sentencepiece.bpe.model", "*.model", "tokenizer.json", "vocab.txt",
                     "vocab.json + merges.txt"):
    assert looked_for in str(error.value)
  with pytest.raises(FileNotFoundError, match="embedded"):
    vocabularies.load_vocabulary(str(tmp_path / "missing"))


def test_unigram_tokenizer_json_needs_its_sentencepiece_model(files, tmp_path):
  t5 = transformers.T5TokenizerFast.from_pretrained(str(files["t5"]))
  t5.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="spiece.model"):
    vocabularies.load_vocabulary(str(tmp_path / "tokenizer.json"))
  (tmp_path / "spiece.model").write_bytes((files["t5"] / "spiece.model").read_bytes())
  vocab = vocabularies.load_vocabulary(str(tmp_path / "tokenizer.json"))  # its <extra_id_N> tokens: 100 sentinels
  assert isinstance(vocab, seqio.SentencePieceVocabulary) and vocab.vocab_size == len(t5)


# Masked-language modelling with a WordPiece vocabulary.

DOCS = [" ".join(random.Random(i).choice(WORDS) for _ in range(n)) + "."
        for i, n in enumerate([5, 40, 3, 120, 9, 25, 60, 2, 14, 33] * 3)]


def test_mlm_rows_start_with_cls_and_never_mask_specials(files):
  vocab = vocabularies.load_vocabulary(str(files["bert_uncased"]))
  special = vocabularies.special_tokens(vocab)
  name = "lmlab_test.wordpiece_mlm"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": DOCS}),
          splits=("train",)),
      preprocessors=tasks.mlm_preprocessors(), metric_fns=[],
      output_features={"targets": seqio.Feature(vocab, add_eos=True)})
  try:
    batches = list(pipeline.get_dataset(name, "train", 48, 4, shuffle=False, seed=1, repeat=False)
                   .as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  real = rows["segment_ids"] > 0
  starts = real & (rows["positions"] == 0)
  assert (rows["targets"][starts] == special.cls_id).all(), "every document (and piece) starts with [CLS]"
  assert ((rows["targets"] == special.cls_id) == starts).all()
  assert (rows["targets"] == special.eos_id).sum() > 10
  selected = rows["loss_weights"] > 0
  is_special = np.isin(rows["targets"], list(special.ids))
  assert not selected[is_special | ~real].any(), "no special token is ever masked"
  ordinary = real & ~is_special
  np.testing.assert_array_equal(selected.sum(1), np.round(np.float32(0.15) * ordinary.sum(1)))
  inputs = rows["input_ids"][selected]
  assert (inputs == special.mask_id).mean() > 0.6
  low, high = vocabularies.random_token_range(vocab)
  assert low > max(special.ids) and high == vocab.vocab_size
  replaced = (inputs != special.mask_id) & (inputs != rows["targets"][selected])
  assert ((inputs[replaced] >= low) & (inputs[replaced] < high)).all()
  # Long documents are split into pieces that each start with [CLS]; no token is lost.
  want = sorted(t for d in DOCS for t in vocab.encode(d) + [special.eos_id])
  got = sorted(rows["targets"][real & ~starts].tolist())
  assert len(got) > 0.8 * len(want) and not set(got) - set(want)


def test_word_and_sentence_tables_of_file_vocabularies(files):
  bert = vocabularies.load_vocabulary(str(files["bert_uncased"]))
  starts = vocabularies.word_start_table(bert)
  ends = vocabularies.sentence_end_table(bert)
  text = "Ångström quickly jumpsover the lazydogs."
  ids = bert.encode(text)
  pieces = [bert.tokens[i] for i in ids]
  assert any(p.startswith("##") for p in pieces)
  assert [bool(starts[i]) for i in ids] == [not p.startswith("##") for p in pieces]
  assert ends[ids[-1]] and not ends[vocabularies.special_tokens(bert).eos_id]
  words = preprocessors.word_ids(tf.constant(ids), tf.ones(len(ids), tf.int32), bert).numpy()
  assert words[-1] == len(text.split()) and words.tolist() == sorted(words.tolist())
  roberta = vocabularies.load_vocabulary(str(files["roberta"]))
  ids = roberta.encode("The quick brown fox. It jumps!")
  table = vocabularies.word_start_table(roberta)
  assert [roberta.decode([i]).startswith(" ") or k == 0 for k, i in enumerate(ids)] == [
      bool(table[i]) or k == 0 for k, i in enumerate(ids)]
  assert vocabularies.sentence_end_table(roberta)[roberta.encode(".")[0]]
  low, high = vocabularies.random_token_range(roberta)
  assert (low, high) == (4, vocabularies.mask_id(roberta))
