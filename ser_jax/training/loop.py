"""Training: the one epoch loop (:func:`run_epochs`) and the train stage around it.

Data flows one way: standardized splits -> arrays resident on the device mesh -> epochs of
compiled train steps, each closed by validation and the plateau schedule -> one explicit
device-to-host transfer per epoch -> early stopping, metrics log, checkpoint -> the bundle of
the best epoch. ``run_epochs`` serves a single run (train_and_evaluate, cv folds, tuning trials)
and vmapped runs (trials.train_trials) alike.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ser_jax.core.files import write_json_atomic
from ser_jax.core.process import barrier, is_chief
from ser_jax.data import store
from ser_jax.data.labels import read_labels
from ser_jax.inference import bundle
from ser_jax.models import registry
from ser_jax.training import checkpoints, reference
from ser_jax.training.metrics_log import MetricsLog
from ser_jax.training.state import EarlyStopping, TrainState
from ser_jax.training.trainer import DeviceData, Trainer, get_trainer, split_metrics

EpochCallback = Callable[[dict], None]
"""Called after each epoch (and its checkpoint) with the epoch's record: epoch, loss,
accuracy, val_loss, val_accuracy, val_balanced_accuracy, learning_rate, seconds,
samples_per_second. It may raise to stop training (e.g. optuna.TrialPruned); the exception
propagates once the checkpoints are complete."""


class TrainingDivergedError(ValueError):
    """A training or validation loss became NaN or infinite."""


@dataclasses.dataclass
class SplitArrays:
    """One split's standardized model inputs (rows, ...) and integer labels (rows,)."""

    x: np.ndarray
    y: np.ndarray


def load_splits(features_dir: Path, inputs: str = "clip", with_train: bool = True
                ) -> tuple[list[str], dict[str, SplitArrays]]:
    """Reads and validates train/val(/test) before any training starts (val/test only when not
    ``with_train``); ``inputs`` is the model's input kind (registry.model_inputs)."""
    labels = read_labels(features_dir)
    names = ["train", "val"] if with_train else ["val"]
    test_path = features_dir / "test.parquet"
    if store.num_rows(test_path):
        names.append("test")
    return labels, {name: SplitArrays(*store.load_inputs(features_dir, name, labels, inputs))
                    for name in names}


