"""Several trials that share shapes, trained together as one vmapped program.

Trials differ in seed, learning rate and dropout rate; each runs the very epochs
:func:`ser_jax.training.loop.train_and_evaluate` would run with those settings (same shuffles, same
dropout masks, same plateau schedule), but all trials advance in one compiled call. There are no
checkpoints: this is for tuning sweeps and throughput. A trial's ``min_learning_rate`` floor is
``min_learning_rate * trial.learning_rate / config.learning_rate``.
"""

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ser_jax.models import registry
from ser_jax.training.loop import load_splits
from ser_jax.training.state import EarlyStopping, TrainState, learning_rate, plateau_step
from ser_jax.training.trainer import Trainer, epoch_inputs, get_trainer, split_metrics


@dataclasses.dataclass(frozen=True)
class Trial:
    """One setting of the hyperparameters that do not change shapes."""

    seed: int
    learning_rate: float
    dropout: float


class TrialsTrainer:
    """vmapped versions of a :class:`~ser_jax.training.trainer.Trainer`'s compiled functions."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._init = jax.jit(jax.vmap(trainer._init_impl), out_shardings=trainer.replicated)
        self._logits = jax.jit(jax.vmap(trainer._logits_impl, in_axes=(0, 0, None)))
        self.plateau_step = jax.jit(jax.vmap(functools.partial(plateau_step,
                                                               trainer.optimizer)))
        self._epoch_scan = jax.jit(jax.vmap(trainer._train_epoch_impl,
                                            in_axes=(0, None, None, 0, 0)), donate_argnums=(0,))
        self._steps: dict[int, object] = {}

    def init(self, trials: list[Trial]) -> TrainState:
        """Stacked fresh states, one per trial along axis 0."""
        keys = jax.vmap(jax.random.key)(jnp.asarray([t.seed for t in trials]))
        return self._init(keys, jnp.asarray([t.learning_rate for t in trials], jnp.float32),
                          jnp.asarray([t.dropout for t in trials], jnp.float32))

    def _steps_fn(self, num_steps: int):
        if num_steps not in self._steps:
            steps = functools.partial(self.trainer._train_steps_impl, num_steps=num_steps)
            self._steps[num_steps] = jax.jit(
                jax.vmap(steps, in_axes=(0, 0, None, None, 0, 0, None)), donate_argnums=(0, 1))
        return self._steps[num_steps]

    def train_epoch(self, states, x_all, y_all, batches, epoch_keys):
        """One epoch of every trial; ``batches`` is (trials, steps, batch)."""
        if self.trainer.loop == "scan":
            return self._epoch_scan(states, x_all, y_all, batches, epoch_keys)
        totals = jax.device_put(jnp.zeros((batches.shape[0], 3), jnp.float32),
                                self.trainer.replicated)
        steps, chunk = batches.shape[1], max(1, self.trainer.config.train.steps_per_call)
        for first in range(0, steps, chunk):
            states, totals = self._steps_fn(min(chunk, steps - first))(
                states, totals, x_all, y_all, batches, epoch_keys, first)
        return states, totals

    def logits(self, states, batches: list[jax.Array], num_rows: int) -> jax.Array:
        """(trials, rows, classes) logits of every trial."""
        outputs = [self._logits(states.params, states.batch_stats, x) for x in batches]
        return jnp.concatenate(outputs, axis=1)[:, :num_rows]


@functools.lru_cache(maxsize=8)
def trials_trainer(trainer: Trainer) -> TrialsTrainer:
    """The TrialsTrainer of a (cached) Trainer, so its compiled functions are reused too."""
    return TrialsTrainer(trainer)


def train_trials(config: ml_collections.ConfigDict, features_dir: str | Path,
                 trials: list[Trial]) -> list[dict]:
    """Trains ``trials`` together on ``features_dir``; returns each trial's best epoch record.

    Early stopping is tracked per trial: a stopped trial's best record is frozen while the
    others go on (its computation continues, unused, so all trials keep one shape).
    """
    labels, splits = load_splits(Path(features_dir), registry.model_inputs(config.model))
    data = splits["train"]
    trainer = get_trainer(config, num_classes=len(labels), input_shape=data.x.shape[1:])
    many = trials_trainer(trainer)
    x_train, y_train = trainer.put_replicated(data.x), trainer.put_replicated(data.y)
    val_batches, y_val = trainer.eval_batches(splits["val"].x), splits["val"].y
    y_val_device = trainer.put_replicated(y_val)
    seed_keys = jax.vmap(jax.random.key)(jnp.asarray([t.seed for t in trials]))
    states = many.init(trials)
    stoppers = [EarlyStopping(config.train.early_stop_min_delta,
                                    config.train.early_stop_patience) for _ in trials]
    best: list[dict] = [{} for _ in trials]
    for epoch in range(config.train.epochs):
        if all(s.should_stop(epoch - 1) for s in stoppers):
            break
        start = time.perf_counter()
        epoch_keys, batches = jax.vmap(functools.partial(
            epoch_inputs, trainer, epoch=epoch, num_rows=len(data.y)))(seed_keys)
        states, totals = many.train_epoch(states, x_train, y_train, batches, epoch_keys)
        val = jax.vmap(split_metrics, in_axes=(0, None))(
            many.logits(states, val_batches, len(y_val)), y_val_device)
        lr = jax.vmap(learning_rate)(states)
        states = many.plateau_step(states, val["loss"])
        fetched = jax.device_get({"totals": totals, "val": val, "lr": lr})
        seconds = time.perf_counter() - start
        for i, stopper in enumerate(stoppers):
            if stopper.should_stop(epoch - 1):
                continue
            loss_sum, correct, count = np.asarray(fetched["totals"][i], np.float64)
            record = {"epoch": epoch + 1, "loss": loss_sum / count, "accuracy": correct / count,
                      "val_loss": float(fetched["val"]["loss"][i]),
                      "val_accuracy": float(fetched["val"]["accuracy"][i]),
                      "learning_rate": float(fetched["lr"][i]), "seconds": seconds}
            if stopper.update(epoch, record["val_loss"]):
                best[i] = record
    return [{"trial": dataclasses.asdict(t), "best_epoch": b["epoch"], "val_loss": b["val_loss"],
             "val_accuracy": b["val_accuracy"]} for t, b in zip(trials, best, strict=True)]
