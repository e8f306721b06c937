"""How many programs JAX has compiled in this process: the one counter predict, its benchmark
and the server report.

Counted from jax.monitoring's lowering event, which fires on every jit cache miss, whether or
not the persistent compilation cache then supplies the binary, so a new input shape counts even
where the binary was cached on disk.
"""

import threading

import jax

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

_lock = threading.Lock()
_count = 0


def _listen(event: str, duration: float, **kwargs) -> None:
    global _count
    if event == LOWERING_EVENT:
        with _lock:
            _count += 1


jax.monitoring.register_event_duration_secs_listener(_listen)  # once: at first import


def compile_count() -> int:
    """Programs lowered for compilation in this process so far (each jit cache miss)."""
    return _count
