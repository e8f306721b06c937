"""The sharded features stage: shards merged equal the single-process output."""

import json

import numpy as np
import pandas as pd
import pytest

from ser_jax.data import synthetic
from ser_jax.data.errors import DatasetError
from ser_jax.data.splits import SPLITS
from ser_jax.features import pipeline, shards
from ser_jax.features.scaler import SCALER_FILE, SEQUENCE_SCALER_FILE, Scaler
from tests.features.test_pipeline import tiny_config


def test_chan_merge_matches_one_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(1e4, 3.0, size=(1000, 5))  # a large mean: naive sums of squares cancel
    parts = np.split(x, [1, 300, 300, 999])
    merged = shards.Moments.of(parts[0], 5)
    for part in parts[1:]:
        merged = merged.merge(shards.Moments.of(part, 5))
    assert merged.count == 1000
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.m2 / 1000, x.var(axis=0), rtol=1e-9)


def test_shard_of_is_stable_and_spreads():
    assert shards.shard_of("/data/a.wav", 4) == shards.shard_of("/data/a.wav", 4)
    counts = np.bincount([shards.shard_of(f"/c/{i}.wav", 4) for i in range(400)], minlength=4)
    assert counts.min() > 60
    # The value, fixed by SHA-256, is the same in every process and Python version.
    assert shards.shard_of("/data/a.wav", 1000) == int.from_bytes(
        __import__("hashlib").sha256(b"/data/a.wav").digest()[:8], "big") % 1000


@pytest.mark.parametrize("sequences", [False, True], ids=["clip", "sequences"])
def test_merged_shards_equal_the_unsharded_stage(tmp_path, sequences):
    config = tiny_config(sequences=sequences)
    config.data.augment.recipe = "none,noise,pitch_noise"
    corpus = synthetic.write_synthetic_corpus(tmp_path / "corpus", speakers=3, clips_per_class=1)
    config.data.corpora = f"synthetic:{corpus}"  # one corpus: clip paths are the shard keys
    whole = pipeline.prepare_features(config, tmp_path / "whole" / "features")
    sharded = tmp_path / "sharded" / "features"
    config.data.num_shards = 3
    with pytest.raises(DatasetError, match="shard 0 of 3 is missing"):
        pipeline.merge_features(config, sharded)
    for k in range(3):
        config.data.shard = k
        folder = pipeline.prepare_features(config, sharded)
        assert folder == shards.ShardRows.folder(sharded, k, 3) and folder.is_dir()
        assert not sharded.exists()
    assert pipeline.merge_features(config, sharded) == sharded

    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in whole.iterdir())
    for split in SPLITS:
        a = pd.read_parquet(whole / f"{split}.parquet")
        b = pd.read_parquet(sharded / f"{split}.parquet")
        # Same rows in the same order; features equal to float32 rounding of the
        # standardization (the scalers differ only in the last bits of the moments).
        meta = ["label", "speaker", "corpus", "path", "augmentation"]
        pd.testing.assert_frame_equal(a[meta], b[meta])
        np.testing.assert_allclose(a.drop(columns=meta), b.drop(columns=meta),
                                   rtol=0, atol=1e-5)
        if sequences:
            np.testing.assert_allclose(np.load(whole / f"{split}.sequences.npy"),
                                       np.load(sharded / f"{split}.sequences.npy"), atol=2e-3)
    for name in [SCALER_FILE] + ([SEQUENCE_SCALER_FILE] if sequences else []):
        s, t = Scaler.load(whole / name), Scaler.load(sharded / name)
        np.testing.assert_allclose(t.mean, s.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(t.scale, s.scale, rtol=1e-9)
    m, n = (json.loads((d / "manifest.json").read_text()) for d in (whole, sharded))
    for key in ("fingerprint", "counts", "rejects", "data", "labels", "corpora"):
        assert m[key] == n[key]
    # Each shard held some of the clips, and the noise rows are not copies of the clean ones.
    train = pd.read_parquet(sharded / "train.parquet")
    assert not np.allclose(train[train.augmentation == "none"].iloc[:, :270].to_numpy(),
                           train[train.augmentation == "noise"].iloc[:, :270].to_numpy())
