"""Joining a multi-process JAX job: from the cluster's own environment (TPU VM slices, GKE TPU
pods, SLURM, Open MPI: JAX detects them) or, on any other cluster, from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (the same command started once per process)."""

import os

import jax
from absl import logging
from jax.experimental import multihost_utils

from ser_jax.core.process import barrier

# Environment variables that JAX's own cluster detection reads (TPU VM / GKE TPU, SLURM, MPI).
_CLUSTER_VARIABLES = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                      "OMPI_MCA_orte_hnp_uri")
DEFAULT_TIMEOUT_S = 300


def explicit_settings(env: os._Environ | dict = os.environ) -> dict | None:
    """(coordinator address, process count, process id, init timeout) from JAX_* variables,
    or None when JAX_COORDINATOR_ADDRESS is not set. ValueError names a missing or bad one."""
    address = env.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return None
    try:
        count, index = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        timeout = int(env.get("JAX_INITIALIZATION_TIMEOUT", DEFAULT_TIMEOUT_S))
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"JAX_COORDINATOR_ADDRESS={address} is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID "
            f"must be integers (and JAX_INITIALIZATION_TIMEOUT seconds, if set): {e!r}") from e
    if not 0 <= index < count:
        raise ValueError(f"JAX_PROCESS_ID={index} must be in [0, JAX_NUM_PROCESSES={count}).")
    return {"coordinator_address": address, "num_processes": count, "process_id": index,
            "initialization_timeout": timeout}


def initialize() -> bool:
    """Joins the job when the environment describes one; returns whether it did.

    A peer that never arrives makes JAX abort this process (SIGABRT) after the timeout.
    """
    settings = explicit_settings()
    if settings is not None:
        jax.distributed.initialize(**settings)
    elif any(os.environ.get(name) for name in _CLUSTER_VARIABLES):
        jax.distributed.initialize()
    else:
        return False
    barrier("joined")
    multihost_utils.sync_global_devices("ser_jax:collectives")  # sets up the CPU collectives
    logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True

