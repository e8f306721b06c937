"""The `features` stage: corpora -> audio -> split -> augment -> features -> standardized parquet.

Everything is built in a temp folder beside the output and renamed into place, so an interrupted
run leaves either the previous output or none. A run whose inputs (audio files' paths, sizes and
mtimes), data config, seed and extractor version match the output's manifest reuses it.

With config.data.sequences the stage also stores each row's log-mel frame sequence (the
temporal model's input) as {split}.sequences.npy beside {split}.parquet, same row order,
standardized per band by sequence_scaler.json (fit on the training rows' frames).

`clip_features` is the same scan -> load -> augment+extract core without the split: the raw
features of every clip under every requested augmentation, cached on disk (the `cv` stage's
input, where each clip is a training clip in some fold).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from ser_jax.core.lists import parse_list
from ser_jax.data import audio, corpora, store, synthetic
from ser_jax.data.errors import DatasetError
from ser_jax.data.labels import label_names
from ser_jax.data.splits import SPLITS, split_clips
from ser_jax.features import augment, feature_dir
from ser_jax.features import extractor as features
from ser_jax.features.feature_dir import ClipFeatures, Sequences
from ser_jax.features.scaler import Scaler

SYNTHETIC_SEED = 0  # the demo corpus is fixed data; config.seed drives split and augmentation
MAX_EXAMPLES = 20


def prepare_features(config: ml_collections.ConfigDict, out_dir: str | Path) -> Path:
    """Runs the features stage into out_dir (see the module docstring); returns out_dir."""
    out_dir = Path(out_dir)
    data = config.data
    started = time.perf_counter()
    timings: dict[str, float] = {}

    if out_dir.exists() and not feature_dir.replaceable(out_dir):
        raise DatasetError(
            f"{out_dir} exists and holds files other than a features stage's output; "
            "choose an empty or new folder."
        )
    spec, is_synthetic = _corpus_spec(data, out_dir.absolute().parent)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    fingerprint = _fingerprint(config, scan)
    damage = feature_dir.verify_reuse(out_dir, fingerprint, data.sequences)
    if damage is None:
        logging.info("features: reusing %s (same inputs, data config and extractor; files "
                     "verified)", out_dir)
        return out_dir
    if damage:  # an output of the same inputs whose files do not hold what it recorded
        logging.warning("features: %s is damaged (%s); rebuilding it", out_dir, damage)
    recipe = parse_recipe(data.augment.recipe)
    _require_clips(scan, spec)
    timings["scan_s"] = time.perf_counter() - started

    tick = time.perf_counter()
    flagged: list[tuple[str, str]] = []
    waves, clips, rejects = _load_audio(scan, data, flagged)
    timings["load_audio_s"] = time.perf_counter() - tick

    splits = split_clips(
        clips, mode=data.split.mode, val_fraction=data.split.val_fraction,
        test_fraction=data.split.test_fraction, val_speakers=parse_list(data.split.val_speakers),
        test_speakers=parse_list(data.split.test_speakers), seed=config.seed,
    )
    class_warnings = check_class_balance(clips, splits, label_names(data),
                                         data.quality.min_class_share)
    tick = time.perf_counter()
    parts = _extract_all(waves, splits, recipe, config, rejects, clips)
    timings["extract_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    frames, scaler, sequences = standardize_parts(parts, clips)
    labels = label_names(data)
    manifest = {
        "format_version": feature_dir.FORMAT_VERSION,
        "fingerprint": fingerprint,
        "extractor_version": features.EXTRACTOR_VERSION,
        "synthetic": is_synthetic,
        "corpora": spec,
        "seed": config.seed,
        "data": data.to_dict(),
        "labels": labels,
        "counts": feature_dir.split_counts(frames, labels),
        "rejects": {"count": len(rejects), "items": [{"path": p, "reason": r}
                                                     for p, r in rejects]},
        "quality": {"gates": dataclasses.asdict(audio.Quality.from_config(data.quality)),
                    "rejected": _reason_counts(rejects), "flagged": {
                        "count": len(flagged), "by_reason": _reason_counts(flagged),
                        "items": [{"path": p, "reason": r} for p, r in flagged]},
                    "warnings": class_warnings},
        "skipped": {"count": len(scan.skipped), "examples": [
            {"path": p, "reason": r} for p, r in scan.skipped[:MAX_EXAMPLES]]},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timings": timings,
    }
    feature_dir.write_feature_dir(out_dir, frames, labels, scaler, manifest, started, sequences)
    feature_dir.print_summary(out_dir, manifest)
    return out_dir


Part = tuple[str, str, list[int], np.ndarray, np.ndarray | None]
"""(split, augmentation, clip indices, raw clip features (n, 270), raw sequences or None)."""


def standardize_parts(parts: Sequence[Part], clips: Sequence[corpora.Clip]
                      ) -> tuple[dict[str, list[pd.DataFrame]], Scaler, Sequences | None]:
    """Fits the scalers on the training parts and standardizes every part.

    Returns each split's parquet frames, the clip-feature scaler and, when the parts carry
    sequences, the standardized sequences with their per-band scaler.
    """
    train_x = [x for split, _, _, x, _ in parts if split == "train"]
    if not train_x or sum(len(x) for x in train_x) == 0:
        raise DatasetError("No training rows left after feature extraction.")
    scaler = Scaler.fit(np.concatenate(train_x))
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for split, kind, indices, x, _ in parts:
        frames[split].append(store.make_frame(scaler.transform(x), [clips[i] for i in indices],
                                                kind))
    if parts[0][4] is None:
        return frames, scaler, None
    sequence_scaler = Scaler.fit(
        np.concatenate([seq for split, _, _, _, seq in parts if split == "train"]),
        columns=features.SEQUENCE_NAMES)
    splits = {name: np.concatenate([sequence_scaler.transform(seq)
                                    for split, _, _, _, seq in parts if split == name])
              for name in SPLITS}
    return frames, scaler, Sequences(splits, sequence_scaler)


def clip_features(
    config: ml_collections.ConfigDict,
    cache_dir: str | Path,
    kinds: Sequence[str],
    corpus_root: str | Path,
) -> ClipFeatures:
    """Features of every clip of config.data's corpora under each of `kinds`, cached in cache_dir.

    Each kind's augmentation key is derived from config.seed and the kind's name only, so a kind's
    rows do not depend on which other kinds are asked for: cached kinds are reused and only the
    missing ones are extracted (the audio is not even read when none is missing). The cache is
    keyed like prepare_features' output (audio files, data config except the split and recipe,
    seed, extractor version) and rewritten atomically. The synthetic demo corpus, used when no
    corpus is configured, is written to corpus_root/synthetic_corpus.
    """
    cache_dir = Path(cache_dir)
    data = config.data
    kinds = list(dict.fromkeys(parse_recipe(",".join(kinds))))
    spec, is_synthetic = _corpus_spec(data, Path(corpus_root))
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    _require_clips(scan, spec)
    fingerprint = _fingerprint(config, scan, data=_clip_features_data(data),
                               purpose=f"clip_features/{feature_dir.CLIP_FEATURES_VERSION}")
    cached = feature_dir.read_clip_cache(cache_dir, fingerprint, data.sequences)
    if cached and all(kind in cached.features for kind in kinds):
        logging.info("features: reusing %s (%s)", cache_dir, ", ".join(kinds))
        return _select_kinds(cached, kinds)

    started = time.perf_counter()
    waves, clips, rejects = _load_audio(scan, data)
    result = cached or ClipFeatures(clips, {}, {}, rejects, scan.skipped, spec, is_synthetic,
                                    fingerprint)
    if [c.path for c in result.clips] != [c.path for c in clips]:  # files changed meanwhile
        result = ClipFeatures(clips, {}, {}, rejects, scan.skipped, spec, is_synthetic,
                              fingerprint)
    missing = [kind for kind in kinds if kind not in result.features]
    logging.info("features: extracting %s for %d clips into %s", ", ".join(missing), len(clips),
                 cache_dir)
    seed_key = jax.random.key(config.seed)
    jobs = [(range(len(clips)), kind, jax.random.fold_in(seed_key, _kind_key(kind)))
            for kind in missing]
    for kind, (x, seq) in zip(missing, _extract_jobs(waves, jobs, data), strict=True):
        result.features[kind] = x
        if seq is not None:
            result.sequences[kind] = seq
    feature_dir.write_clip_cache(cache_dir, result, time.perf_counter() - started)
    return _select_kinds(result, kinds)


def _kind_key(kind: str) -> int:
    """A stable 31-bit number per augmentation name (its key does not depend on list order)."""
    return zlib.crc32(kind.encode()) & 0x7FFFFFFF


def _clip_features_data(data: ml_collections.ConfigDict) -> dict:
    """The data config that affects clip_features' rows: all but the split and the recipe."""
    record = data.to_dict()
    record.pop("split", None)
    record["augment"] = {k: v for k, v in record["augment"].items() if k != "recipe"}
    return record


