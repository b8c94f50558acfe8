"""Input pipelines: seqio tasks, preprocessors, vocabularies, tf.data batches.

Importing the package hides GPUs and TPUs from TensorFlow (see
``tensorflow_setup``): tf.data is a host-side library here and must not claim
accelerator memory that JAX needs.
"""

from lmlab.data import tensorflow_setup as _tensorflow_setup

_tensorflow_setup.hide_accelerators_from_tensorflow()
