"""Per-epoch metrics: a progress bar (terminal) or one log line, one JSON line in
``metrics.jsonl``, TensorBoard scalars and, on close, the training-curves PNG."""

import json
import sys
from pathlib import Path

from absl import logging
from tensorboardX import SummaryWriter
from tqdm import tqdm

from ser_jax.core.files import write_bytes_atomic
from ser_jax.training.curves import CURVES_FILE, plot_curves


class MetricsLog:
    """Writes epoch records to the console, ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

    ``history`` holds the epochs already done (on resume): the JSON-lines file is rewritten to
    exactly those, so epochs of a killed run that never reached a checkpoint are dropped.
    With ``epochs`` (the most the run will train) and stderr a terminal, a progress bar over
    the epochs shows the latest validation metrics instead of one log line per epoch.
    """

    def __init__(self, workdir: Path, history: list[dict], epochs: int | None = None):
        self.workdir = workdir
        self.path = workdir / "metrics.jsonl"
        self.history = list(history)
        write_bytes_atomic(self.path, "".join(json.dumps(r) + "\n" for r in history).encode())
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        self.bar = (tqdm(total=epochs, initial=len(history), desc="train", unit="epoch",
                         file=sys.stderr, dynamic_ncols=True)
                    if epochs and sys.stderr.isatty() else None)

    @property
    def curves_path(self) -> Path:
        """Where close() writes the training curves: beside the confusion matrix."""
        return self.workdir / "evaluation" / CURVES_FILE

    def write(self, record: dict) -> None:
        self.history.append(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}",
                                 val_loss=f"{record['val_loss']:.3f}",
                                 val_acc=f"{record['val_accuracy']:.3f}",
                                 lr=f"{record['learning_rate']:.1e}", refresh=False)
            self.bar.update(1)
        else:
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

    def close(self, best_epoch: int | None = None) -> None:
        """Closes the bar and TensorBoard and writes the curves PNG (``best_epoch`` 1-based)."""
        if self.bar is not None:
            self.bar.close()
        self.tensorboard.close()
        if self.history:
            write_bytes_atomic(self.curves_path, plot_curves(self.history, best_epoch))
