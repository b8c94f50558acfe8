"""Joining a multi-process JAX run (TPU pods, GPU clusters, or several CPU processes).

Every process runs the same program. ``jax.distributed.initialize`` connects
them so that ``jax.devices()`` lists the devices of all hosts and jitted
computations span them; it must run before anything touches a device.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import jax

logger = logging.getLogger(__name__)


def platform_provides_cluster(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether the environment describes a multi-process job JAX can join by itself.

  True on multi-host Cloud TPU VMs, in SLURM jobs with several tasks, under
  Open MPI with several ranks, and when ``JAX_COORDINATOR_ADDRESS`` is set.
  """
  env = os.environ if environ is None else environ
  def count(name: str) -> int:
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return (len(tpu_hosts) > 1 or count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1
          or bool(env.get("JAX_COORDINATOR_ADDRESS")))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> bool:
  """Joins the distributed run if there is one; returns whether it did.

  Explicit arguments win (all three are needed); otherwise JAX's own cluster
  detection is used where ``platform_provides_cluster`` says it applies; a
  plain single-process run initialises nothing.

  Raises:
    ValueError: Only some of the three arguments were given, or they are
      inconsistent.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f"Multi-process flags need --coordinator_address, --num_processes and "
                       f"--process_id together; missing: {', '.join('--' + m for m in missing)}.")
    if ":" not in coordinator_address:
      raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. "
                       "10.0.0.2:1234 (the address of process 0).")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif platform_provides_cluster(environ):
    jax.distributed.initialize()
  else:
    return False
  logger.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
              jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
