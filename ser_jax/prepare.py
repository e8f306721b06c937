"""The `features` stage: corpora -> audio -> split -> augment -> features -> standardized parquet.

Everything is built in a temp folder beside the output and renamed into place, so an interrupted
run leaves either the previous output or none. A run whose inputs (audio files' paths, sizes and
mtimes), data config, seed and extractor version match the output's manifest reuses it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from ser_jax import audio, augment, corpora, dataset, features, synthetic
from ser_jax.files import atomic_directory, write_json_atomic

FORMAT_VERSION = 1  # bump when the layout or meaning of the written files changes
OUTPUT_FILES = ("train.parquet", "val.parquet", "test.parquet", "labels.json", "scaler.json",
                "manifest.json")
SYNTHETIC_SEED = 0  # the demo corpus is fixed data; config.seed drives split and augmentation
MAX_EXAMPLES = 20


def prepare_features(config: ml_collections.ConfigDict, out_dir: str | Path) -> Path:
    """Runs the features stage into out_dir (see the module docstring); returns out_dir."""
    out_dir = Path(out_dir)
    data = config.data
    started = time.perf_counter()
    timings: dict[str, float] = {}

    if out_dir.exists() and not _replaceable(out_dir):
        raise dataset.DatasetError(
            f"{out_dir} exists and holds files other than a features stage's output; "
            "choose an empty or new folder."
        )
    spec, is_synthetic = _corpus_spec(data, out_dir)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    fingerprint = _fingerprint(config, scan)
    if _reusable(out_dir, fingerprint):
        logging.info("features: reusing %s (same inputs, data config and extractor)", out_dir)
        return out_dir
    recipe = _recipe(data.augment.recipe)
    if not scan.clips:
        raise dataset.DatasetError(
            f"No usable audio clips in {spec!r} ({len(scan.skipped)} skipped: "
            f"{_examples(scan.skipped, 3)}); check the corpus paths and names."
        )
    timings["scan_s"] = time.perf_counter() - started

    tick = time.perf_counter()
    waves, loaded, rejects = audio.load_clips(
        [c.path for c in scan.clips], sample_rate=data.sample_rate, offset=data.offset,
        duration=data.duration,
    )
    clips = [scan.clips[i] for i in loaded]
    if not clips:
        raise dataset.DatasetError(
            f"None of the {len(scan.clips)} clips could be loaded: {_examples(rejects, 3)}."
        )
    timings["load_audio_s"] = time.perf_counter() - tick

    splits = dataset.split_clips(
        clips, mode=data.split.mode, val_fraction=data.split.val_fraction,
        test_fraction=data.split.test_fraction, val_speakers=_names(data.split.val_speakers),
        test_speakers=_names(data.split.test_speakers), seed=config.seed,
    )
    tick = time.perf_counter()
    parts = _extract_all(waves, splits, recipe, config, rejects, clips)
    timings["extract_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    train_x = np.concatenate([x for split, _, _, x in parts if split == "train"])
    if len(train_x) == 0:
        raise dataset.DatasetError("No training rows left after feature extraction.")
    scaler = dataset.Scaler.fit(train_x)
    frames = {name: [] for name in dataset.SPLITS}
    for split, kind, indices, x in parts:
        frames[split].append(dataset.make_frame(scaler.transform(x), [clips[i] for i in indices],
                                                kind))
    labels = [*corpora.EMOTIONS, *(["boredom"] if data.keep_boredom else [])]
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "extractor_version": features.EXTRACTOR_VERSION,
        "synthetic": is_synthetic,
        "corpora": spec,
        "seed": config.seed,
        "data": data.to_dict(),
        "labels": labels,
        "counts": _counts(frames, labels),
        "rejects": {"count": len(rejects), "items": [{"path": p, "reason": r}
                                                     for p, r in rejects]},
        "skipped": {"count": len(scan.skipped), "examples": [
            {"path": p, "reason": r} for p, r in scan.skipped[:MAX_EXAMPLES]]},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timings": timings,
    }
    _write_output(out_dir, frames, labels, scaler, manifest, started)
    _print_summary(out_dir, manifest)
    return out_dir


def _corpus_spec(data: ml_collections.ConfigDict, out_dir: Path) -> tuple[str, bool]:
    """The corpora spec to scan; an empty one means the synthetic demo corpus (written here)."""
    spec = data.corpora.strip()
    if spec:
        return spec, False
    root = synthetic.write_synthetic_corpus(
        out_dir.absolute().parent / "synthetic_corpus", speakers=data.synthetic.speakers,
        clips_per_class=data.synthetic.clips_per_class, sample_rate=data.sample_rate,
        seed=SYNTHETIC_SEED,
    )
    logging.info("features: no corpora configured, using the synthetic demo corpus in %s", root)
    return f"synthetic:{root}", True


def _fingerprint(config: ml_collections.ConfigDict, scan: corpora.CorpusScan) -> str:
    files = []
    for path in sorted({c.path for c in scan.clips} | {p for p, _ in scan.skipped}):
        try:
            st = os.stat(path)
            files.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((path, -1, -1))
    record = {"format": FORMAT_VERSION, "extractor": features.EXTRACTOR_VERSION,
              "seed": config.seed, "data": config.data.to_dict(), "files": files}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _reusable(out_dir: Path, fingerprint: str) -> bool:
    if not all((out_dir / name).is_file() for name in OUTPUT_FILES):
        return False
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint


def _recipe(spec: str) -> list[str]:
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in augment.AUGMENTATIONS]
    if unknown or not kinds:
        raise dataset.DatasetError(
            f"Bad data.augment.recipe {spec!r}: unknown {', '.join(unknown) or '(empty)'}; use a "
            f"comma-separated list of {', '.join(augment.AUGMENTATIONS)}."
        )
    return kinds


def _names(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def _extract_all(
    waves: np.ndarray,
    splits: dict[str, list[int]],
    recipe: Sequence[str],
    config: ml_collections.ConfigDict,
    rejects: list[tuple[str, str]],
    clips: Sequence[corpora.Clip],
) -> list[tuple[str, str, list[int], np.ndarray]]:
    """(split, augmentation, clip indices, raw features) per recipe entry (train) or split.

    Rows with non-finite features are dropped and recorded in `rejects`.
    """
    jobs = [("train", kind) for kind in recipe] + [("val", "none"), ("test", "none")]
    # One fixed batch shape for every call, so the extractor compiles once.
    batch = max(1, min(config.data.batch_size, len(waves)))
    seed_key = jax.random.key(config.seed)
    parts = []
    total = sum(len(splits[split]) for split, _ in jobs)
    with tqdm(total=total, desc="features", unit="clip", file=sys.stderr) as bar:
        for position, (split, kind) in enumerate(jobs):
            indices = splits[split]
            x = _extract(waves, indices, kind, jax.random.fold_in(seed_key, position), batch,
                         config.data, bar)
            finite = np.isfinite(x).all(axis=1)
            for i in np.flatnonzero(~finite):
                rejects.append((clips[indices[i]].path, f"non-finite features ({kind}, {split})"))
            parts.append((split, kind, [i for i, ok in zip(indices, finite, strict=True) if ok],
                          x[finite]))
    return parts


def _extract(
    waves: np.ndarray,
    indices: Sequence[int],
    kind: str,
    key: jax.Array,
    batch: int,
    data: ml_collections.ConfigDict,
    bar: tqdm,
) -> np.ndarray:
    """Augments and extracts waves[indices] in padded batches; returns (len(indices), 270)."""
    out = [np.zeros((0, len(features.FEATURE_NAMES)), np.float32)]
    chunk = np.zeros((batch, waves.shape[1]), np.float32)
    for b, start in enumerate(range(0, len(indices), batch)):
        rows = indices[start : start + batch]
        chunk[: len(rows)] = waves[rows]
        chunk[len(rows) :] = 0.0
        x = augment.augment(
            jnp.asarray(chunk), kind, jax.random.fold_in(key, b), sample_rate=data.sample_rate,
            noise_sigma=data.augment.noise_sigma, pitch_semitones=data.augment.pitch_semitones,
            stretch_rate=data.augment.stretch_rate, shift_seconds=data.augment.shift_seconds,
        )
        out.append(np.asarray(features.extract_features(x, data.sample_rate))[: len(rows)])
        bar.update(len(rows))
    return np.concatenate(out)


def _counts(frames: dict[str, list[pd.DataFrame]], labels: Sequence[str]) -> dict:
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


def _write_output(out_dir: Path, frames: dict[str, list[pd.DataFrame]], labels: list[str],
                  scaler: dataset.Scaler, manifest: dict, started: float) -> None:
    """Writes all files into a temp folder beside out_dir, then swaps it into place."""
    tick = time.perf_counter()
    with atomic_directory(out_dir) as staging:
        for split, parts in frames.items():
            dataset.write_parquet_atomic(pd.concat(parts, ignore_index=True),
                                         staging / f"{split}.parquet")
        write_json_atomic(staging / "labels.json", {"labels": labels})
        scaler.save(staging / "scaler.json")
        manifest["timings"]["write_s"] = time.perf_counter() - tick
        manifest["timings"]["total_s"] = time.perf_counter() - started
        write_json_atomic(staging / "manifest.json", manifest)


def _replaceable(out_dir: Path) -> bool:
    """True for a folder that is empty or holds only a features stage's files."""
    return out_dir.is_dir() and all(p.name in OUTPUT_FILES for p in out_dir.iterdir())


def _examples(items: Sequence[tuple[str, str]], limit: int) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _print_summary(out_dir: Path, manifest: dict) -> None:
    counts = manifest["counts"]
    header = f"{'class':<10}" + "".join(f"{s:>8}" for s in dataset.SPLITS)
    lines = [f"features: wrote {out_dir}" + (" (synthetic demo corpus)"
                                             if manifest["synthetic"] else ""), header]
    for label in manifest["labels"]:
        lines.append(f"{label:<10}" + "".join(f"{counts['clips'][s][label]:>8}"
                                              for s in dataset.SPLITS))
    for name, values in (
        ("clips", [sum(counts["clips"][s].values()) for s in dataset.SPLITS]),
        ("rows", [counts["rows"][s] for s in dataset.SPLITS]),
        ("speakers", [len(counts["speakers"][s]) for s in dataset.SPLITS]),
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
