"""Pallas kernels with pure-jnp references.

``flash_attention``: tiled online-softmax attention, forward and backward
(the ``pallas`` attention backend of ``lmlab.models.attention``).
``lowbit_matmul``: W8A8 int8 and packed-ternary (BitNet b1.58) matmuls used
by quantization serving (``lmlab.models.quantized``).
On GPU they lower through Triton; on CPU they run in interpret mode.
"""
