"""Training: jit-compiled steps, Adam + reduce-on-plateau, early stopping, Orbax checkpoints.

The whole loop lives here. Data flows one way: standardized parquet splits -> arrays resident on
the device mesh -> epochs of jitted train steps -> per-epoch validation -> checkpoint -> bundle.
"""

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pyarrow.parquet as pq
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ser_jax import batch_augment, bundle, checkpoints, dataset, models
from ser_jax.files import write_json_atomic
from ser_jax.metrics_log import MetricsLog


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


class Trainer:
    """Compiled train/eval functions for one model, optimizer and device mesh."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
                 input_shape: tuple[int, ...]):
        """``input_shape`` is one example's shape: (270,) clip features or (frames, bands)."""
        self.config = config
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharded = NamedSharding(self.mesh, P("data"))
        if config.train.batch_size % jax.device_count():
            raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                             f"{jax.device_count()} devices; pick a multiple of it")
        if models.ensemble_variants(config.model):
            raise ValueError(f"model.ensemble={config.model.ensemble!r}: ensemble members train "
                             "one by one (train_and_evaluate); a Trainer (and a tuning trial) "
                             "trains one network, so set model.ensemble=''")
        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = models.create_model(config.model, num_classes, dtype)
        batch_augment.check_config(config.train, models.model_inputs(config.model))
        self.num_classes = num_classes
        self.optimizer = make_optimizer(config.train)
        self.input_shape = tuple(input_shape)
        self.loop = resolve_loop(config.train.loop)
        self._train_steps = jax.jit(self._train_steps_impl, donate_argnums=(0, 1),
                                    static_argnames=("num_steps",))
        self._train_epoch = jax.jit(self._train_epoch_impl, donate_argnums=(0,))
        self._logits = jax.jit(self._logits_impl)
        self._init = jax.jit(self._init_impl, out_shardings=self.replicated)
        self.plateau_step = jax.jit(functools.partial(plateau_step, self.optimizer))

    # ---- state -------------------------------------------------------------------------------
    def _init_impl(self, key: jax.Array, learning_rate: jax.Array,
                   dropout_rate: jax.Array) -> TrainState:
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = self.model.init(key, x, train=False)
        adam_state, plateau_state = self.optimizer.init(variables["params"])
        hyperparams = {**adam_state.hyperparams,
                       "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables["batch_stats"],
                          opt_state=(adam_state._replace(hyperparams=hyperparams), plateau_state),
                          dropout_rate=jnp.asarray(dropout_rate, jnp.float32))

    def init_state(self, seed: int, learning_rate: float, dropout_rate: float) -> TrainState:
        """A fresh state. The rates are state values, not compiled constants."""
        return self._init(jax.random.key(seed), learning_rate, dropout_rate)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, for restoring onto the current devices."""
        shapes = jax.eval_shape(self._init_impl, jax.random.key(0), 0.0, 0.0)
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), shapes)

    def put_replicated(self, array: np.ndarray) -> jax.Array:
        """Places one host array on every device (multi-host safe)."""
        return jax.make_array_from_callback(array.shape, self.replicated, lambda idx: array[idx])

    # ---- compiled functions -------------------------------------------------------------------
    def _loss_and_grads(self, state: TrainState, x: jax.Array, targets: jax.Array,
                        key: jax.Array):
        """``targets`` are integer labels (batch,) or class probabilities (batch, classes)."""
        def loss_fn(params):
            logits, updates = self.model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                dropout_rate=state.dropout_rate, rngs={"dropout": key}, mutable=["batch_stats"])
            if targets.ndim == 1:
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
            else:
                loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, updates["batch_stats"])
        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    def _train_step(self, state: TrainState, totals: jax.Array, x_all, y_all, index, key):
        index = jax.lax.with_sharding_constraint(index, self.batch_sharded)
        x, y = x_all[index], y_all[index]
        x, targets = batch_augment.augment_batch(x, y, jax.random.fold_in(key, 1),
                                                 self.config.train, self.num_classes)
        (loss, (logits, batch_stats)), grads = self._loss_and_grads(state, x, targets, key)
        adam_state, plateau_state = state.opt_state
        updates, adam_state = self.optimizer.adam.update(grads, adam_state, state.params)
        updates = optax.tree.scale(plateau_state.scale, updates)
        state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=(adam_state, plateau_state))
        correct = jnp.sum(jnp.argmax(logits, -1) == y)  # against the unmixed labels
        totals = totals + jnp.stack([loss * y.shape[0], correct, y.shape[0]]).astype(jnp.float32)
        return state, totals

    def _train_steps_impl(self, state, totals, x_all, y_all, batches, epoch_key, first_step,
                          num_steps):
        """``num_steps`` steps unrolled in one program (XLA:CPU runs while-loops slowly)."""
        for i in range(num_steps):
            step = first_step + i
            index = jax.lax.dynamic_index_in_dim(batches, step, keepdims=False)
            state, totals = self._train_step(state, totals, x_all, y_all, index,
                                             jax.random.fold_in(epoch_key, step))
        return state, totals

    def _train_epoch_impl(self, state, x_all, y_all, batches, epoch_key):
        """A whole epoch as one ``lax.scan``: the right shape on GPU/TPU."""
        def body(carry, step):
            state, totals = carry
            index = batches[step]
            return self._train_step(state, totals, x_all, y_all, index,
                                    jax.random.fold_in(epoch_key, step)), None
        totals = jnp.zeros((3,), jnp.float32)
        (state, totals), _ = jax.lax.scan(body, (state, totals), jnp.arange(batches.shape[0]))
        return state, totals

    def _logits_impl(self, params, batch_stats, x):
        x = jax.lax.with_sharding_constraint(x, self.batch_sharded)
        return self.model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

    # ---- loops --------------------------------------------------------------------------------
    def epoch_batches(self, seed_key: jax.Array, epoch: int, num_rows: int) -> jax.Array:
        """This epoch's shuffled batch indices (steps, batch); a last partial batch is dropped."""
        batch = self.config.train.batch_size
        steps = num_rows // batch
        if steps == 0:
            raise ValueError(f"the training split has {num_rows} rows, fewer than "
                             f"train.batch_size={batch}; lower the batch size")
        perm = jax.random.permutation(jax.random.fold_in(seed_key, epoch), num_rows)
        return perm[: steps * batch].reshape(steps, batch)

    def train_epoch(self, state: TrainState, x_all, y_all, batches, epoch_key):
        """Runs one epoch; returns the new state and device totals (loss sum, correct, count)."""
        if self.loop == "scan":
            return self._train_epoch(state, x_all, y_all, batches, epoch_key)
        # Placed like the steps' outputs, so the first call compiles the same program as the rest.
        totals = jax.device_put(jnp.zeros((3,), jnp.float32), self.replicated)
        steps = batches.shape[0]
        chunk = max(1, self.config.train.steps_per_call)
        for first in range(0, steps, chunk):
            state, totals = self._train_steps(state, totals, x_all, y_all, batches, epoch_key,
                                              first, num_steps=min(chunk, steps - first))
        return state, totals

    def eval_batches(self, x: np.ndarray) -> list[jax.Array]:
        """Splits ``x`` into fixed-size, zero-padded batches placed on the devices once."""
        batch = self.config.train.eval_batch_size
        batch -= batch % jax.device_count()
        padded = np.pad(x, ((0, -len(x) % batch),) + ((0, 0),) * (x.ndim - 1))
        return [self.put_replicated(padded[i:i + batch]) for i in range(0, len(padded), batch)]

    def logits(self, params, batch_stats, batches: list[jax.Array], num_rows: int) -> jax.Array:
        """Logits for the first ``num_rows`` rows of ``eval_batches`` output."""
        outputs = [self._logits(params, batch_stats, x) for x in batches]
        return jnp.concatenate(outputs)[:num_rows]