def _select_kinds(result: ClipFeatures, kinds: Sequence[str]) -> ClipFeatures:
    return dataclasses.replace(result, features={k: result.features[k] for k in kinds},
                               sequences={k: result.sequences[k] for k in kinds
                                          if k in result.sequences})


def _require_clips(scan: corpora.CorpusScan, spec: str) -> None:
    if not scan.clips:
        raise DatasetError(
            f"No usable audio clips in {spec!r} ({len(scan.skipped)} skipped: "
            f"{_examples(scan.skipped, 3)}); check the corpus paths and names."
        )


def _reason_counts(items: Sequence[tuple[str, str]]) -> dict[str, int]:
    """How many clips each kind of reason (the text before its first colon) covers."""
    counts: dict[str, int] = {}
    for _, reason in items:
        for part in reason.split("; "):
            kind = part.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def check_class_balance(clips: Sequence[corpora.Clip], splits: dict[str, list[int]],
                        labels: Sequence[str], min_share: float) -> list[str]:
    """Warnings for classes with no clips or fewer than ``min_share`` of the largest class;
    DatasetError when a non-empty split lacks a class that another split has."""
    counts = {split: {label: 0 for label in labels} for split in splits}
    for split, indices in splits.items():
        for i in indices:
            counts[split][clips[i].emotion] = counts[split].get(clips[i].emotion, 0) + 1
    totals = {label: sum(counts[split][label] for split in splits) for label in labels}
    for split, indices in splits.items():
        missing = [label for label in labels if indices and totals[label]
                   and not counts[split][label]]
        if missing:
            raise DatasetError(
                f"the {split} split has no clips of {', '.join(missing)}, which the other "
                "splits have — give it more speakers (data.split.*_fraction or *_speakers) "
                "or use --config.data.split.mode=file")
    largest = max(totals.values(), default=0)
    warnings = [f"class {label} has no clips in the corpus" for label in labels
                if not totals[label]]
    warnings += [f"class {label} has {totals[label]} clips, under {min_share:.0%} of the "
                 f"largest class ({largest})" for label in labels
                 if 0 < totals[label] < min_share * largest]
    for warning in warnings:
        logging.warning("features: %s", warning)
    return warnings


