"""The evaluate stage: the workdir's bundle scored on the test split (metrics, confusion
matrix, per-row predictions)."""

from pathlib import Path

import pandas as pd

from ser_jax.core.files import write_bytes_atomic, write_json_atomic
from ser_jax.data import store
from ser_jax.evaluation.metrics import classification_metrics, confusion_matrix
from ser_jax.evaluation.report import format_table, write_confusion
from ser_jax.inference import bundle
from ser_jax.models import registry

PREDICTIONS_FILE = "predictions.csv"
PREDICTION_KEYS = ("path", "speaker", "corpus", "label")


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
    if split == "test" and store.num_rows(path) == 0:
        split, path = "val", features_dir / "val.parquet"
    model = bundle.load(workdir / "bundle")
    x, y = store.load_inputs(features_dir, split, model.labels,
                               registry.model_inputs(model.config.model))
    probabilities = model.probabilities(x)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(y, predicted, len(model.labels))
    report = {"split": split, "features": str(path),
              **classification_metrics(matrix, model.labels),
              "confusion_matrix": matrix.tolist(), "labels": model.labels}
    out = workdir / "evaluation"
    write_json_atomic(out / "metrics.json", report)
    rows = pd.read_parquet(path, columns=list(PREDICTION_KEYS))
    rows["predicted"] = [model.labels[i] for i in predicted]
    rows[[f"p_{label}" for label in model.labels]] = probabilities
    write_bytes_atomic(out / PREDICTIONS_FILE, rows.to_csv(index=False).encode())
    write_confusion(out, matrix, model.labels, f"{split} split ({len(y)} rows)")
    print(format_table(report))
    return report
