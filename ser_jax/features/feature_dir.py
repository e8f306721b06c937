"""A features folder on disk: the features stage's output (train/val/test parquet, optional
frame sequences, labels.json, scalers, manifest.json) and the clip-feature cache, written
atomically and checked for reuse."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging

from ser_jax.core.files import atomic_directory, write_json_atomic
from ser_jax.data import corpora, store
from ser_jax.data.errors import DatasetError
from ser_jax.data.labels import write_labels
from ser_jax.data.splits import SPLITS
from ser_jax.features import extractor as features
from ser_jax.features.scaler import SCALER_FILE, SEQUENCE_SCALER_FILE, Scaler

FORMAT_VERSION = 2  # bump when the layout or meaning of the written files changes
# 2: augmentation keys per clip (seed, kind, speaker/file name), shared with the clip cache
OUTPUT_FILES = ("train.parquet", "val.parquet", "test.parquet", "labels.json", "scaler.json",
                "manifest.json")
CLIP_FEATURES_VERSION = 2  # bump when clip_features' cache layout or keys change


@dataclasses.dataclass
class ClipFeatures:
    """Raw (unscaled) features of every loaded clip under each augmentation kind.

    `features[kind]` is (len(clips), 270) float32 in clip order; rows may be non-finite (callers
    drop them). `sequences[kind]` holds the raw log-mel sequences (len(clips), frames, 128) when
    config.data.sequences asks for them, else nothing. `rejects` lists the audio that could not
    be loaded.
    """

    clips: list[corpora.Clip]
    features: dict[str, np.ndarray]
    sequences: dict[str, np.ndarray]
    rejects: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    corpus_spec: str
    synthetic: bool
    fingerprint: str


@dataclasses.dataclass
class Sequences:
    """Standardized frame sequences per split (rows in parquet order) and their band scaler."""

    splits: dict[str, np.ndarray]
    scaler: Scaler


def read_clip_cache(cache_dir: Path, fingerprint: str,
                     with_sequences: bool) -> ClipFeatures | None:
    """The cached clips and every readable kind; None when the cache is absent or stale."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        if manifest.get("fingerprint") != fingerprint:
            return None
        clips = [corpora.Clip(**c) for c in manifest["clips"]]
        result = ClipFeatures(clips, {}, {}, [tuple(r) for r in manifest["rejects"]],
                              [tuple(s) for s in manifest["skipped"]], manifest["corpora"],
                              manifest["synthetic"], fingerprint)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    paths = [c.path for c in clips]
    checksums = manifest.get("checksums", {})
    for kind in manifest.get("kinds", []):
        names = [f"{kind}.parquet"] + ([f"{kind}.{store.SEQUENCES_SUFFIX}"]
                                       if with_sequences else [])
        try:
            changed = [name for name in names
                       if name in checksums and _sha256(cache_dir / name) != checksums[name]]
        except OSError:
            changed = names
        if changed:
            logging.warning("features: cached %s in %s changed since it was written (checksum "
                            "differs); extracting it again", ", ".join(changed), cache_dir)
            continue
        try:
            frame = pd.read_parquet(cache_dir / f"{kind}.parquet")
            if frame["path"].tolist() != paths:
                continue
            x = frame[list(features.FEATURE_NAMES)].to_numpy(np.float32)
            if with_sequences:
                seq = np.load(cache_dir / f"{kind}.{store.SEQUENCES_SUFFIX}")
                if seq.shape[:1] + seq.shape[2:] != (len(paths), len(features.SEQUENCE_NAMES)):
                    continue
                result.sequences[kind] = seq.astype(np.float32)
            result.features[kind] = x
        except (OSError, ValueError, KeyError):
            logging.warning("features: cached %s rows unreadable; extracting them again", kind)
    return result


def write_clip_cache(cache_dir: Path, result: ClipFeatures, seconds: float) -> None:
    """Writes every kind's rows and the manifest into a fresh folder swapped into place."""
    manifest = {
        "format_version": CLIP_FEATURES_VERSION,
        "fingerprint": result.fingerprint,
        "extractor_version": features.EXTRACTOR_VERSION,
        "corpora": result.corpus_spec,
        "synthetic": result.synthetic,
        "kinds": sorted(result.features),
        "clips": [dataclasses.asdict(c) for c in result.clips],
        "rejects": [list(r) for r in result.rejects],
        "skipped": [list(s) for s in result.skipped],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
    }
    with atomic_directory(cache_dir) as staging:
        for kind, x in result.features.items():
            store.write_parquet_atomic(store.make_frame(x, result.clips, kind),
                                         staging / f"{kind}.parquet")
        for kind, seq in result.sequences.items():  # raw dB values, float16 (0.03 dB steps)
            store.write_sequences_atomic(seq, staging / f"{kind}.{store.SEQUENCES_SUFFIX}")
        manifest["checksums"] = file_checksums(staging)
        write_json_atomic(staging / "manifest.json", manifest)


