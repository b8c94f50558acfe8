"""Finds and reads the tokenizer files of a released checkpoint and makes the matching seqio vocabulary.

A Hugging Face model folder holds its tokenizer in one of several forms; in
order of preference:

* SentencePiece (``spiece.model``, ``sentencepiece.bpe.model``, ``*.model``;
  T5, mT5): ``seqio.SentencePieceVocabulary`` with the folder's number of
  sentinels (``extra_ids`` in ``tokenizer_config.json``, or its
  ``<extra_id_N>`` tokens; T5 has 100), sentinel j = ``<extra_id_j>`` = the
  j-th id from the top, as in seqio and Hugging Face.
* ``tokenizer.json``: a BERT WordPiece one becomes a ``WordPieceVocabulary``
  (tokenized with TensorFlow ops); a Unigram one (T5's) needs its
  SentencePiece model next to it; any other (RoBERTa's and GPT-2's
  byte-level BPE, ...) becomes a ``TokenizerJsonVocabulary``.
* BERT's ``vocab.txt``: a ``WordPieceVocabulary`` with the folder's
  ``do_lower_case``, ``strip_accents`` and ``tokenize_chinese_chars``.
* GPT-2/RoBERTa's ``vocab.json`` + ``merges.txt``: a byte-level BPE
  ``TokenizerJsonVocabulary``.

Special token names come from ``tokenizer_config.json`` (which wins) and
``special_tokens_map.json``. Paths may be local or remote (``gs://``).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any, Optional

import seqio
import sentencepiece as spm
import tensorflow as tf

from lmlab.data import tokenizer_json, wordpiece

SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model")
TOKENIZER_JSON = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
BPE_FILES = ("vocab.json", "merges.txt")
CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # the later one wins
LOOKED_FOR = (*SENTENCEPIECE_FILES, "*.model", TOKENIZER_JSON, VOCAB_TXT, " + ".join(BPE_FILES))
SENTINEL = re.compile(r"<extra_id_(\d+)>")
T5_CLASSES = ("T5", "MT5", "UMT5", "ByT5")
T5_EXTRA_IDS = 100  # what Hugging Face's T5Tokenizer adds when the configuration does not say
BERT_DEFAULTS = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}


def _join(folder: str, name: str) -> str:
  return posixpath.join(folder, name)


def _read(path: str) -> bytes:
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def _read_json(path: str) -> Any:
  try:
    return json.loads(_read(path).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_config(folder: str) -> dict[str, Any]:
  """The folder's ``special_tokens_map.json`` updated with its ``tokenizer_config.json`` ({} if neither)."""
  config: dict[str, Any] = {}
  for name in CONFIG_FILES:
    path = _join(folder, name)
    if tf.io.gfile.exists(path):
      content = _read_json(path)
      if not isinstance(content, dict):
        raise ValueError(f"{path} should hold a JSON object, not {type(content).__name__}.")
      config.update(content)
  return config


