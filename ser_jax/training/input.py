"""Training input placed per process (``train.input='host'``): each process gathers on its host
only the rows of each global batch that its own devices hold and hands them to JAX with
``jax.make_array_from_process_local_data``.

This is the input path of a multi-process (multi-host) job. The Trainer draws the same shuffled
batches as on the device-resident path, so a job of P processes trains on the same global
batches, in the same order, as one process with the same global device count.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding

MODES = ("auto", "device", "host")


def resolve(mode: str) -> str:
    """train.input: 'auto' is 'device' in a one-process job and 'host' in a multi-process one."""
    if mode not in MODES:
        raise ValueError(f"train.input={mode!r}; valid: 'auto', 'device', 'host'")
    if mode == "device" and jax.process_count() > 1:
        raise ValueError("train.input='device' needs one process; a multi-process job places "
                         "its batches per process: use 'auto' or 'host'")
    if mode == "auto":
        return "host" if jax.process_count() > 1 else "device"
    return mode


def process_rows(sharding: NamedSharding, batch: int) -> slice:
    """The rows of a global batch of ``batch`` rows that this process's devices hold."""
    parts = sharding.addressable_devices_indices_map((batch,)).values()
    rows = slice(min(p[0].start or 0 for p in parts),
                 max(batch if p[0].stop is None else p[0].stop for p in parts))
    if rows.stop - rows.start != batch * jax.local_device_count() // jax.device_count():
        raise ValueError("this process's devices do not hold one contiguous block of the batch")
    return rows


def place_batch(sharding: NamedSharding, x: np.ndarray, y: np.ndarray, index: np.ndarray,
                rows: slice) -> tuple[jax.Array, jax.Array]:
    """The global batch ``index`` of (x, y) with this process's ``rows`` of it placed on its
    devices (every process holds the whole split and the same ``index``)."""
    mine = index[rows]
    with jax.transfer_guard("allow"):  # the explicit transfer of this process's rows
        return (jax.make_array_from_process_local_data(sharding, x[mine],
                                                       (len(index), *x.shape[1:])),
                jax.make_array_from_process_local_data(sharding, y[mine], (len(index),)))