def to_host(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """Device metrics as Python floats (one transfer)."""
    return {name: float(value) for name, value in jax.device_get(metrics).items()}


@dataclasses.dataclass
class RunProgress:
    """The host-side progress of one run: its early stopping and its epoch records."""

    stopper: EarlyStopping
    history: list[dict]

    def finished(self, epochs: int) -> bool:
        return len(self.history) >= epochs or (
            bool(self.history) and self.stopper.should_stop(len(self.history) - 1))


def run_epochs(trainer: Trainer, state: TrainState, data: DeviceData, seed_key: jax.Array,
               runs: list[RunProgress], epochs: int,
               after_epoch: Callable[[int, TrainState, dict, bool], None]) -> TrainState:
    """The one epoch loop: trains until ``epochs`` or until every run stopped early.

    ``trainer.runs`` is None for one run (``runs`` has one entry) or R for R vmapped runs
    (``state`` and ``seed_key`` carry a leading run axis; a stopped run keeps computing, unused,
    so all keep one shape). Each epoch runs under ``jax.transfer_guard("disallow")``: its only
    transfers are explicit, and one ``jax.device_get`` brings its metrics to the host. Then, per
    run still going: the record is checked (NaN or inf raises :class:`TrainingDivergedError`
    before anything is saved), early stopping is updated, and ``after_epoch(run index, state,
    record, improved)`` is called. Returns the last state.
    """
    epoch = len(runs[0].history)
    while epoch < epochs and not all(run.finished(epochs) for run in runs):
        start = time.perf_counter()
        with jax.transfer_guard("disallow"):
            state, metrics = trainer.train_epoch(state, data, seed_key, epoch)
            fetched = jax.device_get(metrics)  # the epoch's one device-to-host transfer
        seconds = time.perf_counter() - start
        for index, run in enumerate(runs):
            if run.finished(epochs):
                continue
            values = {name: float(value if trainer.runs is None else value[index])
                      for name, value in fetched.items()}
            record = {"epoch": epoch + 1, "loss": values["loss"], "accuracy": values["accuracy"],
                      "val_loss": values["val_loss"], "val_accuracy": values["val_accuracy"],
                      "val_balanced_accuracy": values["val_balanced_accuracy"],
                      "learning_rate": values["learning_rate"], "seconds": seconds,
                      "samples_per_second": values["count"] / seconds}
            check_finite(record)
            improved = run.stopper.update(epoch, record["val_loss"])
            run.history.append(record)
            after_epoch(index, state, record, improved)
        epoch += 1
    return state


def check_finite(record: dict) -> None:
    """Raises TrainingDivergedError naming the epoch when its loss or val_loss is not finite."""
    bad = [f"{name} {record[name]}" for name in ("loss", "val_loss")
           if not math.isfinite(record[name])]
    if bad:
        raise TrainingDivergedError(
            f"training diverged in epoch {record['epoch']}: {', '.join(bad)} (learning rate "
            f"{record['learning_rate']:.2e}). Lower train.learning_rate, or check the features "
            "for extreme values (scaler.json, manifest.json rejects); the checkpoints keep the "
            "last finite epoch and no bundle was written from this one.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       features_dir: str | Path | None = None,
                       on_epoch: EpochCallback | None = None) -> dict:
    """Trains on ``features_dir`` (default ``workdir/features``), checkpointing into ``workdir``.

    Resumes from the latest checkpoint when one exists (a finished run trains no epoch); leaves
    the best epoch's inference bundle in ``workdir/bundle`` and ``train_result.json`` (written by
    process 0; the others wait for them). ``on_epoch`` sees each trained epoch's record (see
    :data:`EpochCallback`). Returns the best epoch and its validation (and test) metrics.
    """
    workdir = Path(workdir)
    features_dir = Path(features_dir) if features_dir else workdir / "features"
    if registry.ensemble_variants(config.model):
        return train_ensemble(config, workdir, features_dir, on_epoch)
    labels, splits = load_splits(features_dir, registry.model_inputs(config.model))
    train, val = splits["train"], splits["val"]
    trainer = get_trainer(config, num_classes=len(labels), input_shape=train.x.shape[1:])
    data = trainer.device_data(train.x, train.y, val.x, val.y)
    logging.info("training input: %s (train.input=%r, %d process(es))", trainer.input,
                 config.train.input, jax.process_count())
    manager = checkpoints.open_manager(workdir / "checkpoints")
    made_with = {"model": config.model.to_dict(), "labels": labels,
                 "input_shape": list(train.x.shape[1:])}
    state = trainer.init_state(config.seed, config.train.learning_rate, config.model.dropout)
    run = RunProgress(EarlyStopping(config.train.early_stop_min_delta,
                                    config.train.early_stop_patience), [])
    best: Any = None
    if manager.latest_step() is not None:
        state, best_state, progress = checkpoints.restore(
            manager, trainer.abstract_state(), made_with)
        best = (best_state.params, best_state.batch_stats)
        run = RunProgress(EarlyStopping.from_json(progress["early_stopping"]),
                          progress["history"])
        logging.info("resumed after epoch %d from %s", len(run.history), workdir / "checkpoints")
    log = MetricsLog(workdir, run.history, config.train.epochs) if is_chief() else None

    def after_epoch(_: int, state: TrainState, record: dict, improved: bool) -> None:
        nonlocal best
        if improved:  # a copy: the next train step donates (reuses) the state's buffers
            best = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
        if log:
            log.write(record)
        checkpoints.save(manager, record["epoch"], state, {
            "history": run.history, "made_with": made_with,
            "early_stopping": run.stopper.to_json()})
        if on_epoch:
            on_epoch(dict(record))

    try:
        run_epochs(trainer, state, data, trainer.seed_keys(config.seed), [run],
                   config.train.epochs, after_epoch)
    finally:  # also when on_epoch raised: the saves it followed complete first
        manager.wait_until_finished()
        manager.close()
        if log:
            log.close(run.stopper.best_epoch + 1)
    if best is None:
        raise ValueError(f"train.epochs={config.train.epochs}: no epoch was trained; set it >= 1")
    params, batch_stats = best
    result = {"best_epoch": run.stopper.best_epoch + 1, "epochs_run": len(run.history),
              **{name: to_host(trainer.evaluate(params, batch_stats, trainer.eval_batches(s.x),
                                                trainer.put(s.y)))
                 for name, s in splits.items() if name != "train"}}
    write_outputs(config, workdir, features_dir, params, batch_stats, result)
    logging.info("best epoch %d: val %s", result["best_epoch"], result["val"])
    return result


def write_outputs(config: ml_collections.ConfigDict, workdir: Path, features_dir: Path,
                  params: Any, batch_stats: Any, result: dict) -> None:
    """Process 0 writes the bundle (with its monitoring reference) and train_result.json,
    which records the features and the config it was made with; the others wait for them."""
    if is_chief():
        bundle.save(workdir / "bundle", config, params, batch_stats, features_dir)
        reference.write_reference(workdir / "bundle", features_dir)
        write_json_atomic(workdir / "train_result.json", {**result, "made_with": {
            **bundle.features_provenance(features_dir), "config": config.to_dict()}})
    barrier(f"trained {workdir}")


def train_ensemble(config: ml_collections.ConfigDict, workdir: Path, features_dir: Path,
                   on_epoch: EpochCallback | None = None) -> dict:
    """Trains each member that ``model.ensemble`` lists, one after another, as its own run in
    ``workdir/members/K`` (seed ``config.seed + K``, its own schedule and early stopping; a
    killed run resumes member by member), then writes the ensemble's bundle and scores it.

    ``on_epoch`` records carry the member's index as ``member``. Returns the ensemble's
    validation (and test) metrics, each member's result, and the members' best epochs and
    epochs run as lists.
    """
    members = []
    for index, variant in enumerate(registry.ensemble_variants(config.model)):
        member = ml_collections.ConfigDict(config.to_dict())
        member.model = registry.member_config(config.model, variant)
        member.seed = config.seed + index
        report = None if on_epoch is None else (
            lambda record, index=index: on_epoch({**record, "member": index}))
        result = train_and_evaluate(member, workdir / "members" / str(index), features_dir,
                                    report)
        members.append({"variant": variant, "seed": member.seed, **result})
    # Each member's train_and_evaluate ended at a barrier after process 0 wrote its bundle.
    loaded = [bundle.load(workdir / "members" / str(k) / "bundle") for k in range(len(members))]
    params, batch_stats = ({f"members_{k}": b.variables[name] for k, b in enumerate(loaded)}
                           for name in ("params", "batch_stats"))
    labels, splits = load_splits(features_dir, registry.model_inputs(config.model),
                                 with_train=False)  # the members have trained
    model = registry.create_model(config.model, len(labels))
    variables = {"params": params, "batch_stats": batch_stats}
    scores = {name: to_host(split_metrics(
        bundle.predict_log_probabilities(model, variables, split.x), split.y, len(labels)))
        for name, split in splits.items()}
    result = {"best_epoch": [m["best_epoch"] for m in members],
              "epochs_run": [m["epochs_run"] for m in members], **scores, "members": members}
    write_outputs(config, workdir, features_dir, params, batch_stats, result)
    logging.info("ensemble of %d members: val %s", len(members), result["val"])
    return result
