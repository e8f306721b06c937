"""Orbax checkpoints of the training state: every epoch, keeping the latest and the best."""

from pathlib import Path
from typing import Any

import flax
import orbax.checkpoint as ocp

from ser_jax.core.errors import DataError

_IMPROVED = "improved_at"


class CheckpointMismatchError(DataError, ValueError):
    """A checkpoint that was made for another model or data shape."""


def open_manager(directory: Path) -> ocp.CheckpointManager:
    """A manager that keeps the latest checkpoint and the last one that improved val_loss.

    Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it); stale
    temporary folders of a killed run are removed on open.
    """
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(policies=[
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[_IMPROVED], n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def save(manager: ocp.CheckpointManager, epoch: int, state: Any, progress: dict) -> None:
    """Saves ``state`` and the JSON ``progress`` record as checkpoint ``epoch`` (asynchronously).

    ``progress["early_stopping"]["best_epoch"]`` marks which checkpoint holds the best weights.
    """
    improved = progress["early_stopping"]["best_epoch"] + 1 == epoch
    metrics = {"val_loss": progress["history"][-1]["val_loss"],
               _IMPROVED: float(epoch if improved else -1)}
    manager.save(epoch, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        progress=ocp.args.JsonSave(progress)))


def restore(manager: ocp.CheckpointManager, abstract_state: Any, expected: dict
            ) -> tuple[Any, Any, dict]:
    """Restores (latest state, best state, progress) onto the devices of ``abstract_state``.

    ``expected`` (model config, classes, input length) must equal what the checkpoint was made
    with; otherwise CheckpointMismatchError names the differences before anything is loaded.
    """
    directory = manager.directory
    latest = manager.latest_step()
    progress = manager.restore(latest, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))["progress"]
    made_with = progress.get("made_with", {})
    differences = {}
    for key, value in expected.items():
        old = made_with.get(key)
        if isinstance(old, dict) and isinstance(value, dict):  # name the fields that differ
            differences.update({f"{key}.{name}": (old.get(name), value.get(name))
                                for name in sorted({*old, *value})
                                if old.get(name) != value.get(name)})
        elif old != value:
            differences[key] = (old, value)
    if differences:
        lines = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}"
                          for key, (old, new) in differences.items())
        raise CheckpointMismatchError(
            f"the checkpoint in {directory} does not fit this run ({lines}); use a new --workdir "
            "or delete that folder to start over")
    best_step = progress["early_stopping"]["best_epoch"] + 1
    return (_restore_state(manager, latest, abstract_state),
            _restore_state(manager, best_step if best_step > 0 else latest, abstract_state),
            progress)


def _restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    target = flax.serialization.to_state_dict(abstract_state)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
    except (ValueError, KeyError) as error:
        raise CheckpointMismatchError(
            f"checkpoint {step} in {manager.directory} does not fit the model of this config: "
            f"{error}; use a new --workdir or delete that folder") from error
    return flax.serialization.from_state_dict(abstract_state, restored)

