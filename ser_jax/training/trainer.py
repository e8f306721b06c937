"""The compiled functions of training: one epoch on the device, evaluation, the state.

A :class:`Trainer` holds them for one model, optimizer and device mesh. With ``runs=R`` every
function is vmapped over a leading axis of R runs (trials that share shapes but differ in seed,
learning rate and dropout): the same epoch, computed for R runs in one program. Trainers are
cached per compiled-in settings (:func:`get_trainer`), so runs, folds and trials share programs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ser_jax.core.batches import padded_batches
from ser_jax.core.errors import ConfigError
from ser_jax.core.process import barrier
from ser_jax.models import registry
from ser_jax.training import batch_augment, settings
from ser_jax.training import input as host_input
from ser_jax.training.state import TrainState, learning_rate, make_optimizer, plateau_step


@dataclasses.dataclass
class DeviceData:
    """The training split and the validation batches, placed on the devices once per run.

    With ``train.input='host'`` the training rows stay on the host (``host_rows``; ``x`` is
    None): each process places its devices' rows of every batch (training/input.py).
    """

    x: jax.Array | None
    y: jax.Array
    val_x: list[jax.Array]  # zero-padded batches of eval_batch_size rows
    val_y: jax.Array
    host_rows: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def train_rows(self) -> int:
        return int(self.y.shape[0])


class Trainer:
    """Compiled train/eval functions for one model, optimizer and device mesh."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
                 input_shape: tuple[int, ...], runs: int | None = None):
        """``input_shape`` is one example's shape: (270,) clip features or (frames, bands);
        ``runs`` vmaps every function over that many runs (None: one run, no run axis)."""
        self.config = config
        self.runs = runs
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
        self.input = host_input.resolve(config.train.input)

        def each(fn, in_axes=0):  # one run, or vmapped over runs
            return fn if runs is None else jax.vmap(fn, in_axes=in_axes)

        self._init = jax.jit(each(self._init_impl), out_shardings=self.replicated)
        self._keys = jax.jit(each(jax.random.key), out_shardings=self.replicated)
        self._inputs = jax.jit(each(self._inputs_impl, (0, None, None)))
        self._train_epoch = jax.jit(each(self._train_epoch_impl, (0, None, None, 0, 0)),
                                    donate_argnums=(0,))
        self._train_steps = {}  # num_steps -> compiled call (built on first use)
        self._host_step = jax.jit(self._host_step_impl, donate_argnums=(0, 1))
        self._host_step_compiled = None  # compiled ahead of its first run (_host_steps)
        self._each = each
        self._logits = jax.jit(each(self._logits_impl, (0, 0, None)))
        self._close_epoch = jax.jit(each(self._close_epoch_impl, (0, 0, None, 0)))
        self._metrics = jax.jit(each(self._metrics_impl, (0, None)))

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

    def init_state(self, seeds, learning_rates, dropout_rates) -> TrainState:
        """A fresh state (one value each, or one per run when vmapped). The rates are state
        values, not compiled constants."""
        return self._init(self.seed_keys(seeds), self.put(np.asarray(learning_rates, np.float32)),
                          self.put(np.asarray(dropout_rates, np.float32)))

    def seed_keys(self, seeds) -> jax.Array:
        """The runs' seed keys, placed on every device: initial weights, shuffles and dropout
        masks derive from them."""
        return self._keys(self.put(np.asarray(seeds, np.int32)))

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, for restoring onto the current devices."""
        shapes = jax.eval_shape(self._init_impl, jax.random.key(0), 0.0, 0.0)
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), shapes)

    def put(self, array: np.ndarray) -> jax.Array:
        """Places one host array on every device (multi-host safe): an explicit transfer."""
        array = np.asarray(array)
        with jax.transfer_guard("allow"):  # this is the explicit transfer
            return jax.make_array_from_callback(array.shape, self.replicated,
                                                lambda idx: array[idx])

    def device_data(self, x: np.ndarray, y: np.ndarray, val_x: np.ndarray,
                    val_y: np.ndarray) -> DeviceData:
        """Places the training rows and the validation batches on the devices."""
        if len(y) < self.config.train.batch_size:
            raise ConfigError(f"the training split has {len(y)} rows, fewer than "
                              f"train.batch_size={self.config.train.batch_size} — lower "
                              "--config.train.batch_size")
        if self.input == "device":
            return DeviceData(self.put(x), self.put(y), self.eval_batches(val_x),
                              self.put(val_y))
        if self.runs is not None:
            raise ConfigError("train.input='host' (what 'auto' means in a multi-process job) "
                              "trains one run at a time; vmapped runs (tuning trials) need "
                              "train.input='device' in one process")
        return DeviceData(None, self.put(y), self.eval_batches(val_x), self.put(val_y),
                          host_rows=(np.asarray(x), np.asarray(y)))

    # ---- one epoch ----------------------------------------------------------------------------
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

    def _inputs_impl(self, seed_key: jax.Array, epoch: jax.Array, y_all: jax.Array):
        """This epoch's dropout key and shuffled batch indices (steps, batch), both derived
        from the run's seed key; a last partial batch is dropped."""
        batch, num_rows = self.config.train.batch_size, y_all.shape[0]
        perm = jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(seed_key, 2), epoch), num_rows)
        steps = num_rows // batch
        return (jax.random.fold_in(jax.random.fold_in(seed_key, 1), epoch),
                perm[: steps * batch].reshape(steps, batch))

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
            return self._train_step(state, totals, x_all, y_all, batches[step],
                                    jax.random.fold_in(epoch_key, step)), None
        totals = jnp.zeros((3,), jnp.float32)
        (state, totals), _ = jax.lax.scan(body, (state, totals), jnp.arange(batches.shape[0]))
        return state, totals

    def _host_step_impl(self, state, totals, x, y, epoch_key, step):
        """One step on a batch placed by the processes (the key as on the device path)."""
        return self._batch_step(state, totals, x, y, jax.random.fold_in(epoch_key, step))

    def _host_steps(self, state: TrainState, rows: tuple[np.ndarray, np.ndarray],
                    batches: jax.Array, epoch_key: jax.Array) -> tuple[TrainState, jax.Array]:
        """One epoch's steps with ``train.input='host'``: every process holds the same
        ``batches`` (replicated) and places its devices' rows of each one."""
        x, y = rows
        order = jax.device_get(batches.addressable_data(0))  # the same in every process
        mine = host_input.process_rows(self.batch_sharded, order.shape[1])
        totals = self.put(np.zeros((3,), np.float32))
        for step, index in enumerate(order):
            args = (state, totals, *host_input.place_batch(self.batch_sharded, x, y, index, mine),
                    epoch_key, self.put(np.int32(step)))
            if self._host_step_compiled is None:
                # Compiled ahead of its first run, then a barrier: processes that compile at
                # different speeds start their first collective together (gloo gives 30 s).
                self._host_step_compiled = self._host_step.lower(*args).compile()
                barrier("compiled train step")
            state, totals = self._host_step_compiled(*args)
        return state, totals

    def _steps_call(self, num_steps: int):
        if num_steps not in self._train_steps:
            steps = functools.partial(self._train_steps_impl, num_steps=num_steps)
            self._train_steps[num_steps] = jax.jit(
                self._each(steps, (0, 0, None, None, 0, 0, None)), donate_argnums=(0, 1))
        return self._train_steps[num_steps]

    def _logits_impl(self, params, batch_stats, x):
        x = jax.lax.with_sharding_constraint(x, self.batch_sharded)
        return self.model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

    def _metrics_impl(self, logits: list[jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
        return split_metrics(jnp.concatenate(logits)[:labels.shape[0]], labels, self.num_classes)

    def _close_epoch_impl(self, state: TrainState, val_logits: list[jax.Array],
                          val_labels: jax.Array, totals: jax.Array):
        """The epoch's metrics (device values) and the state with the plateau fed val_loss."""
        val = split_metrics(jnp.concatenate(val_logits)[:val_labels.shape[0]], val_labels,
                            self.num_classes)
        metrics = {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2],
                   "count": totals[2], **{f"val_{k}": v for k, v in val.items()},
                   "learning_rate": learning_rate(state)}  # the rate this epoch trained with
        return plateau_step(self.optimizer, state, val["loss"]), metrics

    def train_steps(self, state: TrainState, data: DeviceData, seed_key: jax.Array,
                    epoch: int) -> tuple[TrainState, jax.Array]:
        """One epoch's train steps: the new state and device totals (loss sum, correct, rows)
        (or one row of them per run). Transfers only explicitly (the epoch number)."""
        epoch_key, batches = self._inputs(seed_key, self.put(np.int32(epoch)), data.y)
        if data.host_rows is not None:
            return self._host_steps(state, data.host_rows, batches, epoch_key)
        if self.loop == "scan":
            return self._train_epoch(state, data.x, data.y, batches, epoch_key)
        totals = self.put(np.zeros((3,) if self.runs is None else (self.runs, 3), np.float32))
        steps = data.train_rows // self.config.train.batch_size
        chunk = max(1, self.config.train.steps_per_call)
        for first in range(0, steps, chunk):
            state, totals = self._steps_call(min(chunk, steps - first))(
                state, totals, data.x, data.y, batches, epoch_key, self.put(np.int32(first)))
        return state, totals

    def train_epoch(self, state: TrainState, data: DeviceData, seed_key: jax.Array,
                    epoch: int) -> tuple[TrainState, dict[str, jax.Array]]:
        """Trains one epoch, validates and feeds the plateau schedule val_loss; returns the new
        state and the epoch's metrics, left on the device (loss, accuracy, count, val_loss,
        val_accuracy, val_balanced_accuracy, learning_rate)."""
        state, totals = self.train_steps(state, data, seed_key, epoch)
        logits = [self._logits(state.params, state.batch_stats, x) for x in data.val_x]
        return self._close_epoch(state, logits, data.val_y, totals)

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_batches(self, x: np.ndarray) -> list[jax.Array]:
        """Splits ``x`` into fixed-size, zero-padded batches placed on the devices once."""
        batch = self.config.train.eval_batch_size
        batch -= batch % jax.device_count()
        return [self.put(rows) for rows, _ in padded_batches(x, batch)]

    def evaluate(self, params, batch_stats, batches: list[jax.Array],
                 labels: jax.Array) -> dict[str, jax.Array]:
        """Loss, accuracy and balanced accuracy of ``eval_batches`` output, on the device."""
        logits = [self._logits(params, batch_stats, x) for x in batches]
        return self._metrics(logits, labels)


@functools.lru_cache(maxsize=8)
def _cached_trainer(config: ml_collections.FrozenConfigDict, num_classes: int,
                    input_shape: tuple[int, ...], devices: int, runs: int | None) -> Trainer:
    del devices  # part of the cache key only
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the key must not change
    config.model.dropout = 0.0  # unused: the rate is TrainState.dropout_rate
    return Trainer(config, num_classes, input_shape, runs)


def get_trainer(config: ml_collections.ConfigDict, num_classes: int,
                input_shape: tuple[int, ...], runs: int | None = None) -> Trainer:
    """A Trainer whose compiled functions are shared by every run in this process with the same
    model, optimizer and batch settings (tests, tuning trials, cross-validation folds)."""
    train = settings.compiled_settings(config.train)
    model = {k: v for k, v in config.model.items() if k != "dropout"}
    key = ml_collections.FrozenConfigDict({"model": model, "train": train})
    return _cached_trainer(key, num_classes, tuple(input_shape), jax.device_count(), runs)


def resolve_loop(loop: str) -> str:
    """'auto' picks per backend: one compiled epoch (scan) on GPU/TPU, unrolled steps on CPU."""
    if loop == "auto":
        return "step" if jax.default_backend() == "cpu" else "scan"
    if loop not in ("step", "scan"):
        raise ValueError(f"train.loop={loop!r}; valid: 'auto', 'step', 'scan'")
    return loop


def split_metrics(logits: jax.Array, labels: jax.Array,
                  num_classes: int) -> dict[str, jax.Array]:
    """Mean cross-entropy, accuracy and balanced accuracy (mean recall over the classes present)
    of one split's logits or log-probabilities, left on the device."""
    onehot = jax.nn.one_hot(labels, num_classes)
    hits = onehot * (jnp.argmax(logits, -1) == labels)[:, None]
    support = onehot.sum(0)
    recall = hits.sum(0) / jnp.maximum(support, 1)
    present = support > 0
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "balanced_accuracy": jnp.sum(jnp.where(present, recall, 0)) / jnp.sum(present)}
