"""The training state, the optimizer (Adam + reduce-on-plateau) and early stopping."""

import dataclasses
import math
from typing import Any, NamedTuple

import flax
import jax
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes while training; one pytree, checkpointed whole."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: tuple[optax.OptState, optax.contrib.ReduceLROnPlateauState]
    dropout_rate: jax.Array  # a value, not a compiled constant: vmapped trials may differ


@dataclasses.dataclass
class EarlyStopping:
    """Keras' EarlyStopping(monitor='val_loss', restore_best_weights=True) as a small record.

    An epoch improves when ``value < best - min_delta``. Training stops once ``wait`` (epochs since
    the last improvement, counted as Keras does) reaches ``patience``, never after epoch 0.
    """

    min_delta: float
    patience: int
    best: float = math.inf
    best_epoch: int = -1
    wait: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Records one epoch's value; returns whether it improved on the best."""
        self.wait += 1
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return self.wait >= self.patience and epoch > 0

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "best": None if math.isinf(self.best) else self.best}

    @classmethod
    def from_json(cls, record: dict) -> "EarlyStopping":
        best = math.inf if record["best"] is None else record["best"]
        return cls(**{**record, "best": best})


class Optimizer(NamedTuple):
    """Adam, then reduce-on-plateau scaling its updates (i.e. the learning rate).

    The state is ``(adam_state, plateau_state)``, the layout of ``optax.chain(adam, plateau)``;
    Adam's learning rate is a hyperparameter in its state (``optax.inject_hyperparams``), so
    vmapped trials can differ in it. Train steps apply the current plateau scale;
    :func:`plateau_step` feeds the plateau val_loss once per epoch.
    """

    adam: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs

    def init(self, params) -> tuple[optax.OptState, optax.contrib.ReduceLROnPlateauState]:
        return self.adam.init(params), self.plateau.init(params)


def make_optimizer(train_config: ml_collections.ConfigDict) -> Optimizer:
    """Keras semantics: ``min_delta`` is absolute (``rtol=0, atol=min_delta``) and ``min_lr``
    is a floor on the scaled rate (``min_scale = min_lr / lr``)."""
    return Optimizer(
        optax.inject_hyperparams(optax.adam)(learning_rate=train_config.learning_rate),
        optax.contrib.reduce_on_plateau(
            factor=train_config.plateau_factor,
            patience=train_config.plateau_patience,
            rtol=0.0,
            atol=train_config.plateau_min_delta,
            min_scale=train_config.min_learning_rate / train_config.learning_rate,
        ),
    )


def plateau_step(optimizer: Optimizer, state: TrainState, val_loss: jax.Array) -> TrainState:
    """Feeds one epoch's validation loss to the plateau part of the optimizer state."""
    adam_state, plateau_state = state.opt_state
    _, plateau_state = optimizer.plateau.update({}, plateau_state, value=val_loss)
    return state.replace(opt_state=(adam_state, plateau_state))


def learning_rate(state: TrainState) -> jax.Array:
    """The learning rate in force: Adam's rate times the plateau scale."""
    adam_state, plateau_state = state.opt_state
    return adam_state.hyperparams["learning_rate"] * plateau_state.scale
