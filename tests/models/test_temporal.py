"""The temporal model end to end: frame sequences from the data stage, per-band scaling, the
cv stage training temporal_cnn folds (checkpoints, evaluation) and prediction from a bundle."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import temporal
from ser_jax.data import audio, errors, splits, store
from ser_jax.data.corpora import EMOTIONS
from ser_jax.evaluation import cv
from ser_jax.features import clip_cache, extractor, pipeline
from ser_jax.features.scaler import SEQUENCE_SCALER_FILE, Scaler
from ser_jax.inference import bundle
from ser_jax.models import registry
from ser_jax.training import loop
from tests.conftest import cross_validate_synthetic, forbid_audio_loading

SPEAKERS = 6
FOLDS = 3
FRAMES = extractor.num_frames(round(22050 * 2.5))  # 108
BANDS = len(extractor.SEQUENCE_NAMES)


def temporal_config():
    config = temporal.get_config()
    config.model.filters = 8
    config.train.epochs = 2
    config.train.batch_size = 8
    config.train.mixup_alpha = 0.2  # exercise the soft-target path too
    config.data.augment.recipe = "none,noise"
    config.data.batch_size = 8  # one extractor compile
    config.cv.folds = FOLDS
    return config


def test_temporal_model_shapes_and_size():
    config = temporal.get_config().model
    config.ensemble = ""  # one network (test_ensemble.py covers the members)
    model = registry.create_model(config, num_classes=7)
    x = jnp.zeros((3, FRAMES, BANDS))
    variables = model.init(jax.random.key(0), x, train=False)
    assert model.apply(variables, x, train=False).shape == (3, 7)
    # conv widths 64, 128, 128, 256 (kernel 5, no bias), BatchNorm scale+bias, Dense 512->128->7
    convs = 5 * (BANDS * 64 + 64 * 128 + 128 * 128 + 128 * 256)
    norms = 2 * (64 + 128 + 128 + 256)
    assert registry.count_parameters(variables["params"]) == convs + norms + 513 * 128 + 129 * 7
    out = model.apply(variables, jnp.ones((2, 50, BANDS)), train=True, dropout_rate=0.5,
                      rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])[0]
    assert out.shape == (2, 7)  # any number of frames: global pooling


def test_centered_model_ignores_a_constant_offset_per_band():
    config = temporal.get_config().model
    config.center, config.filters, config.ensemble = True, 8, ""
    model = registry.create_model(config, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (2, FRAMES, BANDS))
    offset = jax.random.normal(jax.random.key(1), (2, 1, BANDS)) * 3.0
    variables = model.init(jax.random.key(2), x, train=False)
    np.testing.assert_allclose(model.apply(variables, x, train=False),
                               model.apply(variables, x + offset, train=False), atol=1e-4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = temporal_config()
    workdir, summary = cross_validate_synthetic(tmp_path_factory.mktemp("temporal"), config,
                                                SPEAKERS)
    return workdir, config, summary


def _fold_dir(workdir, k):
    return workdir / "cv" / f"fold_{k:02d}"


def test_cv_trains_evaluates_and_checkpoints_every_temporal_fold(run):
    workdir, _, summary = run
    assert summary["folds"] == FOLDS
    assert np.asarray(summary["confusion_matrix"]).sum() == SPEAKERS * 7
    for metric in cv.METRICS:
        assert 0.0 <= summary[metric]["mean"] <= 1.0
    for k in range(FOLDS):
        fold = _fold_dir(workdir, k)
        for name in ("members/0/checkpoints", "members/1/checkpoints",
                     "bundle/variables.msgpack", "bundle/sequence_scaler.json",
                     "evaluation/metrics.json", "features/sequence_scaler.json"):
            assert (fold / name).exists(), name
        result = json.loads((fold / "train_result.json").read_text())
        assert result["epochs_run"] == [2, 2]  # configs/temporal.py: an ensemble of two
        assert [m["variant"] for m in result["members"]] == ["plain", "centered"]


def test_sequences_match_parquet_rows_and_are_standardized_on_training_rows(run):
    workdir, _, _ = run
    dct = extractor.dct_matrix(extractor.N_MELS)[: extractor.N_MFCC]
    means = []
    for k in range(FOLDS):
        directory = _fold_dir(workdir, k) / "features"
        scaler = Scaler.load(directory / "scaler.json")
        sequence_scaler = Scaler.load(directory / SEQUENCE_SCALER_FILE)
        assert sequence_scaler.columns == list(extractor.SEQUENCE_NAMES)
        means.append(sequence_scaler.mean)
        for split in splits.SPLITS:
            stored = np.load(store.sequence_path(directory, split))
            assert stored.dtype == np.float16
            x, y = store.load_inputs(directory, split, list(EMOTIONS), "sequence")
            rows = pd.read_parquet(directory / f"{split}.parquet")
            assert x.shape == (len(rows), FRAMES, BANDS) and len(y) == len(rows)
            if split == "train":  # per band, over training rows and frames
                flat = x.reshape(-1, BANDS)
                assert np.abs(flat.mean(0)).max() < 1e-2
                assert np.abs(flat.std(0) - 1.0).max() < 1e-2
            # Row i's sequence is row i's clip: the mean log-mel's DCT is its MFCC row.
            raw = x.astype(np.float64) * sequence_scaler.scale + sequence_scaler.mean
            mfcc = raw.mean(axis=1) @ dct.T
            clip = rows[list(extractor.FEATURE_NAMES)].to_numpy(np.float64)
            clip = clip * scaler.scale + scaler.mean
            np.testing.assert_allclose(mfcc, clip[:, -extractor.N_MFCC:], atol=0.05)
    assert not np.allclose(means[0], means[1])  # one scaler per fold


def test_bundle_predicts_from_audio_as_training_saw_it(run):
    workdir, config, _ = run
    fold = _fold_dir(workdir, 0)
    model = bundle.load(fold / "bundle")
    rows = pd.read_parquet(fold / "features" / "test.parquet")
    stored, _ = store.load_inputs(fold / "features", "test", model.labels, "sequence")
    waves, loaded, rejects = audio.load_clips(
        rows["path"].tolist(), sample_rate=config.data.sample_rate, offset=config.data.offset,
        duration=config.data.duration)
    assert not rejects
    np.testing.assert_allclose(model.inputs(waves), stored, atol=0.02)
    results = model.predict_files(rows["path"].tolist())
    predicted = [EMOTIONS.index(r["emotion"]) for r in results]
    report = json.loads((fold / "evaluation" / "metrics.json").read_text())
    matrix = np.zeros((7, 7), np.int64)
    np.add.at(matrix, ([EMOTIONS.index(label) for label in rows["label"]], predicted), 1)
    assert matrix.tolist() == report["confusion_matrix"]
    for r in results:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_clip_cache_holds_sequences_and_is_reused(run, monkeypatch):
    workdir, config, _ = run
    cache = workdir / "cv" / "clip_features"
    assert (cache / f"none.{store.SEQUENCES_SUFFIX}").is_file()

    forbid_audio_loading(monkeypatch)  # served from the cache: no audio is read
    cached = clip_cache.clip_features(config, cache, ["none", "noise"], workdir)
    assert cached.sequences["noise"].shape == (SPEAKERS * 7, FRAMES, BANDS)
    assert not np.allclose(cached.sequences["none"], cached.sequences["noise"])


def test_features_stage_writes_sequences_and_training_needs_them(run, tmp_path):
    workdir, config, _ = run
    config.data.split.val_fraction = config.data.split.test_fraction = 0.2
    out = pipeline.prepare_features(config, tmp_path / "features")
    for split in splits.SPLITS:
        x, y = store.load_inputs(out, split, list(EMOTIONS), "sequence")
        assert x.shape[1:] == (FRAMES, BANDS) and len(x) == len(y) > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["sequences"] is True
    store.sequence_path(out, "val").unlink()
    with pytest.raises(errors.DatasetError, match=r"val\.sequences\.npy.*data\.sequences=True"):
        loop.train_and_evaluate(config, tmp_path / "run", features_dir=out)
