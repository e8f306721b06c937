"""ser-jax itself, driven through its public Trainer as train_and_evaluate drives it.

    .venv/bin/python -m benchmarks.peers.serjax_seed --batch-size 64 --loop step --steps-per-call 4

Whole training set resident on the device (``put_replicated``), one ``train_epoch`` per epoch,
synchronised at the end of each epoch. ``--loop``/``--steps-per-call`` override the config;
left out, the library defaults apply.
"""

import inspect

import jax
import ml_collections
import numpy as np

from benchmarks.peers import common
from configs import default
from ser_jax import models, train


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("auto", "step", "scan"), help="train.loop (default: config)")
    p.add_argument("--steps-per-call", type=int, help="train.steps_per_call (default: config)")
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
    args = p.parse_args()

    config = default.get_config()
    config.train.batch_size = args.batch_size
    config.train.learning_rate = common.LEARNING_RATE
    for key in ("loop", "steps_per_call", "compute_dtype"):
        if getattr(args, key) is not None:
            config.train[key] = getattr(args, key)
    x, y, x_test, y_test = common.make_data(args.task, args.rows, args.batch_size, args.seed)

    trainer = train.get_trainer(config, num_classes=common.NUM_CLASSES,
                                input_shape=(common.INPUT_LENGTH,))
    state = init_state(trainer, config, args.seed)
    common.check_sizes(models.count_parameters(state.params),
                       models.count_parameters(state.batch_stats))
    x_all, y_all = trainer.put_replicated(x), trainer.put_replicated(y)
    seed_key = jax.random.key(args.seed + 1)

    clock = common.EpochClock()
    for epoch in range(args.epochs + 1):
        clock.start()
        batches = trainer.epoch_batches(seed_key, epoch, len(y))
        state, totals = trainer.train_epoch(state, x_all, y_all, batches,
                                            jax.random.fold_in(seed_key, 10_000 + epoch))
        loss_sum, correct, count = np.asarray(jax.device_get(totals))
        clock.stop()

    def eval_accuracy(rows: np.ndarray, labels: np.ndarray) -> float:
        batches = trainer.eval_batches(rows)
        return common.accuracy(
            np.asarray(trainer.logits(state.params, state.batch_stats, batches, len(rows))), labels)

    variant = trainer.loop if trainer.loop == "scan" else f"step{config.train.steps_per_call}"
    device = jax.devices()[0]
    common.report(
        "ser-jax", variant, args, len(y), clock,
        {"jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
         "optax": _version("optax")},
        device=f"{device.platform}:{device.device_kind}",
        compute_dtype=config.train.compute_dtype,
        last_epoch_loss=round(float(loss_sum / count), 4),
        last_epoch_accuracy=round(float(correct / count), 4),
        train_accuracy=round(eval_accuracy(x, y), 4),
        test_accuracy=round(eval_accuracy(x_test, y_test), 4))


def init_state(trainer: train.Trainer, config: ml_collections.ConfigDict, seed: int):
    """Trainer.init_state, whether it takes the rates as state values or not (API in flux)."""
    if "learning_rate" in inspect.signature(trainer.init_state).parameters:
        return trainer.init_state(seed, config.train.learning_rate, config.model.dropout)
    return trainer.init_state(seed)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
