"""The training-curves PNG: loss, accuracy and learning rate per epoch, the best epoch marked
(the style of evaluation/report.py's confusion matrix)."""

from io import BytesIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

CURVES_FILE = "training_curves.png"


def plot_curves(history: list[dict], best_epoch: int | None) -> bytes:
    """A PNG of per-epoch training and validation loss and accuracy and the learning rate;
    ``best_epoch`` (1-based) is marked with a dashed line."""
    epochs = [record["epoch"] for record in history]
    figure, axes = plt.subplots(1, 3, figsize=(12.8, 4.0), dpi=120)
    for ax, name, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [r[name] for r in history], marker="o", markersize=3, label="train")
        ax.plot(epochs, [r[f"val_{name}"] for r in history], marker="o", markersize=3,
                label="validation")
        ax.set(xlabel="epoch", title=title)
        ax.legend()
    axes[2].plot(epochs, [r["learning_rate"] for r in history], marker="o", markersize=3,
                 color="tab:green")
    axes[2].set(xlabel="epoch", title="learning rate", yscale="log")
    if best_epoch:
        for ax in axes:
            ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1)
        axes[0].text(best_epoch, axes[0].get_ylim()[1], f" best epoch {best_epoch}",
                     va="top", fontsize=8, color="gray")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
