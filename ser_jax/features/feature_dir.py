"""A features folder on disk: the features stage's output (train/val/test parquet, optional
frame sequences, labels.json, scalers, manifest.json) and the clip-feature cache, written
atomically and checked for reuse."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from absl import logging

from ser_jax.core.files import atomic_directory, write_json_atomic
from ser_jax.data import corpora, store
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
    for kind in manifest.get("kinds", []):
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
        write_json_atomic(staging / "manifest.json", manifest)


def reusable(out_dir: Path, fingerprint: str, with_sequences: bool) -> bool:
    needed = [out_dir / name for name in OUTPUT_FILES]
    if with_sequences:
        needed += [out_dir / SEQUENCE_SCALER_FILE,
                   *(store.sequence_path(out_dir, split) for split in SPLITS)]
    if not all(path.is_file() for path in needed):
        return False
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint


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
    for title, key, items in (
        ("rejected (unusable audio)", "items", manifest["rejects"]),
        ("skipped (unrecognized names)", "examples", manifest["skipped"]),
    ):
        lines.append(f"{title}: {items['count']}")
        lines += [f"  {e['path']}: {e['reason']}" for e in items[key][:5]]
        if items["count"] > 5:
            lines.append(f"  ... {items['count'] - 5} more in manifest.json")
    print("\n".join(lines), flush=True)

