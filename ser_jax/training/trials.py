"""Several trials that share shapes, trained together as one vmapped program.

Trials differ in seed, learning rate and dropout rate. They run the one epoch loop
(:func:`ser_jax.training.loop.run_epochs`) on a Trainer whose functions are vmapped over the
trials, so each trial runs the very epochs ``train_and_evaluate`` would run with its settings
(same shuffles, dropout masks and plateau schedule), all in one compiled call per step. There are
no checkpoints: this is for sweeps and throughput. A trial's ``min_learning_rate`` floor is
``min_learning_rate * trial.learning_rate / config.train.learning_rate``.
"""

import dataclasses
from pathlib import Path

import ml_collections

from ser_jax.models import registry
from ser_jax.training.loop import RunProgress, load_splits, run_epochs
from ser_jax.training.state import EarlyStopping, TrainState
from ser_jax.training.trainer import get_trainer


@dataclasses.dataclass(frozen=True)
class Trial:
    """One setting of the hyperparameters that do not change shapes."""

    seed: int
    learning_rate: float
    dropout: float


def train_trials(config: ml_collections.ConfigDict, features_dir: str | Path,
                 trials: list[Trial]) -> list[dict]:
    """Trains ``trials`` together on ``features_dir``; returns each trial's best epoch record.

    Early stopping is tracked per trial: a stopped trial's best record is frozen while the
    others go on. A trial whose loss turns NaN or infinite stops the sweep with
    TrainingDivergedError (naming the epoch).
    """
    labels, splits = load_splits(Path(features_dir), registry.model_inputs(config.model))
    train, val = splits["train"], splits["val"]
    trainer = get_trainer(config, num_classes=len(labels), input_shape=train.x.shape[1:],
                          runs=len(trials))
    data = trainer.device_data(train.x, train.y, val.x, val.y)
    seeds = [t.seed for t in trials]
    states = trainer.init_state(seeds, [t.learning_rate for t in trials],
                                [t.dropout for t in trials])
    runs = [RunProgress(EarlyStopping(config.train.early_stop_min_delta,
                                      config.train.early_stop_patience), []) for _ in trials]
    best: list[dict] = [{} for _ in trials]

    def after_epoch(index: int, _: TrainState, record: dict, improved: bool) -> None:
        if improved:
            best[index] = record

    run_epochs(trainer, states, data, trainer.seed_keys(seeds), runs, config.train.epochs,
               after_epoch)
    return [{"trial": dataclasses.asdict(t), "best_epoch": b["epoch"], "val_loss": b["val_loss"],
             "val_accuracy": b["val_accuracy"],
             "val_balanced_accuracy": b["val_balanced_accuracy"]}
            for t, b in zip(trials, best, strict=True)]
