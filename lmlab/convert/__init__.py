"""Checkpoint conversion between Hugging Face transformers and lmlab networks.

* ``auto``: the entry point. ``load_hf_checkpoint`` detects the family and
  the released class of a folder (Hugging Face, sentence-transformers, BiGS
  reference) and reports what it holds; ``export_hf_checkpoint`` writes a
  folder (with tokenizer files) that ``from_pretrained`` loads.
* ``hf_t5``: ``T5ForConditionalGeneration`` / ``T5EncoderModel`` <->
  ``EncoderDecoder`` (T5 v1.0, v1.1, Flan-T5, mT5, ByT5).
* ``hf_bert``: BERT / RoBERTa / XLM-R base models, ``*ForMaskedLM`` and
  ``BertForPreTraining`` <-> ``EncoderForMaskedLM`` (pooler kept), and
  ``*ForSequenceClassification`` <->
  ``EncoderForSequenceClassification(pooling="cls")``.
* ``bigs``: the BiGS reference's Flax parameter trees (jxiw/BiGS,
  ``flax_model.msgpack`` + ``config.json``) <-> BiGS ``EncoderForMaskedLM`` /
  ``EncoderForSequenceClassification``.
* ``common``: safetensors folder I/O, the plan-driven tensor mover and its
  mismatch errors, ``.npz``/``.msgpack`` parameter files.

Conversion itself needs only numpy and safetensors (no torch, no network).
Command line: ``python -m lmlab.convert {import,export} --family {auto,t5,bert,bigs}``.
"""

from lmlab.convert.auto import (TOKENIZER_FILES, ImportedCheckpoint, export_hf_checkpoint,
                                is_hf_folder, load_hf_checkpoint)
from lmlab.convert.bigs import load_reference_bigs, save_reference_bigs
from lmlab.convert.common import ConversionError, load_params, save_params
from lmlab.convert.hf_bert import (bert_config_from_hf, bert_config_to_hf, load_hf_bert,
                                   save_hf_bert)
from lmlab.convert.hf_t5 import load_hf_t5, save_hf_t5, t5_config_from_hf, t5_config_to_hf

__all__ = [
    "ConversionError",
    "ImportedCheckpoint",
    "TOKENIZER_FILES",
    "export_hf_checkpoint",
    "is_hf_folder",
    "load_hf_checkpoint",
    "bert_config_from_hf",
    "bert_config_to_hf",
    "load_hf_bert",
    "load_hf_t5",
    "load_reference_bigs",
    "load_params",
    "save_hf_bert",
    "save_hf_t5",
    "save_params",
    "save_reference_bigs",
    "t5_config_from_hf",
    "t5_config_to_hf",
]
