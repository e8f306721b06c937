"""What the feature pipeline reads: the corpus spec (or the synthetic demo corpus), the scanned
clips, their audio, and a fingerprint of it all for reusing earlier output."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from ser_jax.data import audio, corpora, synthetic
from ser_jax.data.errors import DatasetError
from ser_jax.features import extractor as features
from ser_jax.features import feature_dir

SYNTHETIC_SEED = 0  # the demo corpus is fixed data; config.seed drives split and augmentation


def require_clips(scan: corpora.CorpusScan, spec: str) -> None:
    """DatasetError when the scan found no usable clip."""
    if not scan.clips:
        raise DatasetError(
            f"No usable audio clips in {spec!r} ({len(scan.skipped)} skipped: "
            f"{examples(scan.skipped, 3)}); check the corpus paths and names."
        )


def load_audio(scan: corpora.CorpusScan, data: ml_collections.ConfigDict
               ) -> tuple[np.ndarray, list[corpora.Clip], list[tuple[str, str]]]:
    """(waves (N, T), the N clips that loaded, rejects); raises when none loaded. Clips pass
    data.quality's gates and are placed as data.placement says."""
    waves, loaded, rejects = audio.load_config_clips([c.path for c in scan.clips], data)
    clips = [scan.clips[i] for i in loaded]
    if not clips:
        raise DatasetError(
            f"None of the {len(scan.clips)} clips could be loaded: {examples(rejects, 3)}."
        )
    return waves, clips, rejects


def corpus_spec(data: ml_collections.ConfigDict, root: Path) -> tuple[str, bool]:
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


def fingerprint(config: ml_collections.ConfigDict, scan: corpora.CorpusScan,
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


def examples(items: Sequence[tuple[str, str]], limit: int) -> str:
    """The first ``limit`` (path, reason) pairs as one line, and how many more there are."""
    shown = "; ".join(f"{path}: {reason}" for path, reason in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def reason_counts(items: Sequence[tuple[str, str]]) -> dict[str, int]:
    """How many clips each kind of reason (the text before its first colon) covers."""
    counts: dict[str, int] = {}
    for _, reason in items:
        for part in reason.split("; "):
            kind = part.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
    return counts
