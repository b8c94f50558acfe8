"""TensorFlow (tf.data, seqio) never sees or probes the accelerators JAX uses."""

from __future__ import annotations

import os
import subprocess
import sys

from lmlab.data import tensorflow_setup

_PROBE = """
import lmlab.data  # hides accelerators from TensorFlow
import tensorflow as tf
list(tf.data.Dataset.range(3).map(lambda x: x + 1).as_numpy_iterator())
print(sorted({d.device_type for d in tf.config.get_visible_devices()}))
"""


def test_tensorflow_sees_only_the_cpu_and_prints_no_cuda_probe():
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
  proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                        env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "['CPU']"
  # Neither the cuInit error of TensorFlow's CUDA probe nor its start-up chatter.
  assert "cuInit" not in proc.stderr, proc.stderr
  assert "oneDNN" not in proc.stderr and "cuda drivers" not in proc.stderr, proc.stderr


def test_every_accelerator_kind_is_hidden(monkeypatch):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  calls = []
  monkeypatch.setattr(tf.config, "set_visible_devices",
                      lambda devices, device_type=None: calls.append((list(devices), device_type)))
  assert tensorflow_setup.hide_accelerators_from_tensorflow()
  assert calls == [([], "GPU"), ([], "TPU")]


def test_a_started_runtime_is_reported_not_fatal(monkeypatch, caplog):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def refuse(devices, device_type=None):
    raise RuntimeError("Visible devices cannot be modified after being initialized")

  monkeypatch.setattr(tf.config, "set_visible_devices", refuse)
  assert not tensorflow_setup.hide_accelerators_from_tensorflow()
  assert "before lmlab could hide accelerators" in caplog.text
