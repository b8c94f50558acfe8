"""Trains vocabularies: the shipped embedded 8k SentencePiece model, or one on a user's own text.

Without ``--input`` this rebuilds ``assets/spm/embedded_8k.model`` exactly as
shipped: unigram model, 8192 pieces, trained on the whole train split of the
embedded corpus (``assets/embedded/train.txt.gz``, one document per line), ids
pad=0, eos=1, unk=2, no bos (the T5/seqio convention), a user-defined
``<mask>`` piece for masked-language modelling, byte fallback so any UTF-8
text encodes without unknown tokens, full character coverage, and a single
training thread so the result is reproducible.

With ``--input`` it trains on the given files (``.txt``: one document per
line; ``.jsonl``: one JSON object per line, text in ``--text_field``; either
may be gzipped), in one of two styles:

* ``t5`` (default): a SentencePiece model (``--model_type unigram|bpe``) with
  the settings above, ready for T5's 100 sentinels (``extra_ids=100``, added
  on top by seqio and Hugging Face). ``--output DIR`` writes a Hugging Face
  folder (``spiece.model`` and a ``tokenizer_config.json`` with
  ``extra_ids``); ``--out_prefix P`` writes ``P.model`` and ``P.vocab`` only.
  Byte fallback is on by default (lmlab's choice); Hugging Face's
  ``T5Tokenizer`` ignores it and gives ``<unk>`` instead, so use
  ``--no-byte_fallback`` for a model whose ids it reproduces exactly.
* ``bert``: a BERT WordPiece vocabulary (``[PAD]``, ``[UNK]``, ``[CLS]``,
  ``[SEP]``, ``[MASK]`` first; uncased unless ``--cased``) trained with the
  ``tokenizers`` library; ``--output DIR`` writes ``vocab.txt``,
  ``tokenizer.json`` and ``tokenizer_config.json``.

Either output loads with ``lmlab.data.vocabularies.load_vocabulary``.

Usage::

    python -m lmlab.data.build_vocabulary
    python -m lmlab.data.build_vocabulary --input 'corpus/*.txt.gz' --output my_t5_vocab
    python -m lmlab.data.build_vocabulary --input 'wiki/*.jsonl' --style bert --output my_bert_vocab \\
        --max_sentences 2000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import random
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

import sentencepiece as spm

DATA_DIR = pathlib.Path(__file__).parent / "assets"
MASK_PIECE = "<mask>"
VOCAB_SIZE = 8192
DEFAULT_VOCAB_SIZES = {"t5": 32000, "bert": 30522}
T5_EXTRA_IDS = 100
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SAMPLE_SEED = 0


def train(out_prefix: pathlib.Path, vocab_size: int = VOCAB_SIZE) -> pathlib.Path:
  """Trains the embedded model and returns the path of the written ``.model`` file."""
  out_prefix.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    text = pathlib.Path(tmp) / "train.txt"
    with gzip.open(DATA_DIR / "embedded" / "train.txt.gz", "rt", encoding="utf-8") as f:
      text.write_text(f.read(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out_prefix), model_type="unigram",
        vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=[MASK_PIECE], byte_fallback=True, character_coverage=1.0,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=1 << 16,
        minloglevel=2)
  return out_prefix.with_suffix(".model")


# Reading a user's corpus.


def input_files(patterns: Sequence[str]) -> list[str]:
  """The files matching each glob pattern, in order, each once.

  Raises:
    FileNotFoundError: A pattern matches no file.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for gs:// globs and reads)
  files: list[str] = []
  for pattern in patterns:
    matched = sorted(tf.io.gfile.glob(pattern))
    if not matched:
      raise FileNotFoundError(f"--input {pattern!r} matches no file; check the path and quote the pattern so the "
                              "shell does not expand it.")
    files += [f for f in matched if f not in files]
  return files


