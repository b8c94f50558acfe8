"""seqio task registrations: ``import lmlab.data.tasks`` makes them available.

* ``lmlab.embedded_mlm``: the shipped public-domain corpus, 8k SentencePiece.
* ``lmlab.embedded_mlm_bytes``: the same text as UTF-8 bytes (ByT5 ids).
* ``lmlab.c4_mlm``: C4 English from TFDS (``c4/en``), prepared by the user.

Registration is idempotent, so re-importing (notebooks, tests) is harmless.
"""

from __future__ import annotations

import functools
import pathlib

import seqio
import tensorflow as tf

from lmlab.data import preprocessors, vocabularies

EMBEDDED_DIR = pathlib.Path(__file__).parent / "assets" / "embedded"
EMBEDDED_SPLITS = ("train", "validation")
C4_TFDS_NAME = "c4/en:3.1.0"


def embedded_corpus(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  """Documents of the embedded corpus as ``{"text": ...}``, shuffled when asked.

  The corpus is one small file per split, so "shuffling files" shuffles whole
  documents instead (reshuffled every epoch; reproducible given the seed).
  """
  path = EMBEDDED_DIR / f"{split}.txt.gz"
  if not path.exists():
    raise FileNotFoundError(f"Embedded corpus file {path} is missing: reinstall lmlab or rebuild it with "
                            "`python -m lmlab.data.build_embedded_corpus`.")
  dataset = tf.data.TextLineDataset(str(path), compression_type="GZIP")
  if shuffle_files:
    dataset = dataset.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
  return dataset.map(lambda line: {"text": line})


def mlm_preprocessors() -> list:
  """Text -> tokens + EOS -> (cache point) -> packed rows -> dynamic masking."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos,
      seqio.CacheDatasetPlaceholder(),
      preprocessors.pack_documents,
      preprocessors.mlm_mask,
  ]


def _register(name: str, source: seqio.DataSource, vocab: seqio.Vocabulary) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=mlm_preprocessors(),
      output_features={"targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[], shuffle_buffer_size=1024)


_embedded_source = seqio.FunctionDataSource(embedded_corpus, splits=EMBEDDED_SPLITS)
_register("lmlab.embedded_mlm", _embedded_source, vocabularies.embedded_vocabulary())
_register("lmlab.embedded_mlm_bytes", _embedded_source, vocabularies.byte_vocabulary())
_register("lmlab.c4_mlm", seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME), vocabularies.embedded_vocabulary())
