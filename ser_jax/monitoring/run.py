"""The monitor stage: new audio (files, folders) or a features parquet against the bundle's
reference -> DIR/drift_report.json and DIR/drift_report.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ser_jax.core.files import write_json_atomic
from ser_jax.features import extractor as features
from ser_jax.features.scaler import Scaler
from ser_jax.inference import bundle as bundle_lib
from ser_jax.models import registry
from ser_jax.monitoring import drift
from ser_jax.training import reference

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
REPORT_JSON = "drift_report.json"
REPORT_PNG = "drift_report.png"


def collect(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(audio files, parquet files) named by ``paths``: files, or folders searched recursively."""
    audio_files, parquets = [], []
    for path in map(Path, paths):
        if path.is_dir():
            audio_files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            parquets += sorted(path.rglob("*.parquet"))
        elif path.suffix.lower() == ".parquet":
            parquets.append(path)
        elif path.is_file():
            audio_files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not audio_files and not parquets:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) or .parquet under "
                         f"{[str(p) for p in paths]}")
    return audio_files, parquets


def _parquet_features(path: Path) -> np.ndarray:
    """Raw clip features of a parquet: un-standardized with the scaler.json beside it (a
    features-stage output), or taken as raw when there is none."""
    frame = pd.read_parquet(path)
    missing = [n for n in features.FEATURE_NAMES if n not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a features parquet (missing columns {missing[:3]}...)")
    scaler_path = path.parent / "scaler.json"
    if scaler_path.is_file():
        return reference.raw_features(frame, Scaler.load(scaler_path))
    return frame[list(features.FEATURE_NAMES)].to_numpy(np.float64)


def monitor(bundle_dir: str | Path, paths: Sequence[str | Path], report_dir: str | Path,
            thresholds: drift.Thresholds | None = None) -> dict:
    """Writes the drift report of ``paths`` against ``bundle_dir``'s reference; returns it."""
    thresholds = thresholds or drift.Thresholds()
    model = bundle_lib.load(bundle_dir)
    ref = reference.read_reference(bundle_dir)
    audio_files, parquets = collect(paths)
    data = model.config.data
    rows, probabilities, quality, rejects = [], [], None, []
    sequence_model = registry.model_inputs(model.config.model) == "sequence"
    if audio_files:
        waves, loaded, rejects, flags = reference.load_audio(audio_files, data)
        if loaded:
            raw = np.asarray(features.extract_features(waves, data.sample_rate), np.float64)
            rows.append(raw)
            probabilities.append(model.probabilities(model.inputs(waves)))
            quality = reference.quality_rates(flags)
    for path in parquets:
        raw = _parquet_features(path)
        rows.append(raw)
        if not sequence_model:  # a parquet has no frame sequences for a sequence model
            probabilities.append(model.probabilities(model.scaler.transform(raw)))
    if not rows:
        raise ValueError(f"none of the {len(audio_files)} audio files could be read: "
                         f"{rejects[:3]}")
    x = np.concatenate(rows)
    probs = np.concatenate(probabilities) if len(probabilities) == len(rows) else None
    report = drift.compare(ref, x, probs, quality, thresholds)
    report["inputs"] = {"audio_files": len(audio_files), "parquets": [str(p) for p in parquets],
                        "rejects": [{"path": p, "reason": r} for p, r in rejects]}
    report["data_fingerprint"] = ref.get("data_fingerprint")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / REPORT_JSON, report)
    drift.plot(report, report_dir / REPORT_PNG)
    return report
