"""Pallas kernels (flash attention, low-bit matmul) with pure-jnp references.

The kernels are planned work; lmlab's attention currently runs on the "xla"
backend in ``lmlab.models.attention``.
"""
