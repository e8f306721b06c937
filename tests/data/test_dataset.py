"""Tests for ser_jax.data (splits, store, labels) and the feature scaler."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ser_jax.core.files import write_json_atomic
from ser_jax.data.corpora import EMOTIONS, Clip
from ser_jax.data.errors import DatasetError
from ser_jax.data.labels import read_labels
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.data.splits import split_clips
from ser_jax.data.store import load_split, make_frame, write_parquet_atomic
from ser_jax.features.scaler import Scaler


def make_clips(sizes, classes=EMOTIONS):
    """sizes[s] clips per class for speaker s (speaker ids "t_00", "t_01", ...)."""
    clips = []
    for s, per_class in enumerate(sizes):
        for emotion in classes:
            for k in range(per_class):
                clips.append(Clip(f"/c/{s}_{emotion}_{k}.wav", "t", f"t_{s:02d}", emotion))
    return clips


def speakers_of(clips, indices):
    return {clips[i].speaker for i in indices}


def check_partition(clips, splits):
    assert set(splits) == {"train", "val", "test"}
    every = sorted(i for indices in splits.values() for i in indices)
    assert every == list(range(len(clips)))  # each index exactly once
    for indices in splits.values():
        assert indices == sorted(indices)


@pytest.mark.parametrize("sizes", [[1] * 4, [2] * 24, [1, 5, 2, 8, 3, 1, 4, 2, 6, 1], [1] * 3])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_speaker_split_invariants(sizes, seed):
    clips = make_clips(sizes)
    splits = split_clips(clips, seed=seed)
    check_partition(clips, splits)
    groups = [speakers_of(clips, splits[n]) for n in ("train", "val", "test")]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert all(groups), "every split gets at least one speaker when there are >= 3"


def test_speaker_split_is_stratified_and_near_the_fractions():
    clips = make_clips([2] * 24)
    splits = split_clips(clips, val_fraction=0.15, test_fraction=0.15, seed=3)
    for name in ("val", "test"):
        assert abs(len(splits[name]) / len(clips) - 0.15) < 0.05
        per_class = Counter(clips[i].emotion for i in splits[name])
        assert set(per_class) == set(EMOTIONS)
        assert len(set(per_class.values())) == 1  # balanced speakers -> balanced classes


def test_uneven_class_coverage_stays_stratified():
    # Speakers 0-5 only speak "angry"/"sad"; 6-11 the other classes: both kinds end up in val.
    clips = make_clips([3] * 6, classes=("angry", "sad")) + [
        Clip(f"/d/{s}_{e}.wav", "t", f"u_{s}", e)
        for s in range(6) for e in EMOTIONS if e not in ("angry", "sad")
    ]
    splits = split_clips(clips, val_fraction=0.3, test_fraction=0.0, seed=0)
    check_partition(clips, splits)
    assert {clips[i].emotion for i in splits["val"]} == set(EMOTIONS)


def test_speaker_split_is_deterministic_per_seed():
    clips = make_clips([2] * 24)
    assert split_clips(clips, seed=5) == split_clips(clips, seed=5)
    assert split_clips(clips, seed=5) != split_clips(clips, seed=6)


def test_explicit_speaker_lists_win():
    clips = make_clips([1] * 6)
    splits = split_clips(clips, val_speakers=["t_01"], test_speakers=("t_04", "t_05"))
    check_partition(clips, splits)
    assert speakers_of(clips, splits["val"]) == {"t_01"}
    assert speakers_of(clips, splits["test"]) == {"t_04", "t_05"}
    assert speakers_of(clips, splits["train"]) == {"t_00", "t_02", "t_03"}


def test_explicit_test_list_with_val_fraction():
    clips = make_clips([1] * 10)
    splits = split_clips(clips, val_fraction=0.2, test_speakers=["t_09"])
    check_partition(clips, splits)
    assert speakers_of(clips, splits["test"]) == {"t_09"}
    assert len(speakers_of(clips, splits["val"])) == 2
    assert not speakers_of(clips, splits["val"]) & speakers_of(clips, splits["train"])


def test_unknown_speaker_lists_the_valid_ones():
    clips = make_clips([1] * 4)
    with pytest.raises(DatasetError, match=r"t_99.*t_00, t_01, t_02, t_03"):
        split_clips(clips, val_speakers=["t_99"])
    with pytest.raises(DatasetError, match="both"):
        split_clips(clips, val_speakers=["t_01"], test_speakers=["t_01"])
    with pytest.raises(DatasetError, match="at least one speaker for training"):
        split_clips(clips, val_speakers=["t_00", "t_01"], test_speakers=["t_02", "t_03"])


def test_zero_test_fraction_gives_empty_test_split():
    clips = make_clips([1] * 2)
    splits = split_clips(clips, test_fraction=0.0)
    check_partition(clips, splits)
    assert splits["test"] == []
    assert len(speakers_of(clips, splits["val"])) == 1
    assert split_clips(clips[:7], val_fraction=0, test_fraction=0)["train"] == list(range(7))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs one speaker per split"),  # 2 speakers for 3 splits
        ({"mode": "bogus"}, "Unknown split mode"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "below 1"),
        ({"val_fraction": -0.1}, r"\[0, 1\)"),
        ({"mode": "file", "val_speakers": ["t_00"]}, "only apply to mode='speaker'"),
    ],
)
def test_impossible_splits_explain(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        split_clips(make_clips([1] * 2), **kwargs)


def test_empty_clip_list():
    with pytest.raises(DatasetError, match="empty"):
        split_clips([])


def test_file_split_is_stratified_by_class():
    clips = make_clips([5] * 4)  # 20 clips per class
    splits = split_clips(clips, mode="file", val_fraction=0.15, test_fraction=0.15, seed=2)
    check_partition(clips, splits)
    for name in ("val", "test"):
        assert Counter(clips[i].emotion for i in splits[name]) == dict.fromkeys(EMOTIONS, 3)
    assert split_clips(clips, mode="file", seed=2) == splits
    assert split_clips(clips, mode="file", seed=3) != splits


def test_file_split_with_few_clips():
    clips = make_clips([1], classes=("angry", "sad", "fear"))
    splits = split_clips(clips, mode="file")
    check_partition(clips, splits)
    assert all(len(v) == 1 for v in splits.values())
    with pytest.raises(DatasetError, match="Only 2 clip"):
        split_clips(clips[:2], mode="file")


# --------------------------------------------------------------------------- scaler


def test_scaler_fits_training_rows_only_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 2.0, (200, 3)).astype(np.float32)
    train[:, 2] = 7.0  # constant column: scale 1, no division by zero
    test = rng.normal(50.0, 2.0, (10, 3)).astype(np.float32)
    scaler = Scaler.fit(train, columns=["a", "b", "c"])
    z = scaler.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z[:, 2], 0.0)
    assert scaler.scale[2] == 1.0
    assert scaler.transform(test)[:, 0].mean() > 10  # not refit on the test rows

    scaler.save(tmp_path / "scaler.json")
    assert set(json.loads((tmp_path / "scaler.json").read_text())) == {"columns", "mean", "scale"}
    loaded = Scaler.load(tmp_path / "scaler.json")
    assert loaded.columns == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.transform(test), scaler.transform(test))
    assert list(tmp_path.iterdir()) == [tmp_path / "scaler.json"]


def test_scaler_errors(tmp_path):
    with pytest.raises(DatasetError, match="shape"):
        Scaler.fit(np.zeros((0, 270)))
    with pytest.raises(DatasetError, match="not found"):
        Scaler.load(tmp_path / "nope.json")
    write_json_atomic(tmp_path / "bad.json", {"columns": ["a"], "mean": [0.0]})
    with pytest.raises(DatasetError, match="malformed"):
        Scaler.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------- parquet


def frame(n=4, labels=("angry", "sad")):
    clips = [Clip(f"/c/{i}.wav", "t", f"t_{i % 2}", labels[i % len(labels)]) for i in range(n)]
    x = np.arange(n * len(FEATURE_NAMES), dtype=np.float32).reshape(n, -1)
    return make_frame(x, clips, "none")


def test_write_parquet_atomic_leaves_no_temp_files(tmp_path):
    path = tmp_path / "train.parquet"
    write_parquet_atomic(frame(), path)
    write_parquet_atomic(frame(6), path)  # overwrite in place
    assert list(tmp_path.iterdir()) == [path]
    df = pd.read_parquet(path)
    assert list(df.columns) == [*FEATURE_NAMES, "label", "speaker", "corpus", "path",
                                "augmentation"]
    assert len(df) == 6 and df[FEATURE_NAMES[0]].dtype == np.float32

    bad = pd.DataFrame({"mixed": [1, "a"]})  # pyarrow cannot convert: the write fails
    with pytest.raises(Exception, match="mixed|Conversion|convert"):
        write_parquet_atomic(bad, path)
    assert list(tmp_path.iterdir()) == [path]
    assert len(pd.read_parquet(path)) == 6  # the old file survives a failed write


def test_load_split_reads_features_and_label_ids(tmp_path):
    path = tmp_path / "train.parquet"
    write_parquet_atomic(frame(), path)
    x, y = load_split(path, ["sad", "angry"])
    assert x.shape == (4, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.tolist() == [1, 0, 1, 0]
    assert x[1, 0] == len(FEATURE_NAMES)


def _corrupt(df, how):
    if how == "missing":
        return df.drop(columns=["mfcc_005", "label"])
    if how == "nan":
        df.loc[[0, 2], "mel_003"] = np.nan
        return df
    if how == "inf":
        df.loc[1, "rms"] = np.inf
        return df
    if how == "label":
        df.loc[0, "label"] = "bored"
        return df
    return df.iloc[:0]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", r"missing 2 column\(s\): mfcc_005, label"),
        ("nan", r"2 of 4 rows.*mel_003 \(2 NaN, 0 inf\)"),
        ("inf", r"1 of 4 rows.*rms \(0 NaN, 1 inf\)"),
        ("label", r"unknown label\(s\) 'bored' \(1 rows\); known labels: angry, sad"),
        ("empty", r"empty \(0 rows\)"),
    ],
)
def test_load_split_rejects_bad_files(tmp_path, how, message):
    path = tmp_path / "val.parquet"
    write_parquet_atomic(_corrupt(frame(), how), path)
    with pytest.raises(DatasetError, match=message) as info:
        load_split(path, ["angry", "sad"])
    assert str(path) in str(info.value) and "features stage" in str(info.value)


def test_load_split_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_split(tmp_path / "test.parquet", ["angry"])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        load_split(tmp_path / "junk.parquet", ["angry"])


def test_read_labels(tmp_path):
    write_json_atomic(tmp_path / "labels.json", {"labels": list(EMOTIONS)})
    assert read_labels(tmp_path) == list(EMOTIONS)
    write_json_atomic(tmp_path / "labels.json", {"labels": ["a", "a"]})
    with pytest.raises(DatasetError, match="unique"):
        read_labels(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        read_labels(tmp_path / "nowhere")
