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
import functools
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
from ser_jax.features import augment, feature_dir, shards
from ser_jax.features import extractor as features
from ser_jax.features.feature_dir import ClipFeatures, Sequences
from ser_jax.features.scaler import Scaler

SYNTHETIC_SEED = 0  # the demo corpus is fixed data; config.seed drives split and augmentation
MAX_EXAMPLES = 20


SHARD_KEYS = ("num_shards", "shard")  # which shard runs; not part of the features' identity


def prepare_features(config: ml_collections.ConfigDict, out_dir: str | Path) -> Path:
    """Runs the features stage into out_dir (see the module docstring); returns out_dir.

    With config.data.num_shards > 1 it extracts only shard config.data.shard and writes it
    beside out_dir (see shards.ShardRows.folder); merge_features then writes out_dir.
    """
    out_dir = Path(out_dir)
    data = config.data
    num_shards, shard = int(data.num_shards), int(data.shard)
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise DatasetError(f"data.shard={shard}, data.num_shards={num_shards}: need "
                           "num_shards >= 1 and 0 <= shard < num_shards.")
    started = time.perf_counter()
    timings: dict[str, float] = {}

    if out_dir.exists() and not feature_dir.replaceable(out_dir):
        raise DatasetError(
            f"{out_dir} exists and holds files other than a features stage's output; "
            "choose an empty or new folder."
        )
    spec, is_synthetic = _corpus_spec(data, out_dir.absolute().parent)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    fingerprint = _fingerprint(config, scan, data=_features_data(data))
    damage = feature_dir.verify_reuse(out_dir, fingerprint, data.sequences)
    if damage is None:
        logging.info("features: reusing %s (same inputs, data config and extractor; files "
                     "verified)", out_dir)
        return out_dir
    if damage:  # an output of the same inputs whose files do not hold what it recorded
        logging.warning("features: %s is damaged (%s); rebuilding it", out_dir, damage)
    _require_clips(scan, spec)
    timings["scan_s"] = time.perf_counter() - started
    rows = _extract_shard(config, scan, fingerprint, shard, num_shards, timings)
    if num_shards > 1:
        folder = rows.write(out_dir)
        logging.info("features: wrote shard %d of %d (%d rows) to %s", shard, num_shards,
                     sum(len(i) for i in rows.indices), folder)
        return folder
    _write_merged(config, out_dir, [rows], scan, spec, is_synthetic, started, timings)
    return out_dir


def merge_features(config: ml_collections.ConfigDict, out_dir: str | Path) -> Path:
    """Merges the config.data.num_shards shards written beside out_dir into out_dir: the same
    files the single-process stage writes (rows in its order, scalers from merged moments)."""
    out_dir = Path(out_dir)
    data = config.data
    started = time.perf_counter()
    if out_dir.exists() and not feature_dir.replaceable(out_dir):
        raise DatasetError(f"{out_dir} exists and holds files other than a features stage's "
                           "output; choose an empty or new folder.")
    spec, is_synthetic = _corpus_spec(data, out_dir.absolute().parent)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    _require_clips(scan, spec)
    fingerprint = _fingerprint(config, scan, data=_features_data(data))
    parts = [shards.ShardRows.read(out_dir, k, int(data.num_shards), fingerprint)
             for k in range(int(data.num_shards))]
    _write_merged(config, out_dir, parts, scan, spec, is_synthetic, started,
                  {"merge_read_s": time.perf_counter() - started})
    return out_dir


def _features_data(data: ml_collections.ConfigDict) -> dict:
    """The data config that identifies the features (all but which shard runs)."""
    return {k: v for k, v in data.to_dict().items() if k not in SHARD_KEYS}


def _split(config: ml_collections.ConfigDict, scan: corpora.CorpusScan) -> dict[str, list[int]]:
    """The whole manifest's split (the same in every shard)."""
    split = config.data.split
    return split_clips(
        scan.clips, mode=split.mode, val_fraction=split.val_fraction,
        test_fraction=split.test_fraction, val_speakers=parse_list(split.val_speakers),
        test_speakers=parse_list(split.test_speakers), seed=config.seed,
    )