def token_string(value: Any) -> Optional[str]:
  """A token as configurations write it: a string or an object with ``content`` (an ``AddedToken``)."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def roles(config: dict[str, Any]) -> dict[str, str]:
  """Special token strings by role (``bos``, ``eos``, ``unk``, ``sep``, ``pad``, ``cls``, ``mask``)."""
  found = {role: token_string(config.get(f"{role}_token")) for role in tokenizer_json.ROLES}
  return {role: token for role, token in found.items() if token}


def _additional_special_tokens(config: dict[str, Any]) -> list[str]:
  tokens = [token_string(t) for t in config.get("additional_special_tokens") or []]
  tokens += [token_string(t) for t in (config.get("added_tokens_decoder") or {}).values()
             if isinstance(t, dict) and t.get("special", True)]
  return [t for t in tokens if t]


# SentencePiece.


def extra_ids(config: dict[str, Any], tokenizer: Optional[dict[str, Any]] = None) -> int:
  """How many sentinels (``<extra_id_N>``) a checkpoint adds to its SentencePiece model.

  ``extra_ids`` of ``tokenizer_config.json`` when given; else the number of
  ``<extra_id_N>`` tokens the configuration or ``tokenizer.json`` lists; else
  100 for a T5 tokenizer class (Hugging Face's default) and 0 otherwise.

  Raises:
    ValueError: The listed sentinels are not ``<extra_id_0>`` to ``<extra_id_{n-1}>``.
  """
  if config.get("extra_ids") is not None:
    return int(config["extra_ids"])
  names = set(_additional_special_tokens(config))
  names |= {t.get("content") for t in (tokenizer or {}).get("added_tokens", [])}
  numbers = sorted(int(m.group(1)) for m in map(SENTINEL.fullmatch, filter(None, names)) if m)
  if numbers:
    if numbers != list(range(len(numbers))):
      raise ValueError(f"The checkpoint's sentinels are <extra_id_N> for N in {numbers}, not 0..{len(numbers) - 1}; "
                       "lmlab (like seqio) numbers sentinels from the top of the vocabulary and needs all of them.")
    return len(numbers)
  tokenizer_class = str(config.get("tokenizer_class") or "")
  return T5_EXTRA_IDS if tokenizer_class.startswith(T5_CLASSES) else 0


def _json_ids_match_sentencepiece(model_path: str, tokenizer: dict[str, Any]) -> bool:
  """Does the ``tokenizer.json`` give each piece of the SentencePiece model the model's id?

  Hugging Face's T5 files list the sentinels after the pieces; their ids are
  checked by ``sentencepiece_vocabulary``.
  """
  processor = spm.SentencePieceProcessor(model_proto=_read(model_path))
  pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
  model = tokenizer.get("model", {})
  vocab = model.get("vocab")
  if isinstance(vocab, list):  # Unigram: [piece, score] in id order, then perhaps the sentinels
    return ([entry[0] for entry in vocab[:len(pieces)]] == pieces
            and all(SENTINEL.fullmatch(entry[0]) for entry in vocab[len(pieces):]))
  if isinstance(vocab, dict):
    return all(vocab.get(piece) == i for i, piece in enumerate(pieces))
  return False


def sentencepiece_vocabulary(model_path: str, config: dict[str, Any],
                             tokenizer: Optional[dict[str, Any]] = None) -> seqio.SentencePieceVocabulary:
  """seqio's SentencePiece vocabulary with the checkpoint's sentinels (see ``extra_ids``).

  Raises:
    ValueError: ``tokenizer.json`` gives the sentinels other ids than the
      top ones.
  """
  extra = extra_ids(config, tokenizer)
  vocab = seqio.SentencePieceVocabulary(model_path, extra_ids=extra)
  for token in (tokenizer or {}).get("added_tokens", []):
    match = SENTINEL.fullmatch(token.get("content", ""))
    if match and token["id"] != vocab.vocab_size - 1 - int(match.group(1)):
      raise ValueError(f"{token['content']} has id {token['id']} in the tokenizer.json next to {model_path}, but "
                       f"sentinel j must be id {vocab.vocab_size - 1} - j (seqio and T5's layout).")
  return vocab


# WordPiece.


def _wordpiece_roles(config: dict[str, Any], vocab: dict[str, int]) -> dict[str, Optional[str]]:
  """BERT's special tokens: the configuration's, else BERT's names; a missing mask token is None."""
  found = roles(config)
  chosen = {role: found.get(role, default) for role, default in BERT_DEFAULTS.items()}
  if chosen["mask"] not in vocab:
    chosen["mask"] = None
  return chosen


def _settings(config: dict[str, Any], chosen: dict[str, Optional[str]], vocab: dict[str, int],
              **overrides) -> wordpiece.WordPieceSettings:
  if config.get("do_basic_tokenize") is False:
    raise ValueError("do_basic_tokenize=False (WordPiece without BERT's normalization and word splitting) is "
                     "not supported; lmlab reproduces BERT's tokenizer only.")
  extra = tuple(t for t in dict.fromkeys(_additional_special_tokens(config)) if t not in chosen.values())
  missing = [t for t in extra if t not in vocab]
  if missing:
    raise ValueError(f"The checkpoint's special tokens {missing} are not in its vocabulary; lmlab cannot give "
                     "them the ids Hugging Face appends.")
  settings = dict(
      lowercase=bool(config.get("do_lower_case", True)), strip_accents=config.get("strip_accents"),
      handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
      unk_token=chosen["unk"], sep_token=chosen["sep"], pad_token=chosen["pad"], cls_token=chosen["cls"],
      mask_token=chosen["mask"], extra_special_tokens=extra,
      clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)))
  settings.update(overrides)
  return wordpiece.WordPieceSettings(**settings)


