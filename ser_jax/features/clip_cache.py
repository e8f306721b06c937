"""The cv stage's clip cache: every clip's features under each augmentation, extracted once by
the one feature pipeline (same per-clip keys, so the same rows as the features stage), and any
split of those clips (a cv fold, a tuning fold) written as a features folder of the same layout.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from ser_jax.data import corpora
from ser_jax.features import extractor as features
from ser_jax.features import feature_dir, inputs, pipeline
from ser_jax.features.feature_dir import ClipFeatures


def write_split_features(out_dir: Path, clip_features: ClipFeatures,
                         splits: dict[str, list[int]], recipe: Sequence[str], labels: list[str],
                         manifest: dict) -> None:
    """Writes a features folder (the features stage's layout) for a split of ``clip_features``'
    clips: the recipe's rows of the training clips, the "none" rows of the others, scaled with
    statistics of the training rows. ``manifest`` gets counts and the dropped rows."""
    started = time.perf_counter()

    def rows(_: str, kind: str, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        sequences = clip_features.sequences.get(kind)
        return (clip_features.features[kind][indices],
                None if sequences is None else sequences[indices])

    parts, dropped = pipeline.make_parts(splits, recipe, rows, clip_features.clips)
    frames, scaler, sequences = pipeline.standardize_parts(parts, clip_features.clips)
    manifest = {**manifest, "format_version": feature_dir.FORMAT_VERSION,
                "extractor_version": features.EXTRACTOR_VERSION, "labels": labels,
                "counts": feature_dir.split_counts(frames, labels),
                "rejects": {"count": len(dropped),
                            "items": [{"path": p, "reason": r} for p, r in dropped]},
                "timings": {}}
    feature_dir.write_feature_dir(out_dir, frames, labels, scaler, manifest, started, sequences)


def clip_features(
    config: ml_collections.ConfigDict,
    cache_dir: str | Path,
    kinds: Sequence[str],
    corpus_root: str | Path,
) -> ClipFeatures:
    """Features of every clip of config.data's corpora under each of `kinds`, cached in cache_dir.

    A row depends on config.seed, the kind and the clip only (as in prepare_features), not on
    which other kinds are asked for: cached kinds are reused and only the missing ones are
    extracted (the audio is not even read when none is missing). The cache is
    keyed like prepare_features' output (audio files, data config except the split and recipe,
    seed, extractor version) and rewritten atomically. The synthetic demo corpus, used when no
    corpus is configured, is written to corpus_root/synthetic_corpus.
    """
    cache_dir = Path(cache_dir)
    data = config.data
    kinds = list(dict.fromkeys(pipeline.parse_recipe(",".join(kinds))))
    spec, is_synthetic = inputs.corpus_spec(data, Path(corpus_root))
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    inputs.require_clips(scan, spec)
    fingerprint = inputs.fingerprint(config, scan, data=_clip_features_data(data),
                               purpose=f"clip_features/{feature_dir.CLIP_FEATURES_VERSION}")
    cached = feature_dir.read_clip_cache(cache_dir, fingerprint, data.sequences)
    if cached and all(kind in cached.features for kind in kinds):
        logging.info("features: reusing %s (%s)", cache_dir, ", ".join(kinds))
        return _select_kinds(cached, kinds)

    started = time.perf_counter()
    waves, clips, rejects = inputs.load_audio(scan, data)
    result = cached or ClipFeatures(clips, {}, {}, rejects, scan.skipped, spec, is_synthetic,
                                    fingerprint)
    if [c.path for c in result.clips] != [c.path for c in clips]:  # files changed meanwhile
        result = ClipFeatures(clips, {}, {}, rejects, scan.skipped, spec, is_synthetic,
                              fingerprint)
    missing = [kind for kind in kinds if kind not in result.features]
    logging.info("features: extracting %s for %d clips into %s", ", ".join(missing), len(clips),
                 cache_dir)
    jobs = [(list(range(len(clips))), kind) for kind in missing]
    extracted = pipeline._extract_jobs(waves, clips, jobs, config.seed, data)
    for kind, (x, seq) in zip(missing, extracted, strict=True):
        result.features[kind] = x
        if seq is not None:
            result.sequences[kind] = seq
    feature_dir.write_clip_cache(cache_dir, result, time.perf_counter() - started)
    return _select_kinds(result, kinds)


def _clip_features_data(data: ml_collections.ConfigDict) -> dict:
    """The data config that affects clip_features' rows: all but the split and the recipe."""
    record = {k: v for k, v in data.to_dict().items() if k not in pipeline.SHARD_KEYS}
    record.pop("split", None)
    record["augment"] = {k: v for k, v in record["augment"].items() if k != "recipe"}
    return record


def _select_kinds(result: ClipFeatures, kinds: Sequence[str]) -> ClipFeatures:
    return dataclasses.replace(result, features={k: result.features[k] for k in kinds},
                               sequences={k: result.sequences[k] for k in kinds
                                          if k in result.sequences})
