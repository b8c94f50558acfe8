"""Trains the SentencePiece vocabulary shipped as ``assets/spm/embedded_8k.model``.

Settings: unigram model, 8192 pieces, trained on the whole train split of the
embedded corpus (``assets/embedded/train.txt.gz``, one document per line), ids
pad=0, eos=1, unk=2, no bos (the T5/seqio convention), a user-defined
``<mask>`` piece for masked-language modelling, byte fallback so any UTF-8
text encodes without unknown tokens, full character coverage, and a single
training thread so the result is reproducible.

Usage::

    python -m lmlab.data.build_vocabulary
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import tempfile

import sentencepiece as spm

DATA_DIR = pathlib.Path(__file__).parent / "assets"
MASK_PIECE = "<mask>"
VOCAB_SIZE = 8192


def train(out_prefix: pathlib.Path, vocab_size: int = VOCAB_SIZE) -> pathlib.Path:
  """Trains the model and returns the path of the written ``.model`` file."""
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_prefix", type=pathlib.Path, default=DATA_DIR / "spm" / "embedded_8k")
  parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
  args = parser.parse_args()
  print(f"wrote {train(args.out_prefix, args.vocab_size)}")


if __name__ == "__main__":
  main()