def wordpiece_from_vocab_txt(path: str, config: dict[str, Any]) -> wordpiece.WordPieceVocabulary:
  """BERT's ``vocab.txt`` with the settings of the checkpoint's configuration (uncased by default, as BERT)."""
  tokens = wordpiece.read_vocab_txt(_read(path))
  vocab = {t: i for i, t in enumerate(tokens)}
  return wordpiece.WordPieceVocabulary(tokens, _settings(config, _wordpiece_roles(config, vocab), vocab))


def _is_bert_pipeline(tokenizer: dict[str, Any]) -> bool:
  """Is this WordPiece ``tokenizer.json`` BERT's pipeline, which ``WordPieceVocabulary`` reproduces?"""
  normalizer, pre_tokenizer = tokenizer.get("normalizer"), tokenizer.get("pre_tokenizer")
  decoder, vocab = tokenizer.get("decoder"), tokenizer["model"].get("vocab", {})
  if normalizer is not None and normalizer.get("type") != "BertNormalizer":
    return False
  if (pre_tokenizer or {}).get("type") != "BertPreTokenizer" or (decoder or {}).get("type") != "WordPiece":
    return False
  if decoder.get("prefix", wordpiece.PREFIX) != tokenizer["model"].get("continuing_subword_prefix", wordpiece.PREFIX):
    return False
  return all(t.get("special") and not (t.get("normalized") or t.get("lstrip") or t.get("rstrip")
                                       or t.get("single_word")) and vocab.get(t.get("content")) == t.get("id")
             for t in tokenizer.get("added_tokens", []))


def wordpiece_from_json(tokenizer: dict[str, Any], json_text: str,
                        config: dict[str, Any]) -> wordpiece.WordPieceVocabulary:
  """BERT's fast-tokenizer file as a ``WordPieceVocabulary``.

  The file's normalizer gives the settings, except those the configuration
  sets (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``),
  which win, as in transformers' ``BertTokenizer``. (Without a configuration,
  transformers' ``BertTokenizer`` would lowercase regardless of the file; lmlab
  follows the file, as ``PreTrainedTokenizerFast`` does.)
  """
  model = tokenizer["model"]
  vocab: dict[str, int] = model["vocab"]
  tokens = [""] * (max(vocab.values()) + 1)
  for token, i in vocab.items():
    tokens[i] = token
  chosen = _wordpiece_roles(config, vocab)
  chosen["unk"] = model.get("unk_token", chosen["unk"])
  frame = tokenizer_json.framing(tokenizer_json.parse(json_text))
  pair_separator: tuple[str, ...] = ()
  if frame is not None:
    cls, eos, separator = frame
    ids_to_tokens = dict(enumerate(tokens))
    chosen["cls"], chosen["sep"] = ids_to_tokens[cls] if cls is not None else chosen["cls"], ids_to_tokens[eos]
    pair_separator = tuple(ids_to_tokens[i] for i in separator)
  normalizer = tokenizer.get("normalizer") or {"clean_text": False, "handle_chinese_chars": False,
                                               "strip_accents": False, "lowercase": False}
  added = [t["content"] for t in tokenizer.get("added_tokens", [])]
  config = dict(config, additional_special_tokens=_additional_special_tokens(config) + added)
  # The configuration's settings win over the file's, as in transformers' BertTokenizer.
  settings = _settings(
      config, chosen, vocab, lowercase=bool(config.get("do_lower_case", normalizer.get("lowercase", True))),
      strip_accents=config["strip_accents"] if "strip_accents" in config else normalizer.get("strip_accents"),
      handle_chinese_chars=bool(config.get("tokenize_chinese_chars", normalizer.get("handle_chinese_chars", True))),
      clean_text=bool(normalizer.get("clean_text", True)),
      continuing_subword_prefix=model.get("continuing_subword_prefix", wordpiece.PREFIX),
      max_input_chars_per_word=int(model.get("max_input_chars_per_word", wordpiece.MAX_INPUT_CHARS_PER_WORD)),
      decoder_cleanup=bool(tokenizer["decoder"].get("cleanup", True)))
  return wordpiece.WordPieceVocabulary(tokens, settings, pair_separator=pair_separator)


