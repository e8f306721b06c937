"""The drift check the monitor DAG runs, and what its exit code means.

``python -m ser_jax.monitor --bundle=B --report=DIR PATH...`` (being built on another branch)
exits 0 when the new audio matches what the bundle was trained on and 3 when it has drifted;
anything else is an error.
"""

from __future__ import annotations

NO_DRIFT = 0
DRIFT = 3


def command(bundle: str, report_dir: str, paths: list[str], python: str = "python") -> list[str]:
    if not paths:
        raise ValueError("give at least one audio path or folder to check for drift")
    return [python, "-m", "ser_jax.monitor", f"--bundle={bundle}", f"--report={report_dir}",
            *paths]


def drifted(exit_code: int) -> bool:
    """True on drift (retrain), False on none; any other exit code is the monitor failing."""
    if exit_code == DRIFT:
        return True
    if exit_code == NO_DRIFT:
        return False
    raise RuntimeError(f"ser_jax.monitor exited {exit_code} (0 = no drift, 3 = drift): "
                       "see its log")
