"""Checkpoint conversion between Hugging Face transformers and lmlab networks.

* ``hf_t5``: ``T5ForConditionalGeneration`` <-> ``EncoderDecoder`` (T5 v1.0,
  v1.1, ByT5).
* ``hf_bert``: ``BertForMaskedLM`` / ``RobertaForMaskedLM`` <->
  ``EncoderForMaskedLM``, with BERT's pooler kept (``BertForPreTraining``,
  ``BertModel``) and ``BertForSequenceClassification`` <->
  ``EncoderForSequenceClassification(pooling="cls")``.
* ``bigs``: the BiGS reference's Flax parameter trees (jxiw/BiGS,
  ``flax_model.msgpack`` + ``config.json``) <-> BiGS ``EncoderForMaskedLM`` /
  ``EncoderForSequenceClassification``.
* ``common``: safetensors folder I/O, the plan-driven tensor mover and its
  mismatch errors, ``.npz``/``.msgpack`` parameter files.

Conversion itself needs only numpy and safetensors (no torch, no network).
Command line: ``python -m lmlab.convert {import,export} --family {t5,bert,bigs}``.
"""

from lmlab.convert.bigs import load_reference_bigs, save_reference_bigs
from lmlab.convert.common import ConversionError, load_params, save_params
from lmlab.convert.hf_bert import (bert_config_from_hf, bert_config_to_hf, load_hf_bert,
                                   save_hf_bert)
from lmlab.convert.hf_t5 import load_hf_t5, save_hf_t5, t5_config_from_hf, t5_config_to_hf

__all__ = [
    "ConversionError",
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
