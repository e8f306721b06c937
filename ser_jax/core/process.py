"""Which process of a multi-process JAX job writes shared files, and waiting for it.

Only the chief (process 0) writes config.json, features, logs, bundles and reports; the other
processes call :func:`barrier` before they read what it wrote.
"""

import jax
from jax.experimental import multihost_utils


def is_chief() -> bool:
    """True in process 0 (and in a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name``; a no-op in one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
