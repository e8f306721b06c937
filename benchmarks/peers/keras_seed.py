"""The seed model and training in Keras 3 on the TensorFlow backend, trained with model.fit.

    .venv/bin/python -m benchmarks.peers.keras_seed --batch-size 64 [--no-jit]

The seed's own layers and defaults: Conv1D 'same', MaxPooling1D 'same' stride 1, BatchNormalization
(momentum 0.99, eps 1e-3), softmax output, categorical cross-entropy on one-hot labels, Adam(1e-3),
metrics=['accuracy'], one fit() call with shuffle=True and verbose=0. Keras compiles the train
step with XLA by default on this model (jit_compile='auto'); --no-jit runs a plain tf.function.
Epochs are timed by a callback, so fit()'s set-up is outside every epoch.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.peers import common  # noqa: E402


def seed_model(filters: int = 64, kernel: int = 3, dropout: float = 0.2) -> keras.Model:
    """Input (270, 1) -> class probabilities (7,)."""
    layers = keras.layers

    def conv(width: int, stride: int) -> keras.layers.Layer:
        return layers.Conv1D(width, kernel, strides=stride, padding="same", activation="relu")

    def pool_and_norm() -> list[keras.layers.Layer]:
        return [layers.MaxPooling1D(2, strides=1, padding="same"),
                layers.BatchNormalization(momentum=0.99, epsilon=1e-3)]

    return keras.Sequential([
        keras.Input((common.INPUT_LENGTH, 1)),
        conv(filters, 1), conv(filters, 2), conv(filters, 2), *pool_and_norm(),
        conv(2 * filters, 1), conv(2 * filters, 2), *pool_and_norm(),
        conv(4 * filters, 2), *pool_and_norm(), layers.Dropout(dropout),
        layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(16, activation="relu"),
        layers.Dense(common.NUM_CLASSES, activation="softmax"),
    ])


class EpochTimer(keras.callbacks.Callback):
    """Starts and stops the clock around each epoch; keeps the last epoch's logs."""

    def __init__(self, clock: common.EpochClock):
        super().__init__()
        self.clock, self.logs = clock, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.start()

    def on_epoch_end(self, epoch, logs=None):
        self.clock.stop()
        self.logs = logs or {}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-jit", action="store_true", help="jit_compile=False (no XLA)")
    args = p.parse_args()

    keras.utils.set_random_seed(args.seed)
    x, y, x_test, y_test = common.make_data(args.task, args.rows, args.batch_size, args.seed)
    model = seed_model()
    common.check_sizes(
        sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        sum(int(np.prod(w.shape)) for w in model.non_trainable_weights))
    model.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE),
                  loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=not args.no_jit)
    one_hot = keras.utils.to_categorical(y, common.NUM_CLASSES)
    clock = common.EpochClock()
    timer = EpochTimer(clock)
    model.fit(x[..., None], one_hot, batch_size=args.batch_size, epochs=args.epochs + 1,
              shuffle=True, verbose=0, callbacks=[timer])

    def eval_accuracy(rows: np.ndarray, labels: np.ndarray) -> float:
        return common.accuracy(model.predict(rows[..., None], batch_size=512, verbose=0), labels)

    common.report(
        "keras", "graph" if args.no_jit else "xla", args, len(y), clock,
        {"tensorflow": tf.__version__, "keras": keras.__version__},
        device=",".join(d.device_type for d in tf.config.list_logical_devices()),
        last_epoch_loss=round(float(timer.logs["loss"]), 4),
        last_epoch_accuracy=round(float(timer.logs["accuracy"]), 4),
        train_accuracy=round(eval_accuracy(x, y), 4),
        test_accuracy=round(eval_accuracy(x_test, y_test), 4))


if __name__ == "__main__":
    main()