# tokenizer.json and byte-level BPE.


def _sentencepiece_next_to(folder: str) -> Optional[str]:
  for name in SENTENCEPIECE_FILES:
    if tf.io.gfile.exists(_join(folder, name)):
      return _join(folder, name)
  models = sorted(n for n in tf.io.gfile.listdir(folder) if n.endswith(".model")) if tf.io.gfile.isdir(folder) else []
  return _join(folder, models[0]) if models else None


def from_tokenizer_json(path: str, config: dict[str, Any]) -> seqio.Vocabulary:
  """The vocabulary of a ``tokenizer.json`` (see the module docstring for which kind).

  Raises:
    ValueError: A Unigram file without a SentencePiece model next to it
      that numbers its pieces alike.
  """
  json_text = _read(path).decode("utf-8")
  try:
    tokenizer = json.loads(json_text)
    model_type = tokenizer["model"].get("type")
  except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
    raise ValueError(f"{path} is not a Hugging Face tokenizer.json (no model): {e}") from e
  folder = posixpath.dirname(path)
  if model_type == "Unigram":
    model_path = _sentencepiece_next_to(folder)
    if model_path is None or not _json_ids_match_sentencepiece(model_path, tokenizer):
      where = f"{model_path} numbers its pieces differently" if model_path else "there is no SentencePiece model"
      raise ValueError(f"{path} is a Unigram (SentencePiece) tokenizer, and {where}: lmlab tokenizes Unigram "
                       f"models with SentencePiece itself. Put the checkpoint's {SENTENCEPIECE_FILES[0]} (T5, "
                       "mT5) next to it and load that.")
    return sentencepiece_vocabulary(model_path, config, tokenizer)
  if model_type == "WordPiece" and _is_bert_pipeline(tokenizer):
    return wordpiece_from_json(tokenizer, json_text, config)
  return tokenizer_json.TokenizerJsonVocabulary(
      json_text, roles(config),
      clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)))


