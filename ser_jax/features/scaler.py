"""Per-column standardization of features, fit on training rows; JSON in and out (numpy only:
inference loads it without pandas or pyarrow)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ser_jax.core.files import write_json_atomic
from ser_jax.data.errors import DatasetError, read_json
from ser_jax.data.schema import FEATURE_NAMES

SCALER_FILE = "scaler.json"  # clip-feature scaler, in a features folder and a bundle
SEQUENCE_SCALER_FILE = "sequence_scaler.json"  # per-band frame-sequence scaler



@dataclass
class Scaler:
    """Per-column standardization: (x - mean) / scale; constant columns get scale 1."""

    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, columns: Sequence[str] = FEATURE_NAMES) -> Scaler:
        """Fits on training rows x (..., D), every leading index one sample (for sequences
        (rows, frames, bands): one statistic per band); float64, like sklearn's StandardScaler."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[-1] != len(columns) or x.size == 0:
            raise DatasetError(
                f"Scaler.fit needs a non-empty (rows, ..., {len(columns)}) array, got shape "
                f"{x.shape}."
            )
        x = x.reshape(-1, len(columns))
        return cls.from_std(columns, x.mean(axis=0), x.std(axis=0))

    @classmethod
    def from_std(cls, columns: Sequence[str], mean: np.ndarray, std: np.ndarray) -> Scaler:
        """The scaler of per-column means and population standard deviations."""
        # Columns constant up to float32 rounding would blow up noise: leave them unscaled.
        constant = (std == 0) | (std <= 1e-6 * np.abs(mean))
        return cls(list(columns), np.asarray(mean), np.where(constant, 1.0, std))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardizes x (..., D) to float32."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[-1] != len(self.columns):
            raise DatasetError(
                f"Scaler expects (rows, ..., {len(self.columns)}) values, got shape {x.shape}."
            )
        return ((x - self.mean) / self.scale).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Writes {"columns", "mean", "scale"} as JSON, atomically."""
        write_json_atomic(
            path,
            {"columns": list(self.columns), "mean": self.mean.tolist(),
             "scale": self.scale.tolist()},
        )

    @classmethod
    def load(cls, path: str | Path) -> Scaler:
        """Reads a scaler written by save()."""
        data = read_json(path, "scaler")
        try:
            columns = [str(c) for c in data["columns"]]
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(
                f"{path}: malformed scaler ({e}); expected keys columns, mean, scale. "
                "Rerun the features stage to rewrite it."
            ) from e
        if not len(columns) == mean.shape[0] == scale.shape[0] or np.any(scale <= 0):
            raise DatasetError(
                f"{path}: scaler has {len(columns)} columns, {mean.size} means, {scale.size} "
                "scales (all scales must be positive). Rerun the features stage to rewrite it."
            )
        return cls(columns, mean, scale)
