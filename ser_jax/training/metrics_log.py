"""Per-epoch metrics: one log line, one JSON line in ``metrics.jsonl`` and TensorBoard scalars."""

import json
from pathlib import Path

from absl import logging
from tensorboardX import SummaryWriter

from ser_jax.core.files import write_bytes_atomic


class MetricsLog:
    """Writes epoch records to the console, ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

    ``history`` holds the epochs already done (on resume): the JSON-lines file is rewritten to
    exactly those, so epochs of a killed run that never reached a checkpoint are dropped.
    """

    def __init__(self, workdir: Path, history: list[dict]):
        self.path = workdir / "metrics.jsonl"
        write_bytes_atomic(self.path, "".join(json.dumps(r) + "\n" for r in history).encode())
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, record: dict) -> None:
        logging.info(
            "epoch %3d  loss %.4f  accuracy %.4f  val_loss %.4f  val_accuracy %.4f  lr %.2e  "
            "%.1f s  %.0f samples/s", record["epoch"], record["loss"], record["accuracy"],
            record["val_loss"], record["val_accuracy"], record["learning_rate"],
            record["seconds"], record["samples_per_second"])
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "epoch":
                self.tensorboard.add_scalar(name, value, record["epoch"])

    def close(self) -> None:
        self.tensorboard.close()
