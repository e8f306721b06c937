"""ser-jax itself, driven through its public Trainer as train_and_evaluate drives it.

    .venv/bin/python -m benchmarks.peers.serjax_seed --batch-size 64 --loop step --steps-per-call 4

Whole training set resident on the device (``Trainer.put``), one ``train_steps`` per epoch,
synchronised at the end of each epoch. ``--loop``/``--steps-per-call`` override the config;
left out, the library defaults apply.
"""

import jax
import numpy as np

from benchmarks.peers import common
from configs import default
from ser_jax.models import registry
from ser_jax.training import trainer as trainer_lib


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

    trainer = trainer_lib.get_trainer(config, num_classes=common.NUM_CLASSES,
                                input_shape=(common.INPUT_LENGTH,))
    state = trainer.init_state(args.seed, config.train.learning_rate, config.model.dropout)
    common.check_sizes(registry.count_parameters(state.params),
                       registry.count_parameters(state.batch_stats))
    data = trainer_lib.DeviceData(trainer.put(x), trainer.put(y), [], trainer.put(y[:0]))
    seed_key = jax.random.key(args.seed + 1)

    clock = common.EpochClock()
    for epoch in range(args.epochs + 1):
        clock.start()
        state, totals = trainer.train_steps(state, data, seed_key, epoch)
        loss_sum, correct, count = np.asarray(jax.device_get(totals))
        clock.stop()

    def eval_accuracy(rows: np.ndarray, labels: np.ndarray) -> float:
        accuracy = trainer.evaluate(state.params, state.batch_stats, trainer.eval_batches(rows),
                                    trainer.put(labels))["accuracy"]
        return float(jax.device_get(accuracy))

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


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
