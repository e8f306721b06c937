"""Shared fixtures: a small, learnable feature set in the data stage's parquet layout."""

import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from configs import default
from ser_jax.data import audio, store, synthetic
from ser_jax.data.corpora import EMOTIONS
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.evaluation import cv
from ser_jax.features import scaler

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess"


def write_feature_dir(directory: Path, rows: dict[str, int], seed: int = 0) -> Path:
    """Writes train/val/test parquet files of Gaussian clusters, one per emotion, plus JSON."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(EMOTIONS), len(FEATURE_NAMES))).astype(np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in rows.items():
        labels = np.arange(count) % len(EMOTIONS)
        x = centers[labels] + rng.normal(scale=1.5, size=(count, len(FEATURE_NAMES)))
        frame = pd.DataFrame(x.astype(np.float32), columns=list(FEATURE_NAMES))
        frame["label"] = [EMOTIONS[i] for i in labels]
        frame["speaker"] = [f"synthetic_{i % 3:02d}" for i in range(count)]
        frame["corpus"] = "synthetic"
        frame["path"] = [f"clip_{split}_{i}.wav" for i in range(count)]
        frame["augmentation"] = "none"
        store.write_parquet_atomic(frame, directory / f"{split}.parquet")
    (directory / "labels.json").write_text(json.dumps({"labels": list(EMOTIONS)}))
    scaler.Scaler(columns=list(FEATURE_NAMES), mean=np.zeros(len(FEATURE_NAMES)),
                   scale=np.ones(len(FEATURE_NAMES))).save(directory / "scaler.json")
    return directory


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
    """The default config with a narrow model and a few short epochs."""
    config = default.get_config()
    config.model.filters = 8
    config.train.batch_size = 16
    config.train.epochs = 4
    config.train.eval_batch_size = 64
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="session")
def feature_dir(tmp_path_factory) -> Path:
    return write_feature_dir(tmp_path_factory.mktemp("features"),
                             {"train": 224, "val": 70, "test": 70})


def cross_validate_synthetic(root: Path, config: ml_collections.ConfigDict,
                             speakers: int) -> tuple[Path, dict]:
    """Runs the cv stage on a fresh synthetic corpus (1 clip per class and speaker) under root;
    returns (workdir, summary)."""
    corpus = synthetic.write_synthetic_corpus(root / "corpus", speakers=speakers,
                                              clips_per_class=1)
    config.data.corpora = f"synthetic:{corpus}"
    workdir = root / "work"
    return workdir, cv.cross_validate(config, workdir)


def forbid_audio_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any audio loading fail the test (for checks that a cache is used)."""
    def no_audio(*args, **kwargs):
        raise AssertionError("audio loaded although the cache is complete")

    monkeypatch.setattr(audio, "load_clips", no_audio)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> Path:
    """XLA's persistent compilation cache inside this session's tmp folder, not ~/.cache; the
    subprocesses that tests start inherit it through JAX_COMPILATION_CACHE_DIR."""
    directory = tmp_path_factory.mktemp("xla_cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory
