"""End-to-end tests of the features stage on a tiny synthetic corpus (one batch shape: the
extractor compiles once per test session)."""

import json
import logging
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

from configs import default
from ser_jax.data import corpora, errors, splits, store
from ser_jax.data import labels as labels_file
from ser_jax.data.corpora import EMOTIONS
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.features import augment, clip_cache, feature_dir, inputs, pipeline
from ser_jax.features.scaler import Scaler
from tests.conftest import forbid_audio_loading

COLUMNS = [*FEATURE_NAMES, "label", "speaker", "corpus", "path", "augmentation"]


def tiny_config(**data):
    config = default.get_config()
    config.data.synthetic.speakers = 3
    config.data.synthetic.clips_per_class = 1
    config.data.augment.recipe = "none,noise"
    config.data.batch_size = 8  # every run below pads to (8, T): one compile
    config.data.update(data)
    return config


def mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = tiny_config()
    start = time.perf_counter()
    out = pipeline.prepare_features(config, root / "features")
    return root, out, config, time.perf_counter() - start


def test_writes_files_with_the_schema(run):
    root, out, _, _ = run
    assert out == root / "features"
    assert sorted(p.name for p in out.iterdir()) == sorted(feature_dir.OUTPUT_FILES)
    assert sorted(p.name for p in root.iterdir()) == ["features", "synthetic_corpus"]  # no temps
    assert (root / "synthetic_corpus" / "README.txt").is_file()
    assert labels_file.read_labels(out) == list(EMOTIONS)
    assert Scaler.load(out / "scaler.json").columns == list(FEATURE_NAMES)
    for split in splits.SPLITS:
        df = pd.read_parquet(out / f"{split}.parquet")
        assert list(df.columns) == COLUMNS
        assert (df[list(FEATURE_NAMES)].dtypes == np.float32).all()
        assert set(df["corpus"]) == {"synthetic"}
        x, y = store.load_split(out / f"{split}.parquet", list(EMOTIONS))
        assert x.shape == (len(df), len(FEATURE_NAMES)) and len(y) == len(df)


def test_rows_follow_the_split_and_recipe(run):
    _, out, _, _ = run
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in splits.SPLITS}
    speakers = [set(frames[s]["speaker"]) for s in splits.SPLITS]
    assert all(len(s) == 1 for s in speakers) and len(set.union(*speakers)) == 3
    train = frames["train"]
    assert len(train) == 7 * 2  # 1 speaker x 7 classes x 1 clip, recipe none,noise
    assert train["augmentation"].value_counts().to_dict() == {"none": 7, "noise": 7}
    assert sorted(train[train["augmentation"] == "noise"]["label"]) == sorted(EMOTIONS)
    for split in ("val", "test"):
        assert len(frames[split]) == 7 and set(frames[split]["augmentation"]) == {"none"}
    all_paths = pd.concat([frames[s]["path"] for s in splits.SPLITS])
    assert all_paths.nunique() == 21
    # Noise changes the features: the augmented rows are not copies.
    features = train[list(FEATURE_NAMES)].to_numpy()
    assert not np.allclose(features[:7], features[7:])


def test_scaler_is_fit_on_training_rows(run):
    _, out, _, _ = run
    scaler = Scaler.load(out / "scaler.json")
    train, _ = store.load_split(out / "train.parquet", list(EMOTIONS))
    val, _ = store.load_split(out / "val.parquet", list(EMOTIONS))
    varying = scaler.scale != 1.0
    assert varying.sum() > 200
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train[:, varying].std(axis=0), 1.0, atol=1e-3)
    assert np.abs(val.mean(axis=0)).max() > 0.1  # val is scaled with train's statistics


def test_manifest(run):
    _, out, config, _ = run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] is True
    assert manifest["data"] == {k: v for k, v in config.data.to_dict().items()
                                if k not in pipeline.SHARD_KEYS}
    assert manifest["extractor_version"]
    assert manifest["counts"]["rows"] == {"train": 14, "val": 7, "test": 7}
    for split in splits.SPLITS:
        assert manifest["counts"]["clips"][split] == dict.fromkeys(EMOTIONS, 1)
    assert manifest["rejects"] == {"count": 0, "items": []}
    assert manifest["skipped"] == {"count": 0, "examples": []}
    assert {"scan_s", "load_audio_s", "extract_s", "write_s", "total_s"} <= set(
        manifest["timings"])


def test_rerun_reuses_the_output(run, caplog, monkeypatch):
    root, out, config, first = run
    before = mtimes(out)
    caplog.set_level(logging.INFO)
    forbid_audio_loading(monkeypatch)
    assert pipeline.prepare_features(config, out) == out
    assert mtimes(out) == before
    assert "reusing" in caplog.text


