"""The feature files on disk: {split}.parquet (clip features + metadata) and
{split}.sequences.npy (frame sequences), written atomically and read back validated."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser_jax.core.files import write_bytes_atomic
from ser_jax.data.corpora import Clip
from ser_jax.data.errors import DatasetError
from ser_jax.data.schema import FEATURE_NAMES, SEQUENCE_NAMES

META_COLUMNS = ("label", "speaker", "corpus", "path", "augmentation")
SEQUENCES_SUFFIX = "sequences.npy"  # {split}.sequences.npy: standardized log-mel frames



def write_parquet_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Writes df (no index) to path via a temp file in the same directory and os.replace."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    write_bytes_atomic(path, buffer.getvalue())


def make_frame(features: np.ndarray, clips: Sequence[Clip], augmentation: str) -> pd.DataFrame:
    """Builds rows in the Parquet schema: the feature columns then the META_COLUMNS."""
    features = np.asarray(features, dtype=np.float32)
    if features.shape != (len(clips), len(FEATURE_NAMES)):
        raise DatasetError(
            f"Expected features of shape ({len(clips)}, {len(FEATURE_NAMES)}), "
            f"got {features.shape}."
        )
    df = pd.DataFrame(features, columns=list(FEATURE_NAMES))
    meta = {
        "label": [c.emotion for c in clips],
        "speaker": [c.speaker for c in clips],
        "corpus": [c.corpus for c in clips],
        "path": [c.path for c in clips],
        "augmentation": [augmentation] * len(clips),
    }
    return pd.concat([df, pd.DataFrame(meta, dtype=str)], axis=1)


def num_rows(path: str | Path) -> int:
    """Rows of a split's Parquet file (0 when it does not exist); DatasetError when unreadable."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e}); rerun the features "
                           "stage to rebuild it.") from e


def load_split(path: str | Path, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates a split: (features float32 (N, 270), label ids int32 (N,))."""
    path = Path(path)
    rerun = "rerun the features stage to rebuild it"
    if not path.is_file():
        raise DatasetError(f"{path}: feature file not found; run the features stage first.")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e}); {rerun}.") from e
    needed = [*FEATURE_NAMES, "label"]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                           else "")
        raise DatasetError(
            f"{path}: missing {len(missing)} column(s): {shown}. It was written by another "
            f"extractor version or by hand; {rerun}."
        )
    table = pq.read_table(path, columns=needed)
    if table.num_rows == 0:
        raise DatasetError(
            f"{path}: the split is empty (0 rows). Give it speakers or clips (split fractions, "
            f"val/test speaker lists) and {rerun}."
        )
    try:
        x = np.column_stack(
            [table.column(c).to_numpy().astype(np.float32) for c in FEATURE_NAMES]
        )
    except (TypeError, ValueError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: feature columns are not numeric ({e}); {rerun}.") from e
    bad = ~np.isfinite(x)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        detail = ", ".join(
            f"{FEATURE_NAMES[c]} ({int(np.isnan(x[:, c]).sum())} NaN, "
            f"{int(np.isinf(x[:, c]).sum())} inf)" for c in cols[:10]
        )
        more = f" and {len(cols) - 10} more column(s)" if len(cols) > 10 else ""
        rows = np.flatnonzero(bad.any(axis=1))
        clips = ""
        if "path" in schema.names:
            names = pq.read_table(path, columns=["path"]).column("path").to_pylist()
            clips = f", clips: {', '.join(str(names[r]) for r in rows[:3])}" + (
                f" and {len(rows) - 3} more" if len(rows) > 3 else "")
        raise DatasetError(
            f"{path}: non-finite features in {len(rows)} of {len(x)} rows, "
            f"columns: {detail}{more}{clips}. Check those clips' audio (silent/corrupt) and "
            f"{rerun}."
        )
    names = [str(v) for v in table.column("label").to_pylist()]
    index = {name: i for i, name in enumerate(labels)}
    unknown = Counter(n for n in names if n not in index)
    if unknown:
        listed = ", ".join(f"{n!r} ({k} rows)" for n, k in sorted(unknown.items()))
        raise DatasetError(
            f"{path}: unknown label(s) {listed}; known labels: {', '.join(labels)}. "
            f"labels.json and the split disagree; {rerun}."
        )
    return x, np.asarray([index[n] for n in names], dtype=np.int32)


def write_sequences_atomic(x: np.ndarray, path: str | Path) -> None:
    """Writes standardized sequences (rows, frames, bands) as a float16 .npy, atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(x, dtype=np.float16))
    write_bytes_atomic(path, buffer.getvalue())


def sequence_path(directory: str | Path, split: str) -> Path:
    """Where a split's frame sequences live, beside its parquet file (same row order)."""
    return Path(directory) / f"{split}.{SEQUENCES_SUFFIX}"


def load_sequences(path: str | Path, rows: int, bands: int) -> np.ndarray:
    """Reads a split's sequences as float32 (rows, frames, bands); validates shape and values."""
    path = Path(path)
    rerun = "rerun the features stage with --config.data.sequences=True to rebuild it"
    if not path.is_file():
        raise DatasetError(f"{path}: frame sequences not found (the model needs them); {rerun}.")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({e}); {rerun}.") from e
    if x.ndim != 3 or x.shape[0] != rows or x.shape[2] != bands:
        raise DatasetError(
            f"{path}: sequences of shape {x.shape}, expected ({rows}, frames, {bands}) to match "
            f"the split's {rows} parquet rows; {rerun}."
        )
    x = x.astype(np.float32)
    bad = ~np.isfinite(x).all(axis=(1, 2))
    if bad.any():
        raise DatasetError(f"{path}: non-finite values in rows {np.flatnonzero(bad)[:10].tolist()}"
                           f"; {rerun}.")
    return x


def load_inputs(directory: str | Path, split: str, labels: Sequence[str],
                inputs: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """A split's model inputs and label ids: inputs "clip" gives the parquet features (N, 270),
    "sequence" the frame sequences (N, frames, bands) stored beside them."""
    path = Path(directory) / f"{split}.parquet"
    x, y = load_split(path, labels)
    if inputs == "sequence":
        return load_sequences(sequence_path(directory, split), len(y), len(SEQUENCE_NAMES)), y
    if inputs != "clip":
        raise ValueError(f"inputs={inputs!r}; valid: 'clip', 'sequence'")
    return x, y
