"""Compiled train/eval functions for one model, optimizer and device mesh (shared, cached)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ser_jax.core.errors import ConfigError
from ser_jax.models import registry
from ser_jax.training import batch_augment
from ser_jax.training.state import TrainState, make_optimizer, plateau_step


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
        if registry.ensemble_variants(config.model):
            raise ValueError(f"model.ensemble={config.model.ensemble!r}: ensemble members train "
                             "one by one (train_and_evaluate); a Trainer (and a tuning trial) "
                             "trains one network, so set model.ensemble=''")
        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32
        self.model = registry.create_model(config.model, num_classes, dtype)
        batch_augment.check_config(config.train, registry.model_inputs(config.model))
        self.num_classes = num_classes
        self.optimizer = make_optimizer(config.train)
        self.input_shape = tuple(input_shape)
        self.loop = resolve_loop(config.train.loop)
        self._train_steps = jax.jit(self._train_steps_impl, donate_argnums=(0, 1),
                                    static_argnames=("num_steps",))
        self._train_epoch = jax.jit(self._train_epoch_impl, donate_argnums=(0,))
        # Batches placed by each process (training/input.py): epoch key folded with the step.
        self.train_batch = jax.jit(
            lambda state, totals, x, y, epoch_key_data, step: self._batch_step(
                state, totals, x, y,
                jax.random.fold_in(jax.random.wrap_key_data(epoch_key_data), step)),
            donate_argnums=(0, 1))
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
        return self._batch_step(state, totals, x_all[index], y_all[index], key)

    def _batch_step(self, state: TrainState, totals: jax.Array, x, y, key):
        """One step on a batch (x, y) already gathered (and placed batch-sharded)."""
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
            raise ConfigError(f"the training split has {num_rows} rows, fewer than "
                              f"train.batch_size={batch} — lower --config.train.batch_size")
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
    """Replicated device scalars as floats (in a multi-process job: this process's copy)."""
    return {name: float(np.asarray(value.addressable_data(0)) if isinstance(value, jax.Array)
                        else value) for name, value in metrics.items()}
