"""Which process of a multi-process JAX job writes shared files, and waiting for it.

Only the chief (process 0) writes config.json, features, logs, bundles and reports; the other
processes call :func:`barrier` before they read what it wrote.
"""

import itertools

import jax
import orbax.checkpoint as ocp

DEFAULT_TIMEOUT_S = 300
_barriers = itertools.count()


def is_chief() -> bool:
    """True in process 0 (and in a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Waits until every process reaches the barrier ``name``; a no-op in one process.

    A barrier on jax.distributed's coordination service, not a device collective: no compiled
    program and a timeout of our choosing (a gloo collective gives a late peer 30 s), so
    processes that compile or write files at different speeds meet here before their next
    collective. Every process must call the same barriers in the same order.
    """
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=f"{name}:{next(_barriers)}",
                                            timeout_ms=timeout_s * 1000)
