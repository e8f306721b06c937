"""Training: the one epoch loop, early stopping, checkpoints, the bundle.

Data flows one way: standardized parquet splits -> arrays resident on the device mesh -> epochs
of jitted train steps -> per-epoch validation -> checkpoint -> bundle.
"""

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ser_jax.core import distributed
from ser_jax.core.files import write_json_atomic
from ser_jax.data import labels as labels_file
from ser_jax.data import store
from ser_jax.inference import bundle
from ser_jax.models import registry
from ser_jax.training import checkpoints, reference
from ser_jax.training import input as host_input
from ser_jax.training.metrics_log import MetricsLog
from ser_jax.training.state import EarlyStopping, learning_rate
from ser_jax.training.trainer import epoch_inputs, get_trainer, split_metrics, to_host


@dataclasses.dataclass
class SplitArrays:
    """One split's standardized model inputs (rows, ...) and integer labels (rows,)."""

    x: np.ndarray
    y: np.ndarray


def load_splits(features_dir: Path, inputs: str = "clip", with_train: bool = True
                ) -> tuple[list[str], dict[str, SplitArrays]]:
    """Reads and validates train/val(/test) before any training starts (val/test only when not
    ``with_train``); ``inputs`` is the model's input kind (registry.model_inputs)."""
    labels = labels_file.read_labels(features_dir)
    names = ["train", "val"] if with_train else ["val"]
    test_path = features_dir / "test.parquet"
    if store.num_rows(test_path):
        names.append("test")
    return labels, {name: SplitArrays(*store.load_inputs(features_dir, name, labels, inputs))
                    for name in names}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       features_dir: str | Path | None = None) -> dict:
    """Trains on ``features_dir`` (default ``workdir/features``), checkpointing into ``workdir``.

    Resumes from the latest checkpoint when one exists; leaves the inference bundle in
    ``workdir/bundle``. Returns the best epoch with its validation (and test) metrics.
    """
    workdir = Path(workdir)
    features_dir = Path(features_dir) if features_dir else workdir / "features"
    if registry.ensemble_variants(config.model):
        return train_ensemble(config, workdir, features_dir)
    labels, splits = load_splits(features_dir, registry.model_inputs(config.model))
    train = splits["train"]
    trainer = get_trainer(config, num_classes=len(labels), input_shape=train.x.shape[1:])
    # One process: the split resident on every device, batches gathered there. Several
    # processes: each places its devices' rows of every batch (training/input.py).
    host_batches = host_input.resolve(config.train.input) == "host"
    if not host_batches:
        x_train, y_train = trainer.put_replicated(train.x), trainer.put_replicated(train.y)
    eval_data = {name: (trainer.eval_batches(split.x), trainer.put_replicated(split.y))
                 for name, split in splits.items() if name != "train"}

    def evaluate(params, batch_stats, name: str) -> dict[str, jax.Array]:
        batches, labels = eval_data[name]
        return split_metrics(trainer.logits(params, batch_stats, batches, len(labels)), labels)

    manager = checkpoints.open_manager(workdir / "checkpoints")
    made_with = {"model": config.model.to_dict(), "labels": labels,
                 "input_shape": list(train.x.shape[1:])}
    seed_key = jax.random.key(config.seed)
    state = trainer.init_state(config.seed, config.train.learning_rate, config.model.dropout)
    stopper = EarlyStopping(config.train.early_stop_min_delta, config.train.early_stop_patience)
    history: list[dict] = []
    best = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
    if manager.latest_step() is not None:
        latest, best_state, progress = checkpoints.restore(
            manager, trainer.abstract_state(), made_with)
        state, best = latest, (best_state.params, best_state.batch_stats)
        stopper = EarlyStopping.from_json(progress["early_stopping"])
        history = progress["history"]
        logging.info("resumed after epoch %d from %s", len(history), workdir / "checkpoints")
    chief = jax.process_index() == 0  # the one process that writes logs and the bundle
    log = MetricsLog(workdir, history, config.train.epochs) if chief else None

    epoch = len(history)
    while epoch < config.train.epochs and not (history and stopper.should_stop(epoch - 1)):
        start = time.perf_counter()
        epoch_key, batches = epoch_inputs(trainer, seed_key, epoch, len(train.y))
        if host_batches:
            state, totals = host_input.train_epoch(trainer, state, train.x, train.y, batches,
                                                   epoch_key)
        else:
            state, totals = trainer.train_epoch(state, x_train, y_train, batches, epoch_key)
        val = evaluate(state.params, state.batch_stats, "val")
        lr = learning_rate(state)  # the rate this epoch trained with
        state = trainer.plateau_step(state, val["loss"])
        fetched = to_host({"loss_sum": totals[0], "correct": totals[1], "count": totals[2],
                           "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                           "learning_rate": lr})  # the epoch's one device-to-host transfer
        seconds = time.perf_counter() - start
        count = fetched["count"]
        record = {"epoch": epoch + 1, "loss": fetched["loss_sum"] / count,
                  "accuracy": fetched["correct"] / count, "val_loss": fetched["val_loss"],
                  "val_accuracy": fetched["val_accuracy"],
                  "learning_rate": fetched["learning_rate"], "seconds": seconds,
                  "samples_per_second": count / seconds}
        if stopper.update(epoch, record["val_loss"]):
            # A copy: the next train step donates (reuses) the state's buffers.
            best = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
        history.append(record)
        if log:
            log.write(record)
        checkpoints.save(manager, epoch + 1, state, {"history": history, "made_with": made_with,
                                                     "early_stopping": stopper.to_json()})
        epoch += 1
    manager.wait_until_finished()
    manager.close()
    if log:
        log.close(stopper.best_epoch + 1)

    params, batch_stats = best
    result = {"best_epoch": stopper.best_epoch + 1, "epochs_run": len(history),
              **{name: to_host(evaluate(params, batch_stats, name)) for name in eval_data}}
    if chief:
        params, batch_stats = host_input.host_copy((params, batch_stats))
        bundle.save(workdir / "bundle", config, params, batch_stats, features_dir)
        reference.write_reference(workdir / "bundle", features_dir)
        write_json_atomic(workdir / "train_result.json", {**result, **made_with_record(
            config, features_dir)})
    distributed.wait_for_peers("bundle")  # the others may read the bundle once this returns
    logging.info("best epoch %d: val %s", result["best_epoch"], result["val"])
    return result


def made_with_record(config: ml_collections.ConfigDict, features_dir: Path) -> dict:
    """What train_result.json records beside the metrics: the features and the config."""
    return {"made_with": {**bundle.features_provenance(features_dir),
                          "config": config.to_dict()}}


def train_ensemble(config: ml_collections.ConfigDict, workdir: Path, features_dir: Path) -> dict:
    """Trains each member that ``model.ensemble`` lists as its own run in
    ``workdir/members/K`` (seed ``config.seed + K``, its own schedule and early stopping; a
    killed run resumes member by member), then writes the ensemble's bundle and scores it.

    Returns the ensemble's validation (and test) metrics, each member's result, and the members'
    best epochs and epochs run as lists.
    """
    members = []
    for index, variant in enumerate(registry.ensemble_variants(config.model)):
        member = ml_collections.ConfigDict(config.to_dict())
        member.model = registry.member_config(config.model, variant)
        member.seed = config.seed + index
        result = train_and_evaluate(member, workdir / "members" / str(index), features_dir)
        members.append({"variant": variant, "seed": member.seed, **result})
    loaded = [bundle.load(workdir / "members" / str(k) / "bundle") for k in range(len(members))]
    params, batch_stats = ({f"members_{k}": b.variables[name] for k, b in enumerate(loaded)}
                           for name in ("params", "batch_stats"))
    labels, splits = load_splits(features_dir, registry.model_inputs(config.model),
                                 with_train=False)  # the members have trained
    model = registry.create_model(config.model, len(labels))
    variables = {"params": params, "batch_stats": batch_stats}
    tiny = np.finfo(np.float32).tiny  # log(0) would make the loss infinite
    scores = {name: to_host(split_metrics(
        np.log(np.maximum(bundle.predict_probabilities(model, variables, split.x), tiny)),
        split.y)) for name, split in splits.items()}
    result = {"best_epoch": [m["best_epoch"] for m in members],
              "epochs_run": [m["epochs_run"] for m in members], **scores, "members": members}
    if jax.process_index() == 0:
        bundle.save(workdir / "bundle", config, params, batch_stats, features_dir)
        reference.write_reference(workdir / "bundle", features_dir)
        write_json_atomic(workdir / "train_result.json", {**result, **made_with_record(
            config, features_dir)})
    logging.info("ensemble of %d members: val %s", len(members), result["val"])
    return result
