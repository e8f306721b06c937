"""The monitoring reference, written into the bundle when training saves it.

``monitor_reference.json`` holds, for the training split's un-augmented rows in raw (unscaled)
clip-feature space: per-feature quantile bin edges with the proportion of rows in each bin (for
PSI) and the percentiles (for KS); the model's predicted class mix on the validation split; and
the input-quality rates of the training clips (when their audio is still readable).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
import soundfile as sf
from absl import logging

from ser_jax.core.files import write_json_atomic
from ser_jax.data import audio, store
from ser_jax.data.quality import QUALITY_DEFINITIONS, quality_flags
from ser_jax.features.extractor import FEATURE_NAMES
from ser_jax.features.scaler import Scaler
from ser_jax.inference import bundle as bundle_lib
from ser_jax.models import registry

REFERENCE_FILE = "monitor_reference.json"
VERSION = 1
PSI_BINS = 10  # quantile bins per feature


def load_audio(paths: Sequence[str | Path], data: ml_collections.ConfigDict
               ) -> tuple[np.ndarray, list[int], list[tuple[str, str]], dict[str, np.ndarray]]:
    """Training windows of ``paths`` (as audio.load_clips) and their quality flags
    (data.quality)."""
    waves, loaded, rejects = audio.load_clips(
        [str(p) for p in paths], sample_rate=data.sample_rate, offset=data.offset,
        duration=data.duration, placement=data.get("placement", "offset"))
    seconds = [sf.info(str(paths[i])).duration for i in loaded]
    return waves, loaded, rejects, quality_flags(waves, seconds, data.offset + data.duration)


def quality_rates(flags: dict[str, np.ndarray]) -> dict:
    """Shares of clips per quality flag, with the clip count."""
    count = len(next(iter(flags.values())))
    return {"clips": count, **{name: float(np.mean(v)) if count else 0.0
                               for name, v in flags.items()}}


def build_reference(train_x: np.ndarray, val_probs: np.ndarray, labels: Sequence[str],
                    feature_names: Sequence[str], quality: dict | None,
                    bins: int = PSI_BINS) -> dict:
    """The reference from raw training feature rows (N, D), validation class probabilities
    (M, C) and the training clips' quality rates (None when the audio was not readable)."""
    train_x = np.asarray(train_x, np.float64)
    if train_x.ndim != 2 or train_x.shape[1] != len(feature_names) or len(train_x) < bins:
        raise ValueError(f"train_x has shape {train_x.shape}; need (>= {bins}, "
                         f"{len(feature_names)}) rows of raw clip features")
    edges, proportions = [], []
    for column in train_x.T:
        inner = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        edges.append(inner.tolist())
        proportions.append(bin_proportions(column, inner).tolist())
    percentiles = np.quantile(train_x, np.linspace(0, 1, 101), axis=0).T
    predicted = np.argmax(np.asarray(val_probs), axis=1)
    mix = np.bincount(predicted, minlength=len(labels)) / max(1, len(predicted))
    return {
        "version": VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "feature_names": list(feature_names),
        "rows": len(train_x),
        "bins": {"edges": edges, "proportions": proportions},
        "percentiles": percentiles.tolist(),
        "class_mix": {"labels": list(labels), "proportions": mix.tolist(),
                      "rows": len(predicted)},
        "quality": quality,
        "quality_definitions": QUALITY_DEFINITIONS,
    }


def bin_proportions(values: np.ndarray, inner_edges: Sequence[float]) -> np.ndarray:
    """Shares of ``values`` in the bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    index = np.searchsorted(np.asarray(inner_edges), values, side="left")
    return np.bincount(index, minlength=len(inner_edges) + 1) / max(1, len(values))


def raw_features(frame: pd.DataFrame, scaler: Scaler) -> np.ndarray:
    """Unscaled clip features of parquet rows standardized with ``scaler``."""
    return frame[list(FEATURE_NAMES)].to_numpy(np.float64) * scaler.scale + scaler.mean


def write_reference(bundle_dir: str | Path, features_dir: str | Path) -> dict | None:
    """Builds the reference from ``features_dir`` (the training features) and the saved bundle
    in ``bundle_dir`` and writes it there as monitor_reference.json (none, with a warning, when
    the training split has fewer rows than bins)."""
    bundle_dir, features_dir = Path(bundle_dir), Path(features_dir)
    train = pd.read_parquet(features_dir / "train.parquet")
    if (train["augmentation"] == "none").any():  # clips as recorded, as the monitor sees them
        train = train[train["augmentation"] == "none"]
    if len(train) < PSI_BINS:
        logging.warning("no monitoring reference: %d training rows, fewer than %d bins",
                        len(train), PSI_BINS)
        return None
    model = bundle_lib.load(bundle_dir)
    scaler = Scaler.load(features_dir / "scaler.json")
    val_x, _ = store.load_inputs(features_dir, "val", model.labels,
                                   registry.model_inputs(model.config.model))
    quality = None
    paths = train["path"].tolist()
    if paths and all(Path(p).is_file() for p in paths):
        _, _, _, flags = load_audio(paths, model.config.data)
        quality = quality_rates(flags)
    reference = build_reference(raw_features(train, scaler), model.probabilities(val_x),
                                model.labels, FEATURE_NAMES, quality)
    manifest = features_dir / "manifest.json"
    reference["data_fingerprint"] = (json.loads(manifest.read_text()).get("fingerprint")
                                     if manifest.is_file() else None)
    write_json_atomic(bundle_dir / REFERENCE_FILE, reference)
    return reference


def read_reference(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the bundle has no monitoring reference; "
                                "retrain (the train stage writes it) or run "
                                "ser_jax.monitoring.reference.write_reference(BUNDLE, FEATURES)")
    return json.loads(path.read_text())