_NOT_COMPILED_IN = ("epochs", "early_stop_patience", "early_stop_min_delta",
                    "checkpoint_every_epoch")


@functools.lru_cache(maxsize=8)
def _cached_trainer(config: ml_collections.FrozenConfigDict, num_classes: int,
                    input_shape: tuple[int, ...], devices: int) -> Trainer:
    del devices  # part of the cache key only
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the key must not change
    config.model.dropout = 0.0  # unused: the rate is TrainState.dropout_rate
    return Trainer(config, num_classes, input_shape)


def get_trainer(config: ml_collections.ConfigDict, num_classes: int,
                input_shape: tuple[int, ...]) -> Trainer:
    """A Trainer whose compiled functions are shared by every run in this process with the same
    model, optimizer and batch settings (tests, tuning trials, cross-validation folds)."""
    train = {k: v for k, v in config.train.items() if k not in _NOT_COMPILED_IN}
    model = {k: v for k, v in config.model.items() if k != "dropout"}
    key = ml_collections.FrozenConfigDict({"model": model, "train": train})
    return _cached_trainer(key, num_classes, tuple(input_shape), jax.device_count())


def resolve_loop(loop: str) -> str:
    """'auto' picks per backend: one compiled epoch (scan) on GPU/TPU, unrolled steps on CPU."""
    if loop == "auto":
        return "step" if jax.default_backend() == "cpu" else "scan"
    if loop not in ("step", "scan"):
        raise ValueError(f"train.loop={loop!r}; valid: 'auto', 'step', 'scan'")
    return loop


def epoch_inputs(trainer: Trainer, seed_key: jax.Array, epoch: int,
                 num_rows: int) -> tuple[jax.Array, jax.Array]:
    """This epoch's dropout key and shuffled batches, both derived from the run's seed key."""
    return (jax.random.fold_in(jax.random.fold_in(seed_key, 1), epoch),
            trainer.epoch_batches(jax.random.fold_in(seed_key, 2), epoch, num_rows))