def from_bpe_files(vocab_path: str, merges_path: str, config: dict[str, Any]) -> seqio.Vocabulary:
  """GPT-2/RoBERTa's ``vocab.json`` + ``merges.txt`` as a byte-level BPE tokenizer.

  Built as Hugging Face builds it from these files: byte-level pre-tokenizer
  (``add_prefix_space`` from the configuration, default off), the
  configuration's special tokens, and RoBERTa's framing when the
  configuration names both a ``cls_token`` and a ``sep_token``.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  vocab = _read_json(vocab_path)
  lines = _read(merges_path).decode("utf-8").splitlines()
  merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
  add_prefix_space = bool(config.get("add_prefix_space", False))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
  tokenizer.decoder = decoders.ByteLevel()
  special = []
  for role in tokenizer_json.ROLES:
    value = config.get(f"{role}_token")
    content = token_string(value)
    if content:
      flags = value if isinstance(value, dict) else {}
      special.append(tokenizers.AddedToken(content, special=True, normalized=False,
                                           lstrip=bool(flags.get("lstrip", False)),
                                           rstrip=bool(flags.get("rstrip", False))))
  tokenizer.add_special_tokens(special + _additional_special_tokens(config))
  found = roles(config)
  if "cls" in found and "sep" in found:
    tokenizer.post_processor = processors.RobertaProcessing(
        (found["sep"], tokenizer.token_to_id(found["sep"])), (found["cls"], tokenizer.token_to_id(found["cls"])),
        trim_offsets=bool(config.get("trim_offsets", True)), add_prefix_space=add_prefix_space)
  return tokenizer_json.TokenizerJsonVocabulary(
      tokenizer.to_str(), found,
      clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)))


# Entry points.


def load_folder(folder: str) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face model folder (first found of ``LOOKED_FOR``).

  Raises:
    FileNotFoundError: The folder holds none of the tokenizer files.
    ValueError: Its SentencePiece model and ``tokenizer.json`` disagree on
      ids in a way lmlab cannot reproduce (XLM-R's shifted ids).
  """
  config = read_config(folder)
  json_path = _join(folder, TOKENIZER_JSON)
  has_json = tf.io.gfile.exists(json_path)
  model_path = _sentencepiece_next_to(folder)
  if model_path is not None:
    tokenizer = _read_json(json_path) if has_json else None
    if tokenizer is None or _json_ids_match_sentencepiece(model_path, tokenizer):
      return sentencepiece_vocabulary(model_path, config, tokenizer)
    if tokenizer.get("model", {}).get("type") == "Unigram":
      raise ValueError(f"{json_path} numbers the pieces of {model_path} differently (as XLM-R and CamemBERT do, "
                       "shifting them by fairseq's special tokens); lmlab cannot reproduce those ids.")
  if has_json:
    return from_tokenizer_json(json_path, config)
  if tf.io.gfile.exists(_join(folder, VOCAB_TXT)):
    return wordpiece_from_vocab_txt(_join(folder, VOCAB_TXT), config)
  if all(tf.io.gfile.exists(_join(folder, name)) for name in BPE_FILES):
    return from_bpe_files(*(_join(folder, name) for name in BPE_FILES), config)
  raise FileNotFoundError(f"{folder} holds no tokenizer file: looked for {', '.join(LOOKED_FOR)}. Give the folder "
                          "of a released checkpoint (with its tokenizer files) or one of those files.")


def load(path: str) -> seqio.Vocabulary:
  """The vocabulary of a tokenizer file (``.model``, ``tokenizer.json``, ``vocab.txt``, ``vocab.json``,
  ``merges.txt``) or of a model folder; a file's folder supplies its configuration.

  Raises:
    FileNotFoundError: ``path`` does not exist, or is a folder without
      tokenizer files.
    ValueError: A file of a kind lmlab does not read, or one it cannot
      reproduce.
  """
  if tf.io.gfile.isdir(path):
    return load_folder(path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"No such tokenizer file or folder: {path}.")
  folder, name = posixpath.split(path)
  config = read_config(folder)
  if name.endswith(".model"):
    json_path = _join(folder, TOKENIZER_JSON)
    tokenizer = _read_json(json_path) if tf.io.gfile.exists(json_path) else None
    return sentencepiece_vocabulary(path, config, tokenizer)
  if name in BPE_FILES:
    missing = [n for n in BPE_FILES if not tf.io.gfile.exists(_join(folder, n))]
    if missing:
      raise FileNotFoundError(f"{path} needs {' and '.join(missing)} next to it (GPT-2/RoBERTa's BPE files).")
    return from_bpe_files(*(_join(folder, n) for n in BPE_FILES), config)
  if name.endswith(".json"):
    return from_tokenizer_json(path, config)
  if name.endswith(".txt"):
    return wordpiece_from_vocab_txt(path, config)
  raise ValueError(f"Cannot tell what kind of tokenizer file {path} is: give a SentencePiece .model, a "
                   "tokenizer.json, a WordPiece vocab.txt, GPT-2's vocab.json/merges.txt, or the model folder.")
