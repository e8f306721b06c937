"""The one feature pipeline: corpora -> audio -> augment + extract -> parts -> standardized files.

Two entry points share every step. ``prepare_features`` (the features stage) splits the clips,
extracts the recipe's rows of the training clips and the unaugmented rows of the validation and
test clips, and writes a features folder. ``clip_features`` (the cv stage's input) extracts
every clip under every requested augmentation once, into a cache; ``write_split_features``
then writes any split of those clips (a cv fold) as a features folder of the same layout.

A row's augmentation key derives from the seed, the augmentation's name and the clip (its
speaker and file name) only, so the same seed and clip give the same augmented row in both.
Folders are written atomically (built beside the target, then swapped in). A run whose inputs
(audio files' paths, sizes and mtimes), data config, seed and extractor version match the
output's manifest reuses it. With config.data.sequences each row's log-mel frame sequence (the
temporal model's input) is stored beside it, standardized per band.

Sharding: with config.data.num_shards = N > 1, ``prepare_features`` extracts only the clips of
shard config.data.shard (by a stable hash of the clip path; the split is decided on the whole
manifest first, so every shard agrees) and writes their raw rows and the scalers' sufficient
statistics beside the output (shards.ShardRows); ``merge_features`` merges N shards (Chan's
formula) into exactly the files the single-process stage writes. One process is N = 1.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from ser_jax.core.batches import padded_batches
from ser_jax.core.lists import parse_list
from ser_jax.data import audio, corpora, store
from ser_jax.data.errors import DatasetError
from ser_jax.data.labels import label_names
from ser_jax.data.splits import SPLITS, check_class_balance, split_clips
from ser_jax.features import augment, feature_dir, inputs, shards
from ser_jax.features import extractor as features
from ser_jax.features.feature_dir import Sequences
from ser_jax.features.scaler import Scaler

MAX_EXAMPLES = 20
SHARD_KEYS = ("num_shards", "shard")  # which shard runs; not part of the features' identity


def prepare_features(config: ml_collections.ConfigDict, out_dir: str | Path) -> Path:
    """Runs the features stage into out_dir (see the module docstring); returns out_dir, or the
    shard's folder when config.data.num_shards > 1."""
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
    spec, is_synthetic = inputs.corpus_spec(data, out_dir.absolute().parent)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    fingerprint = inputs.fingerprint(config, scan, data=_features_data(data))
    damage = feature_dir.verify_reuse(out_dir, fingerprint, data.sequences)
    if damage is None:
        logging.info("features: reusing %s (same inputs, data config and extractor; files "
                     "verified)", out_dir)
        return out_dir
    if damage:  # an output of the same inputs whose files do not hold what it recorded
        logging.warning("features: %s is damaged (%s); rebuilding it", out_dir, damage)
    inputs.require_clips(scan, spec)
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
    spec, is_synthetic = inputs.corpus_spec(data, out_dir.absolute().parent)
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    inputs.require_clips(scan, spec)
    fingerprint = inputs.fingerprint(config, scan, data=_features_data(data))
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
    waves, loaded, rejects = audio.load_config_clips([scan.clips[i].path for i in mine], data,
                                                     flagged)
    timings["load_audio_s"] = time.perf_counter() - tick
    row = {mine[j]: r for r, j in enumerate(loaded)}
    failed = sorted(set(mine) - set(row))
    load_rejects = [(i, path, reason) for i, (path, reason) in zip(failed, rejects, strict=True)]

    tick = time.perf_counter()
    jobs = split_jobs(splits, recipe)
    members = [[i for i in splits[split] if i in row] for split, _ in jobs]
    extracted = _extract_jobs(waves, [scan.clips[mine[j]] for j in loaded],
                              [([row[i] for i in m], kind) for m, (_, kind)
                               in zip(members, jobs, strict=True)], config.seed, data)
    timings["extract_s"] = time.perf_counter() - tick
    kept_indices, kept_x, kept_seq, nonfinite = [], [], [], []
    for j, (indices, (x, seq)) in enumerate(zip(members, extracted, strict=True)):
        finite = np.isfinite(x).all(axis=1)
        if seq is not None:
            finite &= np.isfinite(seq).all(axis=(1, 2))
        nonfinite += [(j, i) for i, ok in zip(indices, finite, strict=True) if not ok]
        kept_indices.append(np.asarray(indices, np.int64)[finite])
        kept_x.append(x[finite])
        kept_seq.append(None if seq is None else seq[finite])
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
                           f"{inputs.examples([(p, r) for _, p, r in rejects], 3)}.")
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
                    "rejected": inputs.reason_counts([(p, r) for _, p, r in rejects]), "flagged": {
                        "count": len(flagged), "by_reason": inputs.reason_counts(flagged),
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


@dataclasses.dataclass
class Part:
    """One split's rows under one augmentation, unscaled."""

    split: str
    kind: str
    indices: list[int]  # clip indices, in row order
    x: np.ndarray  # (rows, 270) clip features
    sequences: np.ndarray | None  # (rows, frames, 128) log-mel sequences, or None


def split_jobs(splits: dict[str, list[int]], recipe: Sequence[str]) -> list[tuple[str, str]]:
    """(split, augmentation) of every part: the recipe for training, "none" for val and test."""
    return [("train", kind) for kind in recipe] + [(split, "none") for split in SPLITS
                                                   if split != "train"]


def make_parts(splits: dict[str, list[int]], recipe: Sequence[str],
               rows: Callable[[str, str, list[int]], tuple[np.ndarray, np.ndarray | None]],
               clips: Sequence[corpora.Clip]) -> tuple[list[Part], list[tuple[str, str]]]:
    """The parts of a split (see split_jobs); ``rows(split, kind, indices)`` gives their raw
    features and sequences. Rows with non-finite values are dropped and returned as
    (path, reason)."""
    parts, dropped = [], []
    for split, kind in split_jobs(splits, recipe):
        indices = list(splits[split])
        x, sequences = rows(split, kind, indices)
        finite = np.isfinite(x).all(axis=1)
        if sequences is not None:
            finite &= np.isfinite(sequences).all(axis=(1, 2))
        dropped += [(clips[i].path, f"non-finite features ({kind}, {split})")
                    for i, ok in zip(indices, finite, strict=True) if not ok]
        parts.append(Part(split, kind, [i for i, ok in zip(indices, finite, strict=True) if ok],
                          x[finite], None if sequences is None else sequences[finite]))
    if not sum(len(p.x) for p in parts if p.split == "train"):
        raise DatasetError("No training rows left after feature extraction.")
    return parts, dropped


def standardize_parts(parts: Sequence[Part], clips: Sequence[corpora.Clip]
                      ) -> tuple[dict[str, list[pd.DataFrame]], Scaler, Sequences | None]:
    """Fits the scalers on the training parts and standardizes every part.

    Returns each split's parquet frames, the clip-feature scaler and, when the parts carry
    sequences, the standardized sequences with their per-band scaler.
    """
    scaler = Scaler.fit(np.concatenate([p.x for p in parts if p.split == "train"]))
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for p in parts:
        frames[p.split].append(store.make_frame(scaler.transform(p.x),
                                                [clips[i] for i in p.indices], p.kind))
    if parts[0].sequences is None:
        return frames, scaler, None
    sequence_scaler = Scaler.fit(
        np.concatenate([p.sequences for p in parts if p.split == "train"]),
        columns=features.SEQUENCE_NAMES)
    splits = {name: np.concatenate([sequence_scaler.transform(p.sequences)
                                    for p in parts if p.split == name])
              for name in SPLITS}
    return frames, scaler, Sequences(splits, sequence_scaler)


def _stable_number(text: str) -> int:
    """A stable 31-bit number for a name (Python's hash() changes between processes)."""
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def row_keys(seed: int, kind: str, clips: Sequence[corpora.Clip]) -> jax.Array:
    """One augmentation key per clip: from the seed, the kind and the clip's speaker and file
    name only (not its position, batch or the other clips)."""
    kind_key = jax.random.fold_in(jax.random.key(seed), _stable_number(kind))
    ids = np.asarray([_stable_number(f"{c.speaker}/{Path(c.path).name}") for c in clips],
                     np.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(kind_key, i))(ids)


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


def _extract_jobs(
    waves: np.ndarray,
    clips: Sequence[corpora.Clip],
    jobs: Sequence[tuple[Sequence[int], str]],
    seed: int,
    data: ml_collections.ConfigDict,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Raw features (len(indices), 270) and, when data.sequences, raw log-mel sequences
    (len(indices), frames, 128) of each (clip indices, augmentation) job."""
    # One fixed batch shape for every call, so the extractor compiles once.
    batch = max(1, min(data.batch_size, len(waves)))
    total = sum(len(indices) for indices, _ in jobs)
    # Clip sets that get both the pitch and the pitch_noise row: their pitch shift (the costliest
    # augmentation) is computed once, kept by the first of the two jobs for the second.
    pitched = {tuple(indices) for indices, kind in jobs if kind == "pitch"} & {
        tuple(indices) for indices, kind in jobs if kind == "pitch_noise"}
    shared = {key: {} for key in pitched}
    with tqdm(total=total, desc="features", unit="clip", file=sys.stderr) as bar:
        return [_extract(waves, indices, kind, row_keys(seed, kind, [clips[i] for i in indices]),
                         batch, data, bar, shared.get(tuple(indices)))
                for indices, kind in jobs]


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
    """Augments (row i with keys[i]) and extracts waves[indices] in zero-padded batches:
    (len(indices), 270) features and (len(indices), frames, 128) sequences or None.

    `pitched`, when given, passes pitch-shifted batches between the pitch and pitch_noise jobs
    of the same clips: the first stores batch b's shifted waves, the second takes them (the
    rows equal augment.augment's, which shifts, then adds the noise).
    """
    frames = features.num_frames(waves.shape[1])
    out = [np.zeros((0, len(features.FEATURE_NAMES)), np.float32)]
    sequences = [np.zeros((0, frames, len(features.SEQUENCE_NAMES)), np.float32)]
    key_rows = np.arange(len(indices))
    for b, ((chunk, count), (key_index, _)) in enumerate(zip(
            padded_batches(waves, batch, indices), padded_batches(key_rows, batch),
            strict=True)):
        batch_keys = keys[key_index]  # padding rows reuse row 0's key; their rows are dropped
        if pitched is not None and kind in ("pitch", "pitch_noise"):
            shifted = pitched.pop(b, None)
            if shifted is None:
                shifted = pitched[b] = augment.pitch_shift(
                    jnp.asarray(chunk), data.sample_rate, data.augment.pitch_semitones)
            x = (shifted if kind == "pitch" else
                 augment.noise_rows(shifted, batch_keys, data.augment.noise_sigma))
        else:
            x = augment.augment(
                jnp.asarray(chunk), kind, batch_keys, sample_rate=data.sample_rate,
                noise_sigma=data.augment.noise_sigma,
                pitch_semitones=data.augment.pitch_semitones,
                stretch_rate=data.augment.stretch_rate, shift_seconds=data.augment.shift_seconds,
            )
        if data.sequences:
            clip, seq = features.clip_and_sequence_features(x, data.sample_rate)
            sequences.append(np.asarray(seq)[:count])
        else:
            clip = features.extract_features(x, data.sample_rate)
        out.append(np.asarray(clip)[:count])
        bar.update(count)
    return np.concatenate(out), np.concatenate(sequences) if data.sequences else None
