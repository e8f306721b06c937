"""What every training-throughput peer shares: flags, data, the size check and the JSON report.

Protocol (identical for ser-jax, Keras and PyTorch): the same float32 rows (seeded NumPy), cut
to a whole number of batches; one warm-up epoch (compilation included, reported as
``first_epoch_s``), then ``--epochs`` timed epochs; ``samples_per_second`` is the samples
trained in the timed epochs over their wall seconds. Each peer prints one JSON line.
"""

import argparse
import json
import platform
import resource
import time

import numpy as np

INPUT_LENGTH = 270
NUM_CLASSES = 7
TRAINABLE_PARAMS = 478_151  # the seed model's trainable parameters
BN_STATISTICS = 896  # BatchNorm moving means and variances
LEARNING_RATE = 1e-3
CLUSTER_SCALE = 0.2  # cluster-mean spread of the accuracy task: learnable, not trivial


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every peer takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch")
    p.add_argument("--rows", type=int, default=4096, help="training rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=("throughput", "accuracy"), default="throughput",
                   help="throughput: random rows and labels; accuracy: learnable Gaussian "
                        "clusters, scored on the training rows and on held-out rows")
    return p


def make_data(task: str, rows: int, batch_size: int, seed: int = 0):
    """(x_train, y_train, x_test, y_test): float32 (rows, 270) and int32 labels.

    Training rows are cut to a whole number of batches so every framework trains the same
    samples per epoch. ``throughput`` rows are N(0, 1) with uniform labels; ``accuracy`` rows
    are N(mean[label], 1) around seven random class means.
    """
    rng = np.random.default_rng(seed)
    rows -= rows % batch_size
    if rows == 0:
        raise SystemExit(f"--rows must be at least --batch-size={batch_size}")
    test_rows = rows // 4
    y = rng.integers(0, NUM_CLASSES, rows + test_rows).astype(np.int32)
    x = rng.standard_normal((rows + test_rows, INPUT_LENGTH), dtype=np.float32)
    if task == "accuracy":
        means = rng.normal(0.0, CLUSTER_SCALE, (NUM_CLASSES, INPUT_LENGTH)).astype(np.float32)
        x += means[y]
    return x[:rows], y[:rows], x[rows:], y[rows:]


def check_sizes(trainable: int, statistics: int) -> None:
    """Fails unless the model has the seed's parameter and BatchNorm-statistic counts."""
    if (trainable, statistics) != (TRAINABLE_PARAMS, BN_STATISTICS):
        raise SystemExit(f"model has {trainable} trainable parameters and {statistics} BN "
                         f"statistics; expected {TRAINABLE_PARAMS} and {BN_STATISTICS}")


class EpochClock:
    """Wall and process-CPU (all threads, user + sys) seconds per epoch; epoch 0 is the warm-up.

    CPU seconds tell how much work an epoch took even when other jobs share the cores.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = (0.0, 0.0)

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self.seconds.append(time.perf_counter() - self._start[0])
        self.cpu_seconds.append(time.process_time() - self._start[1])


def report(framework: str, variant: str, args: argparse.Namespace, samples_per_epoch: int,
           clock: EpochClock, versions: dict[str, str], **extra) -> dict:
    """Builds, prints (one JSON line) and returns the run's record."""
    timed = clock.seconds[1:]
    record = {
        "framework": framework,
        "variant": variant,
        "task": args.task,
        "batch_size": args.batch_size,
        "rows": samples_per_epoch,
        "timed_epochs": len(timed),
        "first_epoch_s": round(clock.seconds[0], 3),
        "epoch_s": [round(s, 3) for s in timed],
        "samples_per_second": round(samples_per_epoch * len(timed) / sum(timed), 1)
        if timed else None,
        "cpu_s": [round(s, 3) for s in clock.cpu_seconds[1:]],
        "samples_per_cpu_second": round(samples_per_epoch * len(timed) / cpu, 1)
        if (cpu := sum(clock.cpu_seconds[1:])) else None,
        # Linux reports kilobytes; this process only (not compile workers it spawned).
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": TRAINABLE_PARAMS,
        "bn_statistics": BN_STATISTICS,
        **extra,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, **versions},
    }
    print(json.dumps(record), flush=True)
    return record


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))
