"""Sharded features stage: which shard a clip belongs to, per-column moments merged with Chan's
parallel formula, and a shard's files on disk.

Shard K of N holds the clips whose path hashes (SHA-256, stable across processes and machines)
to K mod N. Every shard splits the whole manifest (so speaker splits agree), extracts only its
clips, and writes its raw rows plus the scalers' sufficient statistics; the merge step
(``pipeline.merge_features``) standardizes them into the single-process stage's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ser_jax.core.files import atomic_directory, write_json_atomic
from ser_jax.data import store
from ser_jax.data.errors import DatasetError
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.features.scaler import Scaler

SHARD_FORMAT_VERSION = 1
ROWS_FILE = "rows.parquet"
SEQUENCES_FILE = "sequences.npy"
SHARD_FILE = "shard.json"  # written last: a shard folder without it is incomplete


def _digest(path: str) -> bytes:
    return hashlib.sha256(path.encode()).digest()


def shard_of(path: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) of a clip path: a stable hash, the same in every process."""
    return int.from_bytes(_digest(path)[:8], "big") % num_shards


def clip_id(path: str) -> int:
    """A stable 31-bit number per clip path: its augmentation key does not depend on which other
    clips share its batch or its shard."""
    return int.from_bytes(_digest(path)[8:12], "big") & 0x7FFFFFFF


@dataclasses.dataclass
class Moments:
    """Per-column count, mean and M2 (sum of squared deviations from the mean), float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, columns: int) -> Moments:
        """Moments of x (..., columns); every leading index is one sample."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, columns)
        if len(x) == 0:
            return cls(0, np.zeros(columns), np.zeros(columns))
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        """Chan, Golub & LeVeque's pairwise update (no sums of squares: no cancellation)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return Moments(count, mean, m2)

    def scaler(self, columns: Sequence[str]) -> Scaler:
        """The standardization these moments give (population std, as Scaler.fit)."""
        if self.count == 0:
            raise DatasetError("No training rows left after feature extraction.")
        return Scaler.from_std(columns, self.mean, np.sqrt(self.m2 / self.count))

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, record: dict) -> Moments:
        return cls(int(record["count"]), np.asarray(record["mean"], np.float64),
                   np.asarray(record["m2"], np.float64))


@dataclasses.dataclass
class ShardRows:
    """One shard's extraction: for each job (split, augmentation) the manifest indices of its
    finite rows (ascending), their raw features and raw sequences (or None)."""

    shard: int
    num_shards: int
    fingerprint: str
    jobs: list[tuple[str, str]]
    indices: list[np.ndarray]
    features: list[np.ndarray]
    sequences: list[np.ndarray] | None
    load_rejects: list[tuple[int, str, str]]  # (manifest index, path, reason)
    nonfinite: list[tuple[int, int]]  # (job, manifest index)
    moments: Moments  # of the training jobs' raw features
    sequence_moments: Moments | None
    flagged: list[tuple[str, str]]  # (path, reason) of clips kept with a quality flag

    @staticmethod
    def folder(out_dir: Path, shard: int, num_shards: int) -> Path:
        """Where shard K of N of the features folder out_dir is written."""
        return Path(out_dir).parent / f"{Path(out_dir).name}.shards" / (
            f"{shard:05d}-of-{num_shards:05d}")

    def write(self, out_dir: Path) -> Path:
        """Writes the shard beside out_dir (atomically: whole or absent); returns its folder."""
        target = self.folder(out_dir, self.shard, self.num_shards)
        with atomic_directory(target) as staging:
            frame = pd.DataFrame(np.concatenate(self.features) if self.features else
                                 np.zeros((0, len(FEATURE_NAMES)), np.float32),
                                 columns=list(FEATURE_NAMES))
            frame.insert(0, "clip", np.concatenate(self.indices).astype(np.int64))
            frame.insert(0, "job", np.concatenate(
                [np.full(len(i), j, np.int32) for j, i in enumerate(self.indices)]))
            store.write_parquet_atomic(frame, staging / ROWS_FILE)
            if self.sequences is not None:
                np.save(staging / SEQUENCES_FILE, np.concatenate(self.sequences))
            write_json_atomic(staging / SHARD_FILE, {
                "format_version": SHARD_FORMAT_VERSION, "shard": self.shard,
                "num_shards": self.num_shards, "fingerprint": self.fingerprint,
                "jobs": [list(job) for job in self.jobs],
                "load_rejects": [list(r) for r in self.load_rejects],
                "nonfinite": [list(r) for r in self.nonfinite],
                "flagged": [list(r) for r in self.flagged],
                "moments": self.moments.to_json(),
                "sequence_moments": (None if self.sequence_moments is None
                                     else self.sequence_moments.to_json()),
            })
        return target

    @classmethod
    def read(cls, out_dir: Path, shard: int, num_shards: int, fingerprint: str) -> ShardRows:
        """Reads shard K of N; DatasetError naming the folder when it is missing or stale."""
        folder = cls.folder(out_dir, shard, num_shards)
        rerun = (f"run `--stage=features --config.data.num_shards={num_shards} "
                 f"--config.data.shard={shard}` (same config) first")
        try:
            meta = json.loads((folder / SHARD_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{folder}: shard {shard} of {num_shards} is missing or "
                               f"incomplete ({e}); {rerun}.") from e
        if meta.get("fingerprint") != fingerprint or meta.get(
                "format_version") != SHARD_FORMAT_VERSION:
            raise DatasetError(f"{folder}: written for other inputs or config than this merge "
                               f"(fingerprint differs); {rerun}.")
        table = pq.read_table(folder / ROWS_FILE)
        job = table.column("job").to_numpy()
        clip = table.column("clip").to_numpy()
        x = np.column_stack([table.column(c).to_numpy() for c in FEATURE_NAMES]).astype(
            np.float32) if table.num_rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        jobs = [tuple(j) for j in meta["jobs"]]
        seq = np.load(folder / SEQUENCES_FILE) if (folder / SEQUENCES_FILE).is_file() else None
        picks = [job == j for j in range(len(jobs))]
        seq_moments = meta["sequence_moments"]
        return cls(shard, num_shards, fingerprint, jobs, [clip[p] for p in picks],
                   [x[p] for p in picks], None if seq is None else [seq[p] for p in picks],
                   [(int(i), str(p), str(r)) for i, p, r in meta["load_rejects"]],
                   [(int(j), int(i)) for j, i in meta["nonfinite"]],
                   Moments.from_json(meta["moments"]),
                   None if seq_moments is None else Moments.from_json(seq_moments),
                   [(str(p), str(r)) for p, r in meta["flagged"]])