def file_checksums(directory: Path) -> dict[str, str]:
    """The sha256 of every file in ``directory`` except manifest.json, by name."""
    return {path.name: _sha256(path) for path in sorted(directory.iterdir())
            if path.is_file() and path.name != "manifest.json"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_reuse(out_dir: Path, fingerprint: str, with_sequences: bool) -> str | None:
    """None when out_dir holds a features output of these inputs whose files are intact;
    otherwise why not: "" when there is none of these inputs (absent, stale, other settings),
    else what is damaged (a file missing, changed since written, unreadable, with row counts
    other than the manifest's or non-finite values)."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
        return ""
    needed = list(OUTPUT_FILES)
    if with_sequences:
        needed += [SEQUENCE_SCALER_FILE, *(store.sequence_path("", s).name for s in SPLITS)]
    missing = [name for name in needed if not (out_dir / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    recorded = manifest.get("checksums", {})
    for name in needed:
        if name in recorded and _sha256(out_dir / name) != recorded[name]:
            return f"{name} changed since it was written (checksum differs from manifest.json)"
    labels = manifest.get("labels", [])
    for split in SPLITS:
        path = out_dir / f"{split}.parquet"
        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException) as error:
            return f"{path.name} is not a readable Parquet file ({error})"
        expected = manifest.get("counts", {}).get("rows", {}).get(split)
        if expected is not None and rows != expected:
            return f"{path.name} has {rows} rows, manifest.json says {expected}"
        if rows:
            try:
                store.load_split(path, labels)  # schema, numeric and finite values, labels
            except DatasetError as error:
                return str(error).split(";")[0].split(". ")[0]
    return None


def split_counts(frames: dict[str, list[pd.DataFrame]], labels: Sequence[str]) -> dict:
    """Clips per class, rows and speakers per split (a clip counts once, however augmented)."""
    counts: dict = {"clips": {}, "rows": {}, "speakers": {}}
    for split, parts in frames.items():
        meta = pd.concat([p[["label", "speaker", "path"]] for p in parts])
        clips = meta.drop_duplicates("path")
        per_class = Counter(clips["label"])
        counts["clips"][split] = {label: per_class.get(label, 0) for label in labels}
        counts["rows"][split] = len(meta)
        counts["speakers"][split] = sorted(set(clips["speaker"]))
    return counts


def write_feature_dir(out_dir: Path, frames: dict[str, list[pd.DataFrame]], labels: list[str],
                      scaler: Scaler, manifest: dict, started: float,
                      sequences: Sequences | None = None) -> None:
    """Writes the OUTPUT_FILES (and sequences, when given) into a temp folder beside out_dir,
    then swaps it into place.

    Adds write_s and total_s (since `started`, a perf_counter time) to manifest["timings"].
    """
    tick = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        for split, parts in frames.items():
            store.write_parquet_atomic(pd.concat(parts, ignore_index=True),
                                         staging / f"{split}.parquet")
        if sequences is not None:
            for split, x in sequences.splits.items():
                store.write_sequences_atomic(x, store.sequence_path(staging, split))
            sequences.scaler.save(staging / SEQUENCE_SCALER_FILE)
        write_labels(staging, labels)
        scaler.save(staging / SCALER_FILE)
        manifest["timings"]["write_s"] = time.perf_counter() - tick
        manifest["timings"]["total_s"] = time.perf_counter() - started
        manifest["checksums"] = file_checksums(staging)
        write_json_atomic(staging / "manifest.json", manifest)


def replaceable(out_dir: Path) -> bool:
    """True for a folder that is empty or holds only a features stage's files."""
    ours = {*OUTPUT_FILES, SEQUENCE_SCALER_FILE,
            *(store.sequence_path("", split).name for split in SPLITS)}
    return out_dir.is_dir() and all(p.name in ours for p in out_dir.iterdir())


def print_summary(out_dir: Path, manifest: dict) -> None:
    counts = manifest["counts"]
    header = f"{'class':<10}" + "".join(f"{s:>8}" for s in SPLITS)
    lines = [f"features: wrote {out_dir}" + (" (synthetic demo corpus)"
                                             if manifest["synthetic"] else ""), header]
    for label in manifest["labels"]:
        lines.append(f"{label:<10}" + "".join(f"{counts['clips'][s][label]:>8}"
                                              for s in SPLITS))
    for name, values in (
        ("clips", [sum(counts["clips"][s].values()) for s in SPLITS]),
        ("rows", [counts["rows"][s] for s in SPLITS]),
        ("speakers", [len(counts["speakers"][s]) for s in SPLITS]),
    ):
        lines.append(f"{name:<10}" + "".join(f"{v:>8}" for v in values))
    quality = manifest.get("quality", {})
    flagged = quality.get("flagged", {"count": 0, "items": []})
    for title, key, items in (
        ("rejected (unusable audio)", "items", manifest["rejects"]),
        ("flagged (kept: clipped or short audio)", "items", flagged),
        ("skipped (unrecognized names)", "examples", manifest["skipped"]),
    ):
        lines.append(f"{title}: {items['count']}")
        lines += [f"  {e['path']}: {e['reason']}" for e in items[key][:5]]
        if items["count"] > 5:
            lines.append(f"  ... {items['count'] - 5} more in manifest.json")
    lines += [f"warning: {warning}" for warning in quality.get("warnings", [])]
    print("\n".join(lines), flush=True)