def test_corrupt_file_and_bad_name_are_reported(run, tmp_path, monkeypatch, capsys):
    root, _, _, _ = run
    corpus = tmp_path / "corpus"
    shutil.copytree(root / "synthetic_corpus", corpus)
    corrupt = corpus / "spk01" / "synthetic_spk01_angry_099.wav"
    corrupt.write_bytes(b"RIFF but not really a wave file")
    bad_name = corpus / "spk02" / "hello.wav"
    shutil.copyfile(corpus / "spk02" / "synthetic_spk02_sad_000.wav", bad_name)
    out = tmp_path / "features"
    config = tiny_config(corpora=f"synthetic:{corpus}")
    pipeline.prepare_features(config, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] is False
    assert [r["path"] for r in manifest["rejects"]["items"]] == [str(corrupt)]
    assert manifest["skipped"]["count"] == 1
    assert manifest["skipped"]["examples"][0]["path"] == str(bad_name)
    assert sum(manifest["counts"]["rows"].values()) == 14 + 7 + 7
    printed = capsys.readouterr().out
    assert "rejected (unusable audio): 1" in printed and "hello.wav" in printed
    assert "angry" in printed and "speakers" in printed

    # A changed input recomputes; a failure mid-write leaves the previous output untouched.
    before = mtimes(out)
    os.utime(bad_name, ns=(time.time_ns(), time.time_ns() + 10**9))

    def fail(df, path):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_parquet_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        pipeline.prepare_features(config, out)
    assert mtimes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "features"]
    monkeypatch.undo()
    pipeline.prepare_features(config, out)
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] != manifest[
        "fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "features"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "notes.txt").write_text("mine")
    with pytest.raises(errors.DatasetError, match="other than"):
        pipeline.prepare_features(tiny_config(), tmp_path / "features")
    assert (tmp_path / "features" / "notes.txt").read_text() == "mine"


def test_bad_recipe_is_explained(run, tmp_path):
    root, _, _, _ = run
    config = tiny_config(corpora=f"synthetic:{root / 'synthetic_corpus'}")
    config.data.augment.recipe = "none,reverb"
    with pytest.raises(errors.DatasetError, match="reverb.*pitch_noise"):
        pipeline.prepare_features(config, tmp_path / "features")


def test_pitch_shift_is_shared_by_the_pitch_and_pitch_noise_rows(run, monkeypatch):
    root, _, config, _ = run
    scan = corpora.scan_corpora(f"synthetic:{root / 'synthetic_corpus'}")
    waves, clips, _ = inputs.load_audio(scan, config.data)
    indices = list(range(len(clips)))
    jobs = [(indices, "pitch"), (indices, "pitch_noise")]
    shifts = []
    shift = augment.pitch_shift
    monkeypatch.setattr(augment, "pitch_shift", lambda *a, **k: shifts.append(1) or shift(*a, **k))
    shared = pipeline._extract_jobs(waves, clips, jobs, config.seed, config.data)
    batches = -(-len(clips) // config.data.batch_size)
    assert len(shifts) == batches  # once per batch, not once per batch and job
    monkeypatch.undo()
    with tqdm(disable=True) as bar:  # each job alone, through augment.augment
        for (indices, kind), (x, _) in zip(jobs, shared, strict=True):
            keys = pipeline.row_keys(config.seed, kind, clips)
            alone, _ = pipeline._extract(waves, indices, kind, keys, config.data.batch_size,
                                        config.data, bar)
            np.testing.assert_array_equal(x, alone)


def test_the_features_stage_and_the_cv_clip_cache_give_the_same_rows(run, tmp_path):
    """One pipeline: the same seed and clip give the same augmented row in both, and the
    validation and test rows are the unaugmented ("none") rows of their clips."""
    root, out, config, _ = run
    cached = clip_cache.clip_features(config, tmp_path / "cache", ["none", "noise"], root)
    index = {c.path: i for i, c in enumerate(cached.clips)}
    scaler = Scaler.load(out / "scaler.json")
    for split in splits.SPLITS:
        frame = pd.read_parquet(out / f"{split}.parquet")
        for kind, rows in frame.groupby("augmentation"):
            raw = cached.features[kind][[index[p] for p in rows["path"]]]
            np.testing.assert_allclose(rows[list(FEATURE_NAMES)].to_numpy(),
                                       scaler.transform(raw), atol=1e-3, err_msg=f"{split}/{kind}")