def _lines(path: str) -> Iterator[str]:
  """The lines of a text file, local or remote, gzipped or not (without line breaks)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  opener = tf.io.gfile.GFile if "://" in path else open
  with opener(path, "rb") as raw:
    stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    for number, line in enumerate(stream, 1):
      try:
        yield line.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{number} is not valid UTF-8 ({e.reason}); re-encode the file as UTF-8.") from e


def read_documents(patterns: Sequence[str], text_field: str = "text") -> Iterator[str]:
  """Documents of the input files: lines of ``.txt`` files, ``text_field`` of ``.jsonl`` lines; empty ones skipped.

  Raises:
    FileNotFoundError: A pattern matches no file.
    ValueError: A ``.jsonl`` line is not a JSON object with a string
      ``text_field``, or a file is neither ``.txt`` nor ``.jsonl`` (optionally
      ``.gz``).
  """
  for path in input_files(patterns):
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".jsonl"):
      for number, line in enumerate(_lines(path), 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
          text = record[text_field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{path}:{number} is not a JSON object with a {text_field!r} field ({e}); set "
                           "--text_field to the field holding the text.") from e
        if not isinstance(text, str):
          raise ValueError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, not text.")
        if text.strip():
          yield text
    elif name.endswith(".txt"):
      yield from (line for line in _lines(path) if line.strip())
    else:
      raise ValueError(f"Cannot read {path}: inputs are .txt (one document per line) or .jsonl files, "
                       "optionally gzipped (.gz).")


def sample(documents: Iterable[str], max_sentences: int, seed: int = SAMPLE_SEED) -> list[str]:
  """Up to ``max_sentences`` documents drawn uniformly (reservoir sampling, reproducible), in corpus order."""
  rng = random.Random(seed)
  kept: list[tuple[int, str]] = []
  for i, document in enumerate(documents):
    if len(kept) < max_sentences:
      kept.append((i, document))
    else:
      j = rng.randint(0, i)
      if j < max_sentences:
        kept[j] = (i, document)
  return [document for _, document in sorted(kept)]


# Training.


def train_sentencepiece(documents: Iterable[str], out_prefix: pathlib.Path, vocab_size: int,
                        model_type: str = "unigram", byte_fallback: bool = True,
                        num_threads: int = 1) -> pathlib.Path:
  """A T5-style SentencePiece model (pad 0, EOS 1, UNK 2, no BOS, ``<mask>``); returns the ``.model`` path."""
  out_prefix.parent.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(documents), model_prefix=str(out_prefix), model_type=model_type,
      vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, user_defined_symbols=[MASK_PIECE],
      byte_fallback=byte_fallback, character_coverage=1.0, num_threads=num_threads, input_sentence_size=0,
      shuffle_input_sentence=False, max_sentence_length=1 << 16, minloglevel=2)
  return out_prefix.with_suffix(".model")


def write_t5_folder(documents: Iterable[str], output: pathlib.Path, vocab_size: int, model_type: str = "unigram",
                    byte_fallback: bool = True, extra_ids: int = T5_EXTRA_IDS, num_threads: int = 1) -> pathlib.Path:
  """A Hugging Face T5-style folder: ``spiece.model`` and ``tokenizer_config.json`` (``extra_ids``)."""
  model = train_sentencepiece(documents, output / "spiece", vocab_size, model_type, byte_fallback, num_threads)
  config = {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, "pad_token": "<pad>", "eos_token": "</s>",
            "unk_token": "<unk>", "additional_special_tokens": [f"<extra_id_{i}>" for i in range(extra_ids)]}
  (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  return model


def write_bert_folder(documents: Iterable[str], output: pathlib.Path, vocab_size: int,
                      lowercase: bool = True) -> pathlib.Path:
  """A BERT WordPiece folder (``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json``); returns it."""
  # pylint: disable-next=g-import-not-at-top  (the embedded build does not need the library)
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
  pad, unk, cls, sep, mask = BERT_SPECIAL_TOKENS
  tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL_TOKENS),
                                      show_progress=False)
  tokenizer.train_from_iterator(documents, trainer)
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
      special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
  output.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(output / "tokenizer.json"))
  tokenizer.model.save(str(output))  # vocab.txt
  config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "unk_token": unk, "sep_token": sep,
            "pad_token": pad, "cls_token": cls, "mask_token": mask, "tokenize_chinese_chars": True,
            "strip_accents": None}
  (output / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
  return output


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", action="append", default=[],
                      help="glob of .txt/.jsonl(.gz) files; repeatable. Without it, rebuild the embedded model.")
  parser.add_argument("--text_field", default="text", help="field of .jsonl records holding the text")
  parser.add_argument("--style", choices=("t5", "bert"), default="t5")
  parser.add_argument("--model_type", choices=("unigram", "bpe"), default=None,
                      help="SentencePiece model (t5 style; default unigram)")
  parser.add_argument("--vocab_size", type=int, default=None,
                      help=f"default {VOCAB_SIZE} without --input, else {DEFAULT_VOCAB_SIZES}")
  parser.add_argument("--max_sentences", type=int, default=0,
                      help="train on at most this many documents, sampled uniformly (0: all)")
  parser.add_argument("--output", type=pathlib.Path, default=None, help="folder to write (Hugging Face layout)")
  parser.add_argument("--out_prefix", type=pathlib.Path, default=None,
                      help="SentencePiece output prefix (writes PREFIX.model and PREFIX.vocab)")
  parser.add_argument("--cased", action="store_true", help="bert style: keep case and accents")
  parser.add_argument("--byte_fallback", action=argparse.BooleanOptionalAction, default=True,
                      help="t5 style: spell unknown characters as UTF-8 byte pieces")
  parser.add_argument("--extra_ids", type=int, default=T5_EXTRA_IDS, help="t5 style: sentinels for the config")
  parser.add_argument("--num_threads", type=int, default=1, help="SentencePiece training threads")
  args = parser.parse_args(argv)

  if not args.input:
    if args.output or args.style != "t5" or args.model_type or args.max_sentences:
      parser.error("--output, --style, --model_type and --max_sentences need --input (the embedded model is fixed).")
    out_prefix = args.out_prefix or DATA_DIR / "spm" / "embedded_8k"
    print(f"wrote {train(out_prefix, args.vocab_size or VOCAB_SIZE)}")
    return
  if (args.output is None) == (args.out_prefix is None):
    parser.error("give exactly one of --output (a folder) and --out_prefix.")
  if args.style == "bert" and (args.out_prefix is not None or args.model_type is not None):
    parser.error("--style bert trains WordPiece and writes a folder: use --output, without --model_type.")
  if args.max_sentences < 0:
    parser.error("--max_sentences must be >= 0.")
  vocab_size = args.vocab_size or DEFAULT_VOCAB_SIZES[args.style]
  input_files(args.input)  # fail on an empty pattern before reading anything
  documents: Iterable[str] = read_documents(args.input, args.text_field)
  if args.max_sentences:
    documents = sample(documents, args.max_sentences)
  if args.style == "bert":
    written = write_bert_folder(documents, args.output, vocab_size, lowercase=not args.cased)
  elif args.output is not None:
    write_t5_folder(documents, args.output, vocab_size, args.model_type or "unigram", args.byte_fallback,
                    args.extra_ids, args.num_threads)
    written = args.output
  else:
    written = train_sentencepiece(documents, args.out_prefix, vocab_size, args.model_type or "unigram",
                                  args.byte_fallback, args.num_threads)
  print(f"wrote {written}")


if __name__ == "__main__":
  main()
