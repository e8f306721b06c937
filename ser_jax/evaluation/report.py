"""Reports: the confusion matrix as CSV and PNG, and a plain-text table of a report."""

from io import BytesIO
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from ser_jax.core.files import write_bytes_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def write_confusion(out_dir: Path, matrix: np.ndarray, labels: list[str], title: str) -> None:
    """Writes ``confusion_matrix.csv`` (rows: true classes) and ``confusion_matrix.png``."""
    csv = pd.DataFrame(matrix, index=labels, columns=labels).rename_axis("true")
    write_bytes_atomic(out_dir / "confusion_matrix.csv", csv.to_csv().encode())
    write_bytes_atomic(out_dir / "confusion_matrix.png", plot_confusion(matrix, labels, title))


def plot_confusion(matrix: np.ndarray, labels: list[str], title: str) -> bytes:
    """A PNG of the confusion matrix, each row normalised to recall, with counts written in."""
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center",
                  color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    axes.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted",
             ylabel="true", title=title)
    axes.set_xticklabels(labels, rotation=45, ha="right")
    axes.set_yticklabels(labels)
    figure.colorbar(image, ax=axes, label="fraction of true class")
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def format_table(report: dict) -> str:
    """A short plain-text summary of a report."""
    lines = [f"{report['split']} split, {report['rows']} rows: accuracy {report['accuracy']:.3f}  "
             f"balanced accuracy {report['balanced_accuracy']:.3f}  "
             f"macro-F1 {report['macro_f1']:.3f}",
             f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for label, row in report["per_class"].items():
        lines.append(f"{label:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                     f"{row['f1']:>6.3f} {row['support']:>8d}")
    return "\n".join(lines)
