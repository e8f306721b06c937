"""Training input placed per process: each process gathers on its host only the rows of each
global batch that its own devices hold and hands them to JAX with
``jax.make_array_from_process_local_data``.

This is the input path of a multi-process (multi-host) job. It draws the same shuffled batches
as the device-resident path (``trainer.epoch_inputs``), so a job of P processes trains on the
same global batches, in the same order, as one process with the same global device count.
"""

from collections.abc import Callable

import jax
import numpy as np

from ser_jax.core import distributed
from ser_jax.training.state import TrainState
from ser_jax.training.trainer import Trainer


def resolve(mode: str) -> str:
    """train.input: 'auto' is 'device' in a one-process job and 'host' in a multi-process one."""
    if mode not in ("auto", "device", "host"):
        raise ValueError(f"train.input={mode!r}; valid: 'auto', 'device', 'host'")
    if mode == "device" and jax.process_count() > 1:
        raise ValueError("train.input='device' needs one process; a multi-process job places "
                         "its batches per process: use 'auto' or 'host'")
    if mode == "auto":
        return "host" if jax.process_count() > 1 else "device"
    return mode


def process_rows(trainer: Trainer) -> slice:
    """The rows of a global batch that this process's devices hold (a contiguous range)."""
    batch = trainer.config.train.batch_size
    parts = trainer.batch_sharded.addressable_devices_indices_map((batch,)).values()
    starts = [p[0].start or 0 for p in parts]
    stops = [batch if p[0].stop is None else p[0].stop for p in parts]
    rows = slice(min(starts), max(stops))
    if rows.stop - rows.start != batch * jax.local_device_count() // jax.device_count():
        raise ValueError("this process's devices do not hold one contiguous block of the batch")
    return rows


def train_epoch(trainer: Trainer, state: TrainState, x: np.ndarray, y: np.ndarray,
                batches: jax.Array, epoch_key: jax.Array) -> tuple[TrainState, jax.Array]:
    """One epoch from host arrays ``x``, ``y`` (every process holds the whole split and the
    same ``batches``; each places only its devices' rows of every batch)."""
    order = np.asarray(batches)  # a local computation, identical in every process
    rows = process_rows(trainer)
    sharding = trainer.batch_sharded
    totals = jax.make_array_from_callback((3,), trainer.replicated,
                                          lambda _: np.zeros((3,), np.float32))
    key_data = np.asarray(jax.random.key_data(epoch_key))  # host values: the same everywhere
    for step, index in enumerate(order):
        mine = index[rows]
        args = (state, totals,
                jax.make_array_from_process_local_data(sharding, x[mine],
                                                       (len(index), *x.shape[1:])),
                jax.make_array_from_process_local_data(sharding, y[mine], (len(index),)),
                key_data, np.int32(step))
        state, totals = _compiled_step(trainer, args)(*args)
    return state, totals


_COMPILED: dict[int, Callable] = {}


def _compiled_step(trainer: Trainer, args: tuple) -> Callable:
    """The train step compiled ahead of its first run, then a barrier: processes that compile
    at different speeds start their first collective together (gloo gives a peer 30 s)."""
    if id(trainer) not in _COMPILED:
        _COMPILED[id(trainer)] = trainer.train_batch.lower(*args).compile()
        distributed.wait_for_peers("compiled train step")
    return _COMPILED[id(trainer)]


def host_copy(tree):
    """This process's copy of a replicated pytree of device arrays, as numpy."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