def _extract_shard(config: ml_collections.ConfigDict, scan: corpora.CorpusScan,
                   fingerprint: str, shard: int, num_shards: int,
                   timings: dict[str, float]) -> shards.ShardRows:
    """Splits the whole manifest, then loads, augments and extracts this shard's clips."""
    data = config.data
    recipe = parse_recipe(data.augment.recipe)
    splits = _split(config, scan)
    check_class_balance(scan.clips, splits, label_names(data), data.quality.min_class_share)
    mine = [i for i, c in enumerate(scan.clips) if shards.shard_of(c.path, num_shards) == shard]
    tick = time.perf_counter()
    flagged: list[tuple[str, str]] = []
    waves, loaded, rejects = audio.load_clips(
        [scan.clips[i].path for i in mine], sample_rate=data.sample_rate, offset=data.offset,
        duration=data.duration, placement=data.get("placement", "offset"),
        quality=audio.Quality.from_config(data.get("quality")), flagged=flagged)
    timings["load_audio_s"] = time.perf_counter() - tick
    row = {mine[j]: r for r, j in enumerate(loaded)}
    failed = sorted(set(mine) - set(row))
    load_rejects = [(i, path, reason) for i, (path, reason) in zip(failed, rejects, strict=True)]
    ids = np.asarray([shards.clip_id(scan.clips[mine[j]].path) for j in loaded], np.uint32)

    jobs = [("train", kind) for kind in recipe] + [("val", "none"), ("test", "none")]
    seed_key = jax.random.key(config.seed)
    members = [[i for i in splits[split] if i in row] for split, _ in jobs]
    tick = time.perf_counter()
    extracted = _extract_jobs(waves, [
        ([row[i] for i in indices], kind,
         clip_keys(jax.random.fold_in(seed_key, position), ids[[row[i] for i in indices]]))
        for position, ((_, kind), indices) in enumerate(zip(jobs, members, strict=True))],
        data)
    timings["extract_s"] = time.perf_counter() - tick
    kept_indices, kept_x, kept_seq, nonfinite = [], [], [], []
    for j, (indices, (x, seq)) in enumerate(zip(members, extracted, strict=True)):
        (_, _, kept, x, seq), dropped = finite_part("", "", indices, x, seq)
        nonfinite += [(j, i) for i in dropped]
        kept_indices.append(np.asarray(kept, np.int64))
        kept_x.append(x)
        kept_seq.append(seq)
    train = [j for j, (split, _) in enumerate(jobs) if split == "train"]
    moments = shards.Moments.of(np.concatenate([kept_x[j] for j in train]),
                                len(features.FEATURE_NAMES))
    seq_moments = None if not data.sequences else shards.Moments.of(
        np.concatenate([kept_seq[j] for j in train]), len(features.SEQUENCE_NAMES))
    return shards.ShardRows(shard, num_shards, fingerprint, jobs, kept_indices, kept_x,
                            kept_seq if data.sequences else None, load_rejects, nonfinite,
                            moments, seq_moments, flagged)


