"""Speaker-independent splits, the feature scaler and the Parquet schema in and out."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser_jax.corpora import Clip
from ser_jax.features import FEATURE_NAMES, SEQUENCE_NAMES
from ser_jax.files import write_bytes_atomic, write_json_atomic

SPLITS = ("train", "val", "test")
META_COLUMNS = ("label", "speaker", "corpus", "path", "augmentation")
LABELS_FILE = "labels.json"
SEQUENCES_SUFFIX = "sequences.npy"  # {split}.sequences.npy: standardized log-mel frames
SEQUENCE_SCALER_FILE = "sequence_scaler.json"


class DatasetError(ValueError):
    """Bad split request or bad feature file; the message names the file/value and what to do."""


# --------------------------------------------------------------------------- splitting


def split_clips(
    clips: Sequence[Clip],
    *,
    mode: str = "speaker",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    val_speakers: Sequence[str] = (),
    test_speakers: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, list[int]]:
    """Splits clips into train/val/test index lists (sorted; every index in exactly one split).

    mode "speaker": no speaker in two splits; speakers are assigned greedily (largest first, ties
    in seeded random order) to the split whose per-class deficit they fill best, after giving
    each split with a positive fraction one speaker. An explicit speaker list for a split wins
    over that split's fraction; the other split still uses its fraction. mode "file": per-class
    stratified split of files, ignoring speakers.
    """
    if not clips:
        raise DatasetError("Cannot split an empty clip list: no audio clips were found or loaded.")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"{name}={fraction} must be in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "data; keep their sum below 1."
        )
    rng = np.random.default_rng(seed)
    if mode == "speaker":
        splits = _split_by_speaker(
            clips, val_fraction, test_fraction, tuple(val_speakers), tuple(test_speakers), rng
        )
    elif mode == "file":
        if val_speakers or test_speakers:
            raise DatasetError(
                "val_speakers/test_speakers only apply to mode='speaker'; "
                "clear them or switch the split mode to 'speaker'."
            )
        splits = _split_by_file(clips, val_fraction, test_fraction, rng)
    else:
        raise DatasetError(f"Unknown split mode {mode!r}; use 'speaker' or 'file'.")
    return {name: sorted(indices) for name, indices in splits.items()}


def _split_by_speaker(
    clips: Sequence[Clip],
    val_fraction: float,
    test_fraction: float,
    val_speakers: tuple[str, ...],
    test_speakers: tuple[str, ...],
    rng: np.random.Generator,
) -> dict[str, list[int]]:
    classes = sorted({c.emotion for c in clips})
    class_index = {name: i for i, name in enumerate(classes)}
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_speaker[clip.speaker].append(i)
    speakers = sorted(by_speaker)
    counts = {s: np.zeros(len(classes)) for s in speakers}
    for s, indices in by_speaker.items():
        for i in indices:
            counts[s][class_index[clips[i].emotion]] += 1

    explicit = {"val": val_speakers, "test": test_speakers}
    _check_explicit_speakers(explicit, by_speaker)
    assignment: dict[str, str] = {}
    for name, listed in explicit.items():
        assignment.update(dict.fromkeys(listed, name))

    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                 "test": test_fraction}
    open_splits = [n for n in SPLITS if fractions[n] > 0 and not explicit.get(n)]
    free = [s for s in speakers if s not in assignment]
    if not free:
        raise DatasetError(
            "The explicit val/test speaker lists take every speaker; leave at least one speaker "
            f"for training (speakers: {', '.join(speakers)})."
        )
    if len(free) < len(open_splits):
        raise DatasetError(
            f"A speaker-independent split needs one speaker per split ({', '.join(open_splits)}) "
            f"but only {len(free)} speaker(s) are left to assign ({', '.join(free) or 'none'}) of "
            f"{len(speakers)} in total. Use fewer splits (test_fraction=0), add speakers, pass "
            "explicit val/test speaker lists, or use split mode 'file'."
        )

    filled = {n: np.zeros(len(classes)) for n in SPLITS}
    for s, name in assignment.items():
        filled[name] += counts[s]
    # Per-class clip targets; an explicit split's target is what it already holds.
    totals = sum(counts.values())
    target = {n: filled[n] if explicit[n] else fractions[n] * totals for n in ("val", "test")}
    target["train"] = np.maximum(totals - target["val"] - target["test"], 0.0)
    # Largest speakers first (better packing); ties in seeded random order.
    order = [free[i] for i in rng.permutation(len(free))]
    order.sort(key=lambda s: -counts[s].sum())

    # Seed every open split with one speaker: the one covering the most classes whose size is
    # closest to the split's target size (the smallest split first, so it gets the best fit).
    for name in sorted(open_splits, key=lambda n: fractions[n]):
        size = target[name].sum()
        best = min(
            order,
            key=lambda s: (-np.count_nonzero(counts[s]), abs(counts[s].sum() - size)),
        )
        order.remove(best)
        assignment[best] = name
        filled[name] += counts[best]

    # Greedy: each speaker goes to the open split with the largest deficit in its classes.
    for s in order:
        deficits = [float(counts[s] @ (target[n] - filled[n])) for n in open_splits]
        name = open_splits[int(np.argmax(deficits))]
        assignment[s] = name
        filled[name] += counts[s]

    splits = {n: [] for n in SPLITS}
    for s, name in assignment.items():
        splits[name].extend(by_speaker[s])
    return splits


def _check_explicit_speakers(
    explicit: dict[str, tuple[str, ...]], by_speaker: dict[str, list[int]]
) -> None:
    valid = ", ".join(sorted(by_speaker))
    for name, listed in explicit.items():
        unknown = [s for s in listed if s not in by_speaker]
        if unknown:
            raise DatasetError(
                f"Unknown {name}_speakers {', '.join(unknown)}; speaker ids are "
                f"'<corpus>_<id>', valid ones here: {valid}."
            )
    both = sorted(set(explicit["val"]) & set(explicit["test"]))
    if both:
        raise DatasetError(
            f"Speaker(s) {', '.join(both)} listed in both val_speakers and test_speakers; "
            "list each speaker in one split only."
        )


def _split_by_file(
    clips: Sequence[Clip], val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> dict[str, list[int]]:
    fractions = {"val": val_fraction, "test": test_fraction}
    wanted = [n for n in ("val", "test") if fractions[n] > 0]
    if len(clips) < 1 + len(wanted):
        raise DatasetError(
            f"Only {len(clips)} clip(s): not enough for train plus {' and '.join(wanted)}; "
            "add clips or set the val/test fractions to 0."
        )
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_class[clip.emotion].append(i)
    classes = sorted(by_class)
    shuffled = {c: [by_class[c][j] for j in rng.permutation(len(by_class[c]))] for c in classes}

    # Per-class quotas: floors of the exact shares, then the overall total (at least one clip for
    # a positive fraction) is reached by giving the leftovers to the largest remainders.
    quotas = {n: dict.fromkeys(classes, 0) for n in wanted}
    for name in wanted:
        exact = {c: fractions[name] * len(by_class[c]) for c in classes}
        total = max(1, round(fractions[name] * len(clips)))
        for c in classes:
            quotas[name][c] = int(np.floor(exact[c]))
        tied = [classes[i] for i in rng.permutation(len(classes))]  # ties in seeded order
        by_remainder = sorted(tied, key=lambda c: exact[c] - quotas[name][c], reverse=True)
        for c in by_remainder:
            if sum(quotas[name].values()) >= total:
                break
            quotas[name][c] += 1

    splits = {n: [] for n in SPLITS}
    for c in classes:
        rest = shuffled[c]
        for name in wanted:
            # Keep at least one clip of each class for training.
            take = min(quotas[name][c], max(len(rest) - 1, 0))
            splits[name].extend(rest[:take])
            rest = rest[take:]
        splits["train"].extend(rest)
    for name in wanted:  # a split that came out empty takes a clip from the largest class
        if not splits[name]:
            donor = max(classes, key=lambda c: sum(clips[i].emotion == c for i in splits["train"]))
            moved = next(i for i in splits["train"] if clips[i].emotion == donor)
            splits["train"].remove(moved)
            splits[name].append(moved)
    return splits


# --------------------------------------------------------------------------- scaling


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
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # Columns constant up to float32 rounding would blow up noise: leave them unscaled.
        constant = (std == 0) | (std <= 1e-6 * np.abs(mean))
        return cls(list(columns), mean, np.where(constant, 1.0, std))

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
        data = _read_json(path, "scaler")
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


# --------------------------------------------------------------------------- files


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
        raise DatasetError(
            f"{path}: non-finite features in {int(bad.any(axis=1).sum())} of {len(x)} rows, "
            f"columns: {detail}{more}. Check the listed clips' audio (silent/corrupt) and {rerun}."
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


def read_labels(directory: str | Path) -> list[str]:
    """Reads labels.json {"labels": [...]} from a features directory."""
    path = Path(directory) / LABELS_FILE
    data = _read_json(path, "labels")
    labels = data.get("labels") if isinstance(data, dict) else None
    if (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
            or not all(isinstance(x, str) for x in labels)):
        raise DatasetError(
            f"{path}: expected {{\"labels\": [unique strings]}}, got {data!r:.200}; "
            "rerun the features stage to rewrite it."
        )
    return labels


def _read_json(path: str | Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: {what} file not found; run the features stage first.") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(
            f"{path}: unreadable {what} file ({e}); rerun the features stage to rewrite it."
        ) from e
