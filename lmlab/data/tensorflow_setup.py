"""TensorFlow as lmlab uses it: an input-pipeline library that never touches accelerators.

seqio and tf.data run on the host CPU. Left alone, TensorFlow would claim
GPU memory JAX needs (it reserves most of each visible GPU when its
runtime starts) and, on a machine without a GPU, print a ``failed call to
cuInit`` error line at every start. :func:`hide_accelerators_from_tensorflow`
makes GPUs and TPUs invisible to TensorFlow before its runtime starts (as
T5X does); ``lmlab.data`` calls it on import, before any tf.data op runs.
JAX is not affected: the setting is TensorFlow's own device list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

logger = logging.getLogger(__name__)
# Accelerator kinds TensorFlow could grab.
HIDDEN_DEVICE_TYPES = ("GPU", "TPU")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
  """Sends file descriptor 2 to /dev/null, silencing C++ log lines (Python errors still raise)."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its native start-up log lines (oneDNN, CUDA stubs) silenced."""
  if "tensorflow" not in sys.modules:
    with native_stderr_silenced():
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401


def hide_accelerators_from_tensorflow() -> bool:
  """Makes TensorFlow see only CPUs; returns False if its runtime had already started.

  Listing devices starts TensorFlow's runtime, which probes CUDA; on a
  machine without a GPU that probe logs a harmless ``cuInit`` error from
  C++, so the call runs with native stderr silenced.
  """
  import_tensorflow_quietly()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    with native_stderr_silenced():
      for device_type in HIDDEN_DEVICE_TYPES:
        tf.config.set_visible_devices([], device_type)
  except RuntimeError as e:  # "Visible devices cannot be modified after being initialized"
    logger.warning("TensorFlow's runtime started before lmlab could hide accelerators from it "
                   "(%s); tf.data may hold GPU memory. Import lmlab.data before running "
                   "TensorFlow ops.", e)
    return False
  return True
