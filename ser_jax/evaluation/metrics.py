"""Classification metrics from a confusion matrix (scikit-learn's definitions)."""

import numpy as np


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
