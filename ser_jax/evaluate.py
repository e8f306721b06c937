"""The evaluate stage: accuracy, balanced accuracy, macro-F1, per-class scores, confusion matrix."""

from io import BytesIO
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ser_jax import bundle, dataset, models
from ser_jax.files import write_bytes_atomic, write_json_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

PREDICTIONS_FILE = "predictions.csv"
PREDICTION_KEYS = ("path", "speaker", "corpus", "label")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (true class, predicted class) pairs: rows are true classes."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(matrix: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and per-class precision/recall/F1 from a matrix.

    As scikit-learn defines them: balanced accuracy averages recall over classes present in the
    true labels; macro-F1 averages F1 over classes that are true or predicted at least once.
    """
    true_counts, predicted_counts, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true_counts > 0, hits / true_counts, 0.0)
        precision = np.where(predicted_counts > 0, hits / predicted_counts, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = true_counts > 0
    seen = present | (predicted_counts > 0)
    return {
        "rows": int(matrix.sum()),
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f),
                              "support": int(n)}
                      for label, p, r, f, n in zip(labels, precision, recall, f1, true_counts,
                                                   strict=True)},
    }


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


def evaluate(workdir: str | Path, features_dir: str | Path | None = None,
             split: str = "test") -> dict:
    """Scores the workdir's bundle on a split (``test``; ``val`` when test has no rows).

    Writes ``evaluation/metrics.json``, ``confusion_matrix.csv``, ``confusion_matrix.png`` and
    ``predictions.csv`` (each row's path, speaker, corpus, label, predicted label and class
    probabilities ``p_<label>``).
    """
    workdir = Path(workdir)
    features_dir = Path(features_dir) if features_dir else workdir / "features"
    path = features_dir / f"{split}.parquet"
    if split == "test" and (not path.exists() or pq.read_metadata(path).num_rows == 0):
        split, path = "val", features_dir / "val.parquet"
    model = bundle.load(workdir / "bundle")
    x, y = dataset.load_inputs(features_dir, split, model.labels,
                               models.model_inputs(model.config.model))
    probabilities = model.probabilities(x)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(y, predicted, len(model.labels))
    report = {"split": split, "features": str(path),
              **classification_metrics(matrix, model.labels),
              "confusion_matrix": matrix.tolist(), "labels": model.labels}
    out = workdir / "evaluation"
    write_json_atomic(out / "metrics.json", report)
    csv = pd.DataFrame(matrix, index=model.labels, columns=model.labels).rename_axis("true")
    write_bytes_atomic(out / "confusion_matrix.csv", csv.to_csv().encode())
    rows = pd.read_parquet(path, columns=list(PREDICTION_KEYS))
    rows["predicted"] = [model.labels[i] for i in predicted]
    rows[[f"p_{label}" for label in model.labels]] = probabilities
    write_bytes_atomic(out / PREDICTIONS_FILE, rows.to_csv(index=False).encode())
    write_bytes_atomic(out / "confusion_matrix.png",
                       plot_confusion(matrix, model.labels, f"{split} split ({len(y)} rows)"))
    print(format_table(report))
    return report
