"""JAX's persistent compilation cache, on by default under the run directory.

A restarted or resumed job (a preempted TPU slice, the next SLURM array
task, a second fine-tuning seed in a new process) finds its compiled steps
on disk instead of recompiling them, which on a pod can take minutes.

Where the cache lives (``TrainConfig.compilation_cache_dir``):

* ``""`` (default): JAX's own setting if the user gave one
  (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``), else
  ``MODEL_DIR/compilation_cache``;
* a path (local or ``gs://``): that folder, shareable between runs;
* ``None``: lmlab leaves the cache off.

Only compilations slower than ``compilation_cache_min_compile_secs`` are
written (JAX's default threshold, 1 s, keeps tiny helper programs out).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

logger = logging.getLogger(__name__)
CACHE_FOLDER = "compilation_cache"
# The directory lmlab itself configured last (one the user set is left alone).
_configured: Optional[str] = None


def enable(model_dir: str, directory: Optional[str] = "",
           min_compile_secs: float = 1.0) -> Optional[str]:
  """Points JAX's persistent cache at the run's folder; returns the folder (None: off)."""
  global _configured
  if directory is None:
    return None
  current = jax.config.jax_compilation_cache_dir
  if not directory:
    if current and current != _configured:
      return current  # the user's own setting wins
    directory = os.path.join(model_dir, CACHE_FOLDER)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  if directory != current:
    jax_cache.set_cache_dir(directory)
    jax_cache.reset_cache()  # JAX opens its cache once; make it open this folder
    logger.info("Persistent compilation cache: %s", directory)
  _configured = directory
  return directory