def _write_merged(config: ml_collections.ConfigDict, out_dir: Path,
                  parts: Sequence[shards.ShardRows], scan: corpora.CorpusScan, spec: str,
                  is_synthetic: bool, started: float, timings: dict[str, float]) -> None:
    """Standardizes the shards' rows into the features folder (rows in manifest order per job,
    jobs in recipe order; scalers from the merged training moments)."""
    data = config.data
    tick = time.perf_counter()
    jobs = parts[0].jobs
    if any(p.jobs != jobs for p in parts):
        raise DatasetError("The shards were written with different augmentation recipes; "
                           "rerun every shard with the same config.")
    moments = functools.reduce(shards.Moments.merge, [p.moments for p in parts])
    scaler = moments.scaler(features.FEATURE_NAMES)
    seq_scaler = None
    if data.sequences:
        seq_scaler = functools.reduce(shards.Moments.merge, [
            p.sequence_moments for p in parts]).scaler(features.SEQUENCE_NAMES)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    sequences: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for j, (split, kind) in enumerate(jobs):
        indices = np.concatenate([p.indices[j] for p in parts])
        order = np.argsort(indices, kind="stable")
        x = np.concatenate([p.features[j] for p in parts])[order]
        frames[split].append(store.make_frame(scaler.transform(x),
                                              [scan.clips[i] for i in indices[order]], kind))
        if seq_scaler is not None:
            sequences[split].append(seq_scaler.transform(
                np.concatenate([p.sequences[j] for p in parts])[order]))
    if not any(len(f) for f in frames["train"]):
        raise DatasetError("No training rows left after feature extraction.")
    rejects = sorted(r for p in parts for r in p.load_rejects)
    if len(rejects) == len(scan.clips):
        raise DatasetError(f"None of the {len(scan.clips)} clips could be loaded: "
                           f"{_examples([(p, r) for _, p, r in rejects], 3)}.")
    items = [(p, r) for _, p, r in rejects] + [
        (scan.clips[i].path, f"non-finite features ({jobs[j][1]}, {jobs[j][0]})")
        for j, i in sorted(r for p in parts for r in p.nonfinite)]
    labels = label_names(data)
    flagged = [f for p in parts for f in p.flagged]
    class_warnings = check_class_balance(scan.clips, _split(config, scan), labels,
                                         data.quality.min_class_share, log=False)
    manifest = {
        "format_version": feature_dir.FORMAT_VERSION,
        "fingerprint": parts[0].fingerprint,
        "extractor_version": features.EXTRACTOR_VERSION,
        "synthetic": is_synthetic,
        "corpora": spec,
        "seed": config.seed,
        "data": _features_data(data),
        "labels": labels,
        "counts": feature_dir.split_counts(frames, labels),
        "rejects": {"count": len(items), "items": [{"path": p, "reason": r} for p, r in items]},
        "quality": {"gates": dataclasses.asdict(audio.Quality.from_config(data.quality)),
                    "rejected": _reason_counts([(p, r) for _, p, r in rejects]), "flagged": {
                        "count": len(flagged), "by_reason": _reason_counts(flagged),
                        "items": [{"path": p, "reason": r} for p, r in flagged]},
                    "warnings": class_warnings},
        "skipped": {"count": len(scan.skipped), "examples": [
            {"path": p, "reason": r} for p, r in scan.skipped[:MAX_EXAMPLES]]},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timings": {**timings, "standardize_s": time.perf_counter() - tick},
    }
    feature_dir.write_feature_dir(
        out_dir, frames, labels, scaler, manifest, started,
        None if seq_scaler is None else Sequences(
            {name: np.concatenate(x) for name, x in sequences.items()}, seq_scaler))
    feature_dir.print_summary(out_dir, manifest)