def _load_audio(scan: corpora.CorpusScan, data: ml_collections.ConfigDict,
                flagged: list[tuple[str, str]] | None = None,
                ) -> tuple[np.ndarray, list[corpora.Clip], list[tuple[str, str]]]:
    """(waves (N, T), the N clips that loaded, rejects); raises when none loaded. The clips
    kept with a quality flag are appended to ``flagged``."""
    waves, loaded, rejects = audio.load_clips(
        [c.path for c in scan.clips], sample_rate=data.sample_rate, offset=data.offset,
        duration=data.duration, placement=data.get("placement", "offset"),
        quality=audio.Quality.from_config(data.get("quality")), flagged=flagged,
    )
    clips = [scan.clips[i] for i in loaded]
    if not clips:
        raise DatasetError(
            f"None of the {len(scan.clips)} clips could be loaded: {_examples(rejects, 3)}."
        )
    return waves, clips, rejects


def _corpus_spec(data: ml_collections.ConfigDict, root: Path) -> tuple[str, bool]:
    """The corpora spec to scan; an empty one means the synthetic demo corpus, written to
    root/synthetic_corpus."""
    spec = data.corpora.strip()
    if spec:
        return spec, False
    root = synthetic.write_synthetic_corpus(
        root.absolute() / "synthetic_corpus", speakers=data.synthetic.speakers,
        clips_per_class=data.synthetic.clips_per_class, sample_rate=data.sample_rate,
        seed=SYNTHETIC_SEED,
    )
    logging.info("features: no corpora configured, using the synthetic demo corpus in %s", root)
    return f"synthetic:{root}", True


