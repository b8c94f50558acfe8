"""lmlab networks: pure Flax Linen modules that map tokens to logits."""

from lmlab.models.config import EncoderConfig
from lmlab.models.encoder import Encoder, EncoderForMaskedLM, EncoderForSequenceClassification

__all__ = [
    "EncoderConfig",
    "Encoder",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
]
