"""Pallas kernels with pure-jnp references.

``flash_attention``: tiled online-softmax attention, forward and backward
(the ``pallas`` attention backend of ``lmlab.models.attention``).
``lowbit_matmul``: W8A8 int8 and packed-ternary (BitNet b1.58) matmuls used
by quantization serving (``lmlab.models.quantized``).

Each kernel is built once per Pallas backend and the variant is chosen when
the computation is lowered (``_tiling.dispatch``): Triton on NVIDIA GPUs,
Mosaic on TPUs (TPU-legal layouts and blocks), interpret mode on CPU.
``cross_lowering`` lowers them for an accelerator from a CPU-only machine.
"""