def _fingerprint(config: ml_collections.ConfigDict, scan: corpora.CorpusScan,
                 data: dict | None = None, purpose: str | None = None) -> str:
    """A hash of the inputs: audio files (path, size, mtime), data config, seed, versions."""
    files = []
    for path in sorted({c.path for c in scan.clips} | {p for p, _ in scan.skipped}):
        try:
            st = os.stat(path)
            files.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((path, -1, -1))
    record = {"format": feature_dir.FORMAT_VERSION, "extractor": features.EXTRACTOR_VERSION,
              "seed": config.seed, "data": config.data.to_dict() if data is None else data,
              "files": files}
    if purpose:
        record["purpose"] = purpose
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def parse_recipe(spec: str) -> list[str]:
    """The augmentation kinds of a comma-separated recipe; DatasetError for unknown ones."""
    kinds = parse_list(spec)
    unknown = [k for k in kinds if k not in augment.AUGMENTATIONS]
    if unknown or not kinds:
        raise DatasetError(
            f"Bad data.augment.recipe {spec!r}: unknown {', '.join(unknown) or '(empty)'}; use a "
            f"comma-separated list of {', '.join(augment.AUGMENTATIONS)}."
        )
    return kinds


def _extract_all(
    waves: np.ndarray,
    splits: dict[str, list[int]],
    recipe: Sequence[str],
    config: ml_collections.ConfigDict,
    rejects: list[tuple[str, str]],
    clips: Sequence[corpora.Clip],
) -> list[Part]:
    """A Part per recipe entry (train) or split (val, test, unaugmented).

    Rows with non-finite features are dropped and recorded in `rejects`.
    """
    jobs = [("train", kind) for kind in recipe] + [("val", "none"), ("test", "none")]
    seed_key = jax.random.key(config.seed)
    extracted = _extract_jobs(
        waves, [(splits[split], kind, jax.random.fold_in(seed_key, position))
                for position, (split, kind) in enumerate(jobs)], config.data)
    parts = []
    for (split, kind), (x, seq) in zip(jobs, extracted, strict=True):
        part, dropped = finite_part(split, kind, splits[split], x, seq)
        rejects += [(clips[i].path, f"non-finite features ({kind}, {split})") for i in dropped]
        parts.append(part)
    return parts


def finite_part(split: str, kind: str, indices: Sequence[int], x: np.ndarray,
                sequences: np.ndarray | None) -> tuple[Part, list[int]]:
    """The Part of the rows whose features (and sequences) are all finite, and the clip
    indices of the rows dropped."""
    finite = np.isfinite(x).all(axis=1)
    if sequences is not None:
        finite &= np.isfinite(sequences).all(axis=(1, 2))
    kept = [i for i, ok in zip(indices, finite, strict=True) if ok]
    dropped = [i for i, ok in zip(indices, finite, strict=True) if not ok]
    return (split, kind, kept, x[finite],
            None if sequences is None else sequences[finite]), dropped