@jax.jit
def _row_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def clip_keys(key: jax.Array, ids: np.ndarray) -> jax.Array:
    """One augmentation key per row: `key` folded with the row's shards.clip_id."""
    return _row_keys(key, jnp.asarray(ids, jnp.uint32))


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
    ids = np.asarray([shards.clip_id(c.path) for c in clips], np.uint32)
    jobs = [(range(len(clips)), kind, clip_keys(jax.random.fold_in(seed_key, _kind_key(kind)), ids))
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
                        labels: Sequence[str], min_share: float, log: bool = True
                        ) -> list[str]:
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
    for warning in warnings if log else ():
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
    (len(indices), frames, 128) of each (clip indices, augmentation, per-row keys) job."""
    # One fixed batch shape for every call, so the extractor compiles once.
    batch = max(1, min(data.batch_size, len(waves)))
    total = sum(len(indices) for indices, _, _ in jobs)
    # Clip sets that get both the pitch and the pitch_noise row: their pitch shift (the costliest
    # augmentation) is computed once, kept by the first of the two jobs for the second.
    pitched = {tuple(indices) for indices, kind, _ in jobs if kind == "pitch"} & {
        tuple(indices) for indices, kind, _ in jobs if kind == "pitch_noise"}
    shared = {key: {} for key in pitched}
    with tqdm(total=total, desc="features", unit="clip", file=sys.stderr) as bar:
        return [_extract(waves, indices, kind, keys, batch, data, bar,
                         shared.get(tuple(indices)))
                for indices, kind, keys in jobs]


def _extract(
    waves: np.ndarray,
    indices: Sequence[int],
    kind: str,
    keys: jax.Array,
    batch: int,
    data: ml_collections.ConfigDict,
    bar: tqdm,
    pitched: dict[int, jax.Array] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augments and extracts waves[indices] in padded batches: (len(indices), 270) features and
    (len(indices), frames, 128) sequences or None. keys[r] is row r's augmentation key, so a
    row does not depend on its batch (nor, in a sharded run, on its shard).

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
        batch_keys = keys[start : start + batch]
        if len(rows) < batch:  # padding rows: any key
            batch_keys = jnp.concatenate([batch_keys, keys[np.zeros(batch - len(rows), int)]])
        if pitched is not None and kind in ("pitch", "pitch_noise"):
            shifted = pitched.pop(b, None)
            if shifted is None:
                shifted = pitched[b] = augment.pitch_shift(
                    jnp.asarray(chunk), data.sample_rate, data.augment.pitch_semitones)
            x = (shifted if kind == "pitch" else
                 _noise_rows(shifted, batch_keys, data.augment.noise_sigma))
        else:
            x = _augment_rows(jnp.asarray(chunk), kind, batch_keys, data)
        if data.sequences:
            clip, seq = features.clip_and_sequence_features(x, data.sample_rate)
            sequences.append(np.asarray(seq)[: len(rows)])
        else:
            clip = features.extract_features(x, data.sample_rate)
        out.append(np.asarray(clip)[: len(rows)])
        bar.update(len(rows))
    return np.concatenate(out), np.concatenate(sequences) if data.sequences else None


@functools.partial(jax.jit, static_argnames="sigma")
def _noise_rows(waves: jax.Array, keys: jax.Array, sigma: float) -> jax.Array:
    """augment.add_noise with one key per row."""
    return jax.vmap(lambda w, k: augment.add_noise(w[None], k, sigma)[0])(waves, keys)


@functools.partial(jax.jit, static_argnames="max_shift")
def _shift_rows(waves: jax.Array, keys: jax.Array, max_shift: int) -> jax.Array:
    """augment.random_shift with one key per row."""
    return jax.vmap(lambda w, k: augment.random_shift(w[None], k, max_shift)[0])(waves, keys)


def _augment_rows(waves: jax.Array, kind: str, keys: jax.Array,
                  data: ml_collections.ConfigDict) -> jax.Array:
    """augment.augment's `kind` with one key per row (the random kinds draw per row)."""
    a = data.augment
    if kind == "noise":
        return _noise_rows(waves, keys, a.noise_sigma)
    if kind == "pitch_noise":
        return _noise_rows(augment.pitch_shift(waves, data.sample_rate, a.pitch_semitones),
                           keys, a.noise_sigma)
    if kind == "shift":
        return _shift_rows(waves, keys, int(round(a.shift_seconds * data.sample_rate)))
    return augment.augment(waves, kind, keys[0], sample_rate=data.sample_rate,
                           noise_sigma=a.noise_sigma, pitch_semitones=a.pitch_semitones,
                           stretch_rate=a.stretch_rate, shift_seconds=a.shift_seconds)


def _examples(items: Sequence[tuple[str, str]], limit: int) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