def split_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Mean cross-entropy and accuracy of one split, left on the device."""
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def to_host(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(metrics).items()}


@dataclasses.dataclass
class SplitArrays:
    """One split's standardized model inputs (rows, ...) and integer labels (rows,)."""

    x: np.ndarray
    y: np.ndarray


def load_splits(features_dir: Path, inputs: str = "clip", with_train: bool = True
                ) -> tuple[list[str], dict[str, SplitArrays]]:
    """Reads and validates train/val(/test) before any training starts (val/test only when not
    ``with_train``); ``inputs`` is the model's input kind (models.model_inputs)."""
    labels = dataset.read_labels(features_dir)
    names = ["train", "val"] if with_train else ["val"]
    test_path = features_dir / "test.parquet"
    if test_path.exists() and pq.read_metadata(test_path).num_rows:
        names.append("test")
    return labels, {name: SplitArrays(*dataset.load_inputs(features_dir, name, labels, inputs))
                    for name in names}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       features_dir: str | Path | None = None,
                       on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Trains on ``features_dir`` (default ``workdir/features``), checkpointing into ``workdir``.

    ``on_epoch``, when given, is called after each epoch with that epoch's record ('epoch',
    'loss', 'val_loss', 'val_accuracy', ...); an exception it raises propagates (tuning trials
    report to Optuna and raise TrialPruned there).

    Resumes from the latest checkpoint when one exists; leaves the inference bundle in
    ``workdir/bundle``. Returns the best epoch with its validation (and test) metrics.
    """
    workdir = Path(workdir)
    features_dir = Path(features_dir) if features_dir else workdir / "features"
    if models.ensemble_variants(config.model):
        return train_ensemble(config, workdir, features_dir)
    labels, splits = load_splits(features_dir, models.model_inputs(config.model))
    train = splits["train"]
    trainer = get_trainer(config, num_classes=len(labels), input_shape=train.x.shape[1:])
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
    log = MetricsLog(workdir, history) if chief else None

    epoch = len(history)
    while epoch < config.train.epochs and not (history and stopper.should_stop(epoch - 1)):
        start = time.perf_counter()
        epoch_key, batches = epoch_inputs(trainer, seed_key, epoch, len(train.y))
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
        if on_epoch:
            on_epoch(record)
        checkpoints.save(manager, epoch + 1, state, {"history": history, "made_with": made_with,
                                                     "early_stopping": stopper.to_json()})
        epoch += 1
    manager.wait_until_finished()
    manager.close()
    if log:
        log.close()

    params, batch_stats = best
    result = {"best_epoch": stopper.best_epoch + 1, "epochs_run": len(history),
              **{name: to_host(evaluate(params, batch_stats, name)) for name in eval_data}}
    if chief:
        bundle.save(workdir / "bundle", config, params, batch_stats, features_dir)
        write_json_atomic(workdir / "train_result.json", result)
    logging.info("best epoch %d: val %s", result["best_epoch"], result["val"])
    return result


def train_ensemble(config: ml_collections.ConfigDict, workdir: Path, features_dir: Path) -> dict:
    """Trains each member that ``model.ensemble`` lists as its own run in
    ``workdir/members/K`` (seed ``config.seed + K``, its own schedule and early stopping; a
    killed run resumes member by member), then writes the ensemble's bundle and scores it.

    Returns the ensemble's validation (and test) metrics, each member's result, and the members'
    best epochs and epochs run as lists.
    """
    members = []
    for index, variant in enumerate(models.ensemble_variants(config.model)):
        member = ml_collections.ConfigDict(config.to_dict())
        member.model = models.member_config(config.model, variant)
        member.seed = config.seed + index
        result = train_and_evaluate(member, workdir / "members" / str(index), features_dir)
        members.append({"variant": variant, "seed": member.seed, **result})
    loaded = [bundle.load(workdir / "members" / str(k) / "bundle") for k in range(len(members))]
    params, batch_stats = ({f"members_{k}": b.variables[name] for k, b in enumerate(loaded)}
                           for name in ("params", "batch_stats"))
    labels, splits = load_splits(features_dir, models.model_inputs(config.model),
                                 with_train=False)  # the members have trained
    model = models.create_model(config.model, len(labels))
    variables = {"params": params, "batch_stats": batch_stats}
    tiny = np.finfo(np.float32).tiny  # log(0) would make the loss infinite
    scores = {name: to_host(split_metrics(
        np.log(np.maximum(bundle.predict_probabilities(model, variables, split.x), tiny)),
        split.y)) for name, split in splits.items()}
    result = {"best_epoch": [m["best_epoch"] for m in members],
              "epochs_run": [m["epochs_run"] for m in members], **scores, "members": members}
    if jax.process_index() == 0:
        bundle.save(workdir / "bundle", config, params, batch_stats, features_dir)
        write_json_atomic(workdir / "train_result.json", result)
    logging.info("ensemble of %d members: val %s", len(members), result["val"])
    return result
