"""seqio task registrations: ``import lmlab.data.tasks`` makes them available.

* ``lmlab.embedded_mlm``: the shipped public-domain corpus, 8k SentencePiece.
* ``lmlab.embedded_mlm_bytes``: the same text as UTF-8 bytes (ByT5 ids).
* ``lmlab.c4_mlm``: C4 English from TFDS (``c4/en``), prepared by the user.

Encoder–decoder tasks (features ``inputs`` and ``targets``, both with EOS):

* ``lmlab.embedded_span_corruption``: T5 span corruption (density 0.15, mean
  span 3) of the embedded corpus, 8k SentencePiece + 100 sentinels.
* ``lmlab.c4_span_corruption``: the same on C4 English (TFDS ``c4/en``).
* ``lmlab.embedded_bart_denoising``: BART text infilling with sentence
  permutation, 8k SentencePiece (``<mask>`` piece).
* ``lmlab.embedded_byt5_span_corruption``: ByT5 span corruption (mean span
  20) of the embedded corpus as UTF-8 bytes, in released ByT5's layout:
  ``ByteVocabulary()`` without extra ids, sentinels 258, 257, ... (bytes
  0xFF, 0xFE, ..., never valid UTF-8).
* ``lmlab.mc4_byt5_span_corruption``: the same on mC4 (TFDS
  ``c4/multilingual``); ``train`` reads all language splits, ``validation``
  all ``<lang>-validation`` splits, in their natural proportions (ByT5
  sampled languages with exponent 0.3; use a seqio mixture for that).

Registration is idempotent, so re-importing (notebooks, tests) is harmless.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable

import seqio
import tensorflow as tf

from lmlab.data import denoising, preprocessors, vocabularies

EMBEDDED_DIR = pathlib.Path(__file__).parent / "assets" / "embedded"
EMBEDDED_SPLITS = ("train", "validation")
C4_TFDS_NAME = "c4/en:3.1.0"
MC4_TFDS_NAME = "c4/multilingual:3.1.0"


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


def denoising_preprocessors(objective: Callable[..., tf.data.Dataset]) -> list:
  """Text -> tokens (no EOS) -> (cache point) -> chunks corrupted by ``objective`` -> EOS on both.

  Args:
    objective: A preprocessor of ``lmlab.data.denoising`` (e.g.
      ``span_corruption``) that turns token ``targets`` into ``inputs`` and
      ``targets``.
  """
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      objective,
      seqio.preprocessors.append_eos_after_trim,
  ]


def _mc4_languages() -> list[str]:
  """mC4's language codes, as TFDS names its splits (empty if this TFDS does not list them)."""
  try:
    from tensorflow_datasets.text import c4  # pylint: disable=g-import-not-at-top
    return list(c4.MC4_LANGUAGES)
  except (ImportError, AttributeError):
    return []


def mc4_source() -> seqio.TfdsDataSource:
  """mC4 with ``train``/``validation`` splits made of all the per-language splits.

  TFDS names mC4's splits by language (``en``, ``en-validation``, ...); the
  trainer reads ``train``/``validation``, so both are mapped to the union of
  all languages. Should the language list be unavailable, the TFDS split
  names are exposed as they are.
  """
  languages = _mc4_languages()
  if not languages:
    return seqio.TfdsDataSource(tfds_name=MC4_TFDS_NAME)
  return seqio.TfdsDataSource(tfds_name=MC4_TFDS_NAME, splits={
      "train": "+".join(languages),
      "validation": "+".join(f"{lang}-validation" for lang in languages)})


def _add(name: str, source: seqio.DataSource, preprocessors_: list,
         output_features: dict[str, seqio.Feature]) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors_,
                         output_features=output_features, metric_fns=[], shuffle_buffer_size=1024)


def _register(name: str, source: seqio.DataSource, vocab: seqio.Vocabulary) -> None:
  _add(name, source, mlm_preprocessors(), {"targets": seqio.Feature(vocab, add_eos=True)})


def _register_enc_dec(name: str, source: seqio.DataSource, vocab: seqio.Vocabulary,
                      objective: Callable[..., tf.data.Dataset]) -> None:
  _add(name, source, denoising_preprocessors(objective),
       {"inputs": seqio.Feature(vocab, add_eos=True), "targets": seqio.Feature(vocab, add_eos=True)})


_embedded_source = seqio.FunctionDataSource(embedded_corpus, splits=EMBEDDED_SPLITS)
_register("lmlab.embedded_mlm", _embedded_source, vocabularies.embedded_vocabulary())
_register("lmlab.embedded_mlm_bytes", _embedded_source, vocabularies.byte_vocabulary())
_register("lmlab.c4_mlm", seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME), vocabularies.embedded_vocabulary())

_sentinel_spm = vocabularies.embedded_vocabulary_with_sentinels()
_register_enc_dec("lmlab.embedded_span_corruption", _embedded_source, _sentinel_spm, denoising.span_corruption)
_register_enc_dec("lmlab.c4_span_corruption", seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME), _sentinel_spm,
                  denoising.span_corruption)
_register_enc_dec("lmlab.embedded_bart_denoising", _embedded_source, vocabularies.embedded_vocabulary(),
                  denoising.bart_denoising)
_register_enc_dec("lmlab.embedded_byt5_span_corruption", _embedded_source, vocabularies.byt5_vocabulary(),
                  denoising.byt5_span_corruption)
_register_enc_dec("lmlab.mc4_byt5_span_corruption", mc4_source(), vocabularies.byt5_vocabulary(),
                  denoising.byt5_span_corruption)
