"""labels.json: the class names in label-id order, written by the features stage."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from ser_jax.core.files import write_json_atomic
from ser_jax.data.corpora import EMOTIONS
from ser_jax.data.errors import DatasetError, read_json

LABELS_FILE = "labels.json"


def label_names(data: ml_collections.ConfigDict) -> list[str]:
    """The class names in label-id order: the 7 emotions, plus boredom when it is kept."""
    return [*EMOTIONS, *(["boredom"] if data.keep_boredom else [])]


def write_labels(directory: str | Path, labels: list[str]) -> None:
    """Writes labels.json {"labels": [...]} into ``directory``, atomically."""
    write_json_atomic(Path(directory) / LABELS_FILE, {"labels": list(labels)})


def read_labels(directory: str | Path) -> list[str]:
    """Reads labels.json {"labels": [...]} from a features directory."""
    path = Path(directory) / LABELS_FILE
    data = read_json(path, "labels")
    labels = data.get("labels") if isinstance(data, dict) else None
    if (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
            or not all(isinstance(x, str) for x in labels)):
        raise DatasetError(
            f"{path}: expected {{\"labels\": [unique strings]}}, got {data!r:.200}; "
            "rerun the features stage to rewrite it."
        )
    return labels
