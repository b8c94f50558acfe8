"""Typed configuration of the networks: BERT-family encoder and T5-family encoder–decoder.

The config is a frozen dataclass so it can be hashed, compared and written
into a run directory. Gin binds its fields (see ``lmlab/configurables.py``);
the network modules take it as their only hyper-parameter argument.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

MLP_ACTIVATIONS = ("gelu", "relu", "silu", "gated_gelu", "gated_silu")
NORM_TYPES = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("post", "pre")
POSITION_SCHEMES = ("learned", "rope", "alibi")
ATTENTION_BACKENDS = ("xla", "pallas", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")
# Token-mixing sub-layer of an encoder block: self-attention + MLP (BERT) or
# the attention-free bidirectional gated SSM block of BiGS.
MIXERS = ("attention", "bigs")
SSM_A_INITS = ("hippo", "lin", "inv")
# Dense layers inside the blocks: float, BitNet b1.58 ternary or int8 W8A8
# quantization-aware training (see ``lmlab.models.quantized``).
DENSE_QUANTIZATIONS = ("none", "bitlinear", "int8")
# Name -> ``jax.checkpoint`` policy; "none" disables rematerialisation.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class _NetworkConfig:
  """What every network config shares: checked choice fields and dtype accessors."""

  def _check_choices(self, extra: dict[str, tuple]) -> None:
    choices = {
        "attention_backend": ATTENTION_BACKENDS,
        "dtype": DTYPES,
        "param_dtype": DTYPES,
        "remat_policy": tuple(REMAT_POLICIES),
        "dense_quantization": DENSE_QUANTIZATIONS,
        **extra,
    }
    for name, allowed in choices.items():
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(f"{type(self).__name__}.{name}={value!r} is not one of {allowed}.")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)


@dataclasses.dataclass(frozen=True)
class EncoderConfig(_NetworkConfig):
  """Hyper-parameters of a BERT-style bidirectional Transformer encoder.

  Attributes:
    vocab_size: Embedding rows. ``None`` means "take it from the task's
      vocabulary" (the model wrapper fills it in, rounded up to a multiple of
      128 for efficient matmuls).
    d_model: Width of the residual stream.
    num_layers: Number of Transformer blocks.
    num_heads: Attention heads per block.
    head_dim: Width of one head; ``None`` means ``d_model // num_heads``.
    d_ff: Hidden width of the MLP.
    mlp_activation: ``gelu``/``relu``/``silu`` or a gated variant
      (``gated_gelu``/``gated_silu``, GLU-style with two input projections).
    norm_type: ``layernorm`` (with mean subtraction and bias when
      ``use_bias``) or ``rmsnorm``.
    norm_position: ``post`` (original BERT: norm after each residual add) or
      ``pre`` (norm before each sub-layer and once after the last block).
    norm_eps: Epsilon of every norm.
    position_scheme: ``learned`` absolute embeddings, ``rope`` rotary
      embeddings on queries and keys, or ``alibi`` linear attention biases.
    max_positions: Longest sequence the model accepts; longer inputs raise.
    rope_theta: Base of the rotary frequencies.
    use_bias: Biases in dense layers and norms.
    num_token_types: Rows of the token-type (sentence A/B) embedding; 0
      disables it.
    embedding_norm: Normalise the summed embeddings (BERT does).
    dropout_rate: Dropout on embeddings and sub-layer outputs (as in BERT).
    attention_dropout_rate: Dropout on attention probabilities.
    tie_output_embedding: MLM decoder reuses the input embedding matrix.
    dtype: Compute/activation dtype.
    param_dtype: Storage dtype of parameters.
    attention_backend: ``xla`` (reference), ``pallas`` (flash-attention
      kernel, memory linear in length, no attention dropout), ``cudnn``
      (``jax.nn.dot_product_attention`` on GPU) or ``splash`` (JAX's TPU
      splash-attention kernel: no attention dropout and no ALiBi, which is
      refused here); see ``lmlab.models.attention``.
    initializer_range: Standard deviation of the truncated-normal init.
    pad_id: Token id of padding; positions holding it are never attended to
      when no segment ids are given.
    scan_layers: Run the blocks with ``nn.scan`` over one stacked set of
      parameters (``encoder/layers/...`` with a leading ``layers`` axis)
      instead of unrolling ``num_layers`` copies (``encoder/layers_<i>/...``).
      Compile time then no longer grows with depth, which matters for deep
      models and quick sweeps; the math is the same, but dropout masks differ
      from the unrolled model's (the dropout rng is split per layer).
    remat_policy: Rematerialisation (activation checkpointing) of each block:
      ``none`` keeps all activations for the backward pass; ``full`` saves
      only block inputs and recomputes the block; ``dots`` saves matmul
      outputs; ``dots_no_batch`` saves only matmuls without batch dimensions
      (the weight projections, not attention scores). Trades backward-pass
      recompute for activation memory, allowing larger batches or models.
    mixer: ``attention`` (Transformer blocks) or ``bigs`` (BiGS blocks, see
      ``lmlab.models.bigs``: two S4D branches and multiplicative gating; no
      attention, ``num_heads``/``position_scheme`` other than ``learned``
      are unused, ``d_ff`` is the gate's intermediate width, and there is no
      final norm after the last pre-norm block, as in the reference).
    ssm_state_size: BiGS: complex states ``N`` of each S4D system.
    ssm_a_init: BiGS: initial S4D spectrum, ``hippo`` (reference default),
      ``lin`` or ``inv``.
    ssm_shared_kernel: BiGS: one S4D system per direction shared by all
      channels (the reference) instead of one per channel. Per-channel
      kernels are built from a ``[d_model, N, L]`` complex array (about 2 GB
      per block at d_model 1024, N 64, L 4096), so prefer them at short lengths.
    ssm_mask_padding: BiGS: zero the SSM inputs at padding so neither
      direction reads padding (the reference lets it flow through).
    dense_quantization: Dense layers inside the blocks (attention, MLP and
      BiGS projections): ``none`` (float), ``bitlinear`` (BitNet b1.58:
      ternary weights, int8 per-token activations) or ``int8`` (W8A8),
      trained quantization-aware with straight-through gradients on float
      weights (``lmlab.models.quantized``). Embeddings, the MLM head, pooler and
      classifier stay float. Parameters are named and shaped as in the float
      model.
    quantization_serving: With ``dense_quantization``: the quantized layers
      hold packed weights (``kernel_packed``/``kernel_int8`` + ``kernel_scale``,
      from ``lmlab.models.quantized.export_packed``) and run the Pallas low-bit
      kernels, for inference only.
  """

  vocab_size: Optional[int] = None
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  head_dim: Optional[int] = None
  d_ff: int = 3072
  mlp_activation: str = "gelu"
  norm_type: str = "layernorm"
  norm_position: str = "post"
  norm_eps: float = 1e-12
  position_scheme: str = "learned"
  max_positions: int = 512
  rope_theta: float = 10000.0
  use_bias: bool = True
  num_token_types: int = 2
  embedding_norm: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  tie_output_embedding: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_backend: str = "xla"
  initializer_range: float = 0.02
  pad_id: int = 0
  scan_layers: bool = False
  remat_policy: str = "none"
  mixer: str = "attention"
  ssm_state_size: int = 64
  ssm_a_init: str = "hippo"
  ssm_shared_kernel: bool = True
  ssm_mask_padding: bool = False
  dense_quantization: str = "none"
  quantization_serving: bool = False

  def __post_init__(self):
    self._check_choices({"mlp_activation": MLP_ACTIVATIONS, "norm_type": NORM_TYPES,
                         "norm_position": NORM_POSITIONS, "position_scheme": POSITION_SCHEMES,
                         "mixer": MIXERS, "ssm_a_init": SSM_A_INITS})
    if self.mixer == "bigs" and self.position_scheme != "learned":
      raise ValueError(f"EncoderConfig.position_scheme={self.position_scheme!r} has no effect "
                       "with mixer='bigs' (no attention); BiGS uses learned absolute positions.")
    if self.mixer == "attention" and self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"EncoderConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "set head_dim explicitly or choose a divisible width.")
    if (self.mixer == "attention" and self.attention_backend == "splash"
        and self.position_scheme == "alibi"):
      raise ValueError("EncoderConfig.attention_backend='splash' cannot apply ALiBi "
                       "(position_scheme='alibi'): the splash kernel has no additive biases. "
                       "Use attention_backend='pallas' (in-kernel ALiBi) or 'xla'.")
    if self.position_scheme == "rope" and self.resolved_head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.resolved_head_dim}.")

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def with_vocab_size(self, vocab_size: int, multiple: int = 128) -> "EncoderConfig":
    """Returns a copy whose vocab_size is ``vocab_size`` rounded up to ``multiple``."""
    padded = -(-vocab_size // multiple) * multiple
    return dataclasses.replace(self, vocab_size=padded)


T5_MLP_ACTIVATIONS = ("relu", "gelu_tanh", "gated_gelu_tanh", "gated_relu", "gated_silu")
# MrT5 hard deletion: attention key bias of the kept tokens (``lmlab.models.byte_level``).
HARD_DELETE_KEY_BIASES = ("zero", "gate")


@dataclasses.dataclass(frozen=True)
class T5Config(_NetworkConfig):
  """Hyper-parameters of a T5-family encoder–decoder (T5, T5 v1.1, ByT5, MrT5).

  Defaults are T5 v1.1 small. Norms are RMSNorm without bias, attention has
  no biases and no ``1/sqrt(d)`` scaling (it is folded into the query init),
  and positions enter only through a bucketed relative position bias shared
  by all layers of a stack.

  Attributes:
    vocab_size: Rows of the (shared) input embedding and of the output
      projection. ``None``: the task's vocabulary, rounded up to
      ``vocab_multiple``.
    vocab_multiple: Rounding of ``vocab_size`` when taken from a task
      (ByT5: 259 byte ids + sentinels padded to 384).
    d_model: Width of the residual stream.
    num_heads: Attention heads.
    head_dim: Width of one head (T5 keeps it at 64 independently of d_model).
    d_ff: Hidden width of the MLP.
    num_encoder_layers: Encoder blocks (ByT5: three times the decoder's).
    num_decoder_layers: Decoder blocks.
    mlp_activation: ``gated_gelu_tanh`` (T5 v1.1, ByT5) or ``relu`` (T5 v1.0);
      ``gated_`` variants have two input projections ``wi_0``/``wi_1``.
    relative_attention_num_buckets: Buckets of the relative position bias.
    relative_attention_max_distance: Distance beyond which all offsets share
      the last bucket.
    norm_eps: RMSNorm epsilon.
    dropout_rate: Dropout on embeddings, sub-layer outputs, MLP hidden units
      and attention probabilities (0 in T5 v1.1 pretraining, 0.1 to
      fine-tune).
    tie_word_embeddings: Output logits reuse the input embedding (scaled by
      ``d_model**-0.5``), as in T5 v1.0; v1.1 and ByT5 have a separate
      ``logits_dense``.
    dtype: Compute dtype.
    param_dtype: Storage dtype of parameters.
    attention_backend: ``xla``, ``pallas`` or ``cudnn`` (see
      ``lmlab.models.attention``); ``pallas`` and ``cudnn`` need
      ``dropout_rate=0`` in training since T5 drops attention weights too.
      ``splash`` is refused: T5's self-attention adds a relative position
      bias (and MrT5's gate a per-key bias), which that kernel cannot apply.
    pad_id: Padding id (also the decoder start token).
    eos_id: End-of-sequence id.
    remat_policy: Rematerialisation of each block (see ``REMAT_POLICIES``).
    delete_gate_layer: MrT5: index of the encoder block whose input feeds the
      delete gate; the gate then acts on the attention of that block and all
      later ones and on cross-attention. ``None``: no gate (plain T5/ByT5).
    delete_gate_scale: MrT5's ``k``: gate values lie in ``(k, 0)``; ``k``
      means deleted, 0 kept. Padding is forced to ``k``.
    delete_gate_bias_init: Initial bias of the gate's ``Linear(d_model, 1)``
      (1, as in the reference; its weights start Xavier-uniform). Larger
      values start with more tokens kept.
    hard_delete_threshold: At inference, tokens whose gate is below this are
      removed from the sequence. ``None``: ``delete_gate_scale / 2``.
    hard_delete_key_bias: Attention key bias after hard deletion: ``zero``
      on every kept token (the reference) or ``gate``, the kept tokens' gate
      values (equal to soft deletion for them); see ``lmlab.models.byte_level``.
    dense_quantization: Dense layers inside the blocks (attention and MLP
      projections): ``none`` (float), ``bitlinear`` (BitNet b1.58: ternary
      weights, int8 per-token activations) or ``int8`` (W8A8), trained
      quantization-aware with straight-through gradients on float weights
      (``lmlab.models.quantized``). Embeddings, the vocabulary projection and
      MrT5's gate stay float. Parameters are named and shaped as in the
      float model.
    quantization_serving: With ``dense_quantization``: the quantized layers
      hold packed weights (``kernel_packed``/``kernel_int8`` + ``kernel_scale``,
      from ``lmlab.models.quantized.export_packed``) and run the Pallas low-bit
      kernels, for inference only.
  """

  vocab_size: Optional[int] = None
  vocab_multiple: int = 128
  d_model: int = 512
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_activation: str = "gated_gelu_tanh"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  tie_word_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_backend: str = "xla"
  pad_id: int = 0
  eos_id: int = 1
  remat_policy: str = "none"
  delete_gate_layer: Optional[int] = None
  delete_gate_scale: float = -30.0
  delete_gate_bias_init: float = 1.0
  hard_delete_threshold: Optional[float] = None
  hard_delete_key_bias: str = "zero"
  dense_quantization: str = "none"
  quantization_serving: bool = False

  def __post_init__(self):
    self._check_choices({"mlp_activation": T5_MLP_ACTIVATIONS,
                         "hard_delete_key_bias": HARD_DELETE_KEY_BIASES})
    if min(self.d_model, self.num_heads, self.head_dim, self.d_ff, self.num_encoder_layers,
           self.num_decoder_layers) < 1:
      raise ValueError("T5Config sizes (d_model, num_heads, head_dim, d_ff, layer counts) must be >= 1.")
    if self.attention_backend == "splash":
      gate = (" and MrT5's delete gate (delete_gate_layer) a per-key bias"
              if self.delete_gate_layer is not None else "")
      raise ValueError(
          "T5Config.attention_backend='splash' is not supported: T5's self-attention adds a "
          f"dense relative position bias{gate}, which the splash kernel cannot apply. Use "
          "attention_backend='pallas' (flash attention with in-kernel biases) or 'xla'.")
    if self.delete_gate_layer is not None:
      if not 0 <= self.delete_gate_layer < self.num_encoder_layers:
        raise ValueError(
            f"T5Config.delete_gate_layer={self.delete_gate_layer} must index an encoder block "
            f"(0..{self.num_encoder_layers - 1}).")
      if self.delete_gate_scale >= 0:
        raise ValueError(f"T5Config.delete_gate_scale must be negative, got {self.delete_gate_scale}.")

  @property
  def delete_threshold(self) -> float:
    if self.hard_delete_threshold is None:
      return self.delete_gate_scale / 2
    return self.hard_delete_threshold

  def with_vocab_size(self, vocab_size: int) -> "T5Config":
    """A copy whose vocab_size is ``vocab_size`` rounded up to ``vocab_multiple``."""
    padded = -(-vocab_size // self.vocab_multiple) * self.vocab_multiple
    return dataclasses.replace(self, vocab_size=padded)