def _extract_jobs(
    waves: np.ndarray,
    jobs: Sequence[tuple[Sequence[int], str, jax.Array]],
    data: ml_collections.ConfigDict,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Raw features (len(indices), 270) and, when data.sequences, raw log-mel sequences
    (len(indices), frames, 128) of each (clip indices, augmentation, key) job."""
    # One fixed batch shape for every call, so the extractor compiles once.
    batch = max(1, min(data.batch_size, len(waves)))
    total = sum(len(indices) for indices, _, _ in jobs)
    # Clip sets that get both the pitch and the pitch_noise row: their pitch shift (the costliest
    # augmentation) is computed once, kept by the first of the two jobs for the second.
    pitched = {tuple(indices) for indices, kind, _ in jobs if kind == "pitch"} & {
        tuple(indices) for indices, kind, _ in jobs if kind == "pitch_noise"}
    shared = {key: {} for key in pitched}
    with tqdm(total=total, desc="features", unit="clip", file=sys.stderr) as bar:
        return [_extract(waves, indices, kind, key, batch, data, bar,
                         shared.get(tuple(indices)))
                for indices, kind, key in jobs]


def _extract(
    waves: np.ndarray,
    indices: Sequence[int],
    kind: str,
    key: jax.Array,
    batch: int,
    data: ml_collections.ConfigDict,
    bar: tqdm,
    pitched: dict[int, jax.Array] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augments and extracts waves[indices] in padded batches: (len(indices), 270) features and
    (len(indices), frames, 128) sequences or None.

    `pitched`, when given, passes pitch-shifted batches between the pitch and pitch_noise jobs
    of the same clips: the first stores batch b's shifted waves, the second takes them (the
    rows equal augment.augment's, which shifts, then adds the noise).
    """
    frames = features.num_frames(waves.shape[1])
    out = [np.zeros((0, len(features.FEATURE_NAMES)), np.float32)]
    sequences = [np.zeros((0, frames, len(features.SEQUENCE_NAMES)), np.float32)]
    chunk = np.zeros((batch, waves.shape[1]), np.float32)
    for b, start in enumerate(range(0, len(indices), batch)):
        rows = list(indices[start : start + batch])
        chunk[: len(rows)] = waves[rows]
        chunk[len(rows) :] = 0.0
        batch_key = jax.random.fold_in(key, b)
        if pitched is not None and kind in ("pitch", "pitch_noise"):
            shifted = pitched.pop(b, None)
            if shifted is None:
                shifted = pitched[b] = augment.pitch_shift(
                    jnp.asarray(chunk), data.sample_rate, data.augment.pitch_semitones)
            x = (shifted if kind == "pitch" else
                 augment.add_noise(shifted, batch_key, data.augment.noise_sigma))
        else:
            x = augment.augment(
                jnp.asarray(chunk), kind, batch_key, sample_rate=data.sample_rate,
                noise_sigma=data.augment.noise_sigma,
                pitch_semitones=data.augment.pitch_semitones,
                stretch_rate=data.augment.stretch_rate, shift_seconds=data.augment.shift_seconds,
            )
        if data.sequences:
            clip, seq = features.clip_and_sequence_features(x, data.sample_rate)
            sequences.append(np.asarray(seq)[: len(rows)])
        else:
            clip = features.extract_features(x, data.sample_rate)
        out.append(np.asarray(clip)[: len(rows)])
        bar.update(len(rows))
    return np.concatenate(out), np.concatenate(sequences) if data.sequences else None


def _examples(items: Sequence[tuple[str, str]], limit: int) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


