"""The cv stage: speaker folds, the per-clip feature cache, per-fold scaling, an end-to-end run on
a tiny synthetic corpus (6 speakers, 3 folds, 2 epochs, narrow model), resuming and the CLI."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ser_jax.data import errors, splits, store
from ser_jax.data.corpora import EMOTIONS, Clip
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.evaluation import cv
from ser_jax.features import clip_cache, pipeline
from ser_jax.features.scaler import Scaler
from ser_jax.training import loop
from tests.conftest import REPO, cross_validate_synthetic, forbid_audio_loading, tiny_config

SPEAKERS = 6
FOLDS = 3


def fake_clips(speakers: dict[str, int], corpus: str = "ravdess") -> list[Clip]:
    """`count` clips per speaker; odd-numbered speakers male, even female (as in RAVDESS)."""
    return [Clip(f"{s}_{k}.wav", corpus, s, EMOTIONS[k % 7],
                 "male" if int(s.split("_")[-1]) % 2 else "female")
            for s, count in speakers.items() for k in range(count)]


def ravdess_like(count: int = 16) -> list[Clip]:
    return fake_clips({f"ravdess_{i:02d}": 60 for i in range(1, count + 1)})


def check_partition(folds: list[cv.Fold], speakers: set[str]) -> None:
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == sorted(speakers)  # every speaker in exactly one test fold
    for f in folds:
        train, val, test = map(set, (f.train, f.val, f.test))
        assert train and val and test
        assert not train & val and not train & test and not val & test
        assert train | val | test == speakers


# --------------------------------------------------------------------------- folds (no JAX)


def test_ravdess_folds_pair_one_man_and_one_woman():
    clips = ravdess_like()
    groups = cv.assign_speakers(clips, 8, seed=0)
    folds = cv.make_folds(groups)
    check_partition(folds, {c.speaker for c in clips})
    gender = {c.speaker: c.gender for c in clips}
    for group in groups:
        assert sorted(gender[s] for s in group) == ["female", "male"]
    for k, fold in enumerate(folds):
        assert fold.index == k and fold.val == tuple(groups[(k + 1) % 8])
    assert cv.assign_speakers(clips, 8, seed=0) == groups  # deterministic per seed
    assert cv.assign_speakers(list(reversed(clips)), 8, seed=0) == groups
    assert any(cv.assign_speakers(clips, 8, seed=s) != groups for s in range(1, 4))


@pytest.mark.parametrize("folds", [3, 4, 5, 7])
def test_uneven_folds_balance_speakers_and_clips(folds):
    counts = {f"emodb_{i:02d}": 20 + 7 * i for i in range(1, 8)}
    clips = fake_clips(counts, "emodb") + fake_clips({"tess_02": 50, "tess_04": 45}, "tess")
    groups = cv.assign_speakers(clips, folds, seed=3)
    check_partition(cv.make_folds(groups), set(counts) | {"tess_02", "tess_04"})
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1
    tess_folds = {k for k, g in enumerate(groups) for s in g if s.startswith("tess")}
    assert len(tess_folds) == 2  # a corpus' speakers are spread over the folds
    if folds <= 4:  # swaps even out the folds' clip counts (greedy alone: 102 vs 167 for 3)
        totals = [sum({**counts, "tess_02": 50, "tess_04": 45}[s] for s in g) for g in groups]
        assert max(totals) - min(totals) <= 0.15 * np.mean(totals)


def test_too_few_speakers_or_folds_are_explained():
    clips = ravdess_like(4)
    with pytest.raises(errors.DatasetError, match=r"cv.folds=5 needs at least 5 speakers.*4"):
        cv.assign_speakers(clips, 5)
    with pytest.raises(errors.DatasetError, match=r"cv.folds=2 is too few.*between 3 and 4"):
        cv.assign_speakers(clips, 2)
    with pytest.raises(errors.DatasetError, match="at least 3 speakers.*has 2"):
        cv.assign_speakers(ravdess_like(2), 3)
    check_partition(cv.make_folds(cv.assign_speakers(clips, 4)), {c.speaker for c in clips})


# --------------------------------------------------------------------------- end to end


def cv_config():
    config = tiny_config(epochs=2)
    config.data.augment.recipe = "none,noise"
    config.data.batch_size = 8  # one extractor compile
    config.cv.folds = FOLDS
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = cv_config()
    start = time.perf_counter()
    workdir, summary = cross_validate_synthetic(tmp_path_factory.mktemp("cv"), config, SPEAKERS)
    return workdir, config, summary, time.perf_counter() - start


def test_summary_has_finite_metrics_and_the_summed_matrix(run):
    workdir, _, summary, _ = run
    saved = json.loads((workdir / "cv" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["folds"] == FOLDS and len(saved["per_fold"]) == FOLDS
    assert saved["clips"] == SPEAKERS * 7 and saved["recipe"] == ["none", "noise"]
    for metric in cv.METRICS:
        assert np.isfinite([saved[metric]["mean"], saved[metric]["std"]]).all()
        assert 0.0 <= saved[metric]["mean"] <= 1.0
        assert saved[metric]["mean"] == pytest.approx(
            np.mean([f[metric] for f in saved["per_fold"]]))
    matrix = np.asarray(saved["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == SPEAKERS * 7
    assert matrix.sum(1).tolist() == [SPEAKERS] * 7  # each clip tested once, unaugmented
    assert all(f["epochs_run"] == 2 and f["best_epoch"] in (1, 2) for f in saved["per_fold"])
    assert set(saved["per_class_recall"]) == set(EMOTIONS)
    assert all(np.isfinite(r["pooled"]) for r in saved["per_class_recall"].values())
    png = (workdir / "cv" / "confusion_matrix.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    csv = pd.read_csv(workdir / "cv" / "confusion_matrix.csv", index_col=0)
    assert csv.to_numpy().tolist() == matrix.tolist()
    tested = sorted(s for f in saved["per_fold"] for s in f["test_speakers"])
    assert tested == [f"synthetic_{i:02d}" for i in range(1, SPEAKERS + 1)]


def test_predictions_hold_every_clip_once_out_of_fold(run):
    workdir, _, summary, _ = run
    rows = pd.read_csv(workdir / "cv" / "predictions.csv")
    assert len(rows) == SPEAKERS * 7 and rows["path"].is_unique
    for f in summary["per_fold"]:  # each clip scored by the fold that tests its speaker
        assert set(rows.loc[rows["fold"] == f["fold"], "speaker"]) == set(f["test_speakers"])
    probabilities = rows[[f"p_{label}" for label in EMOTIONS]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert (rows["predicted"] == [EMOTIONS[i] for i in probabilities.argmax(1)]).all()
    matrix = pd.crosstab(rows["label"], rows["predicted"]).reindex(
        index=EMOTIONS, columns=EMOTIONS, fill_value=0)
    assert matrix.to_numpy().tolist() == summary["confusion_matrix"]


def test_fold_dirs_hold_a_training_workdir_per_fold(run):
    workdir, _, summary, _ = run
    for f in summary["per_fold"]:
        fold_dir = workdir / "cv" / f"fold_{f['fold']:02d}"
        for name in ("features/train.parquet", "features/manifest.json", "train_result.json",
                     "bundle/variables.msgpack", "evaluation/metrics.json",
                     "evaluation/confusion_matrix.png"):
            assert (fold_dir / name).is_file(), name
        report = json.loads((fold_dir / "evaluation" / "metrics.json").read_text())
        assert report["split"] == "test" and report["rows"] == f["rows"]
        speakers = {s: set(pd.read_parquet(fold_dir / "features" / f"{s}.parquet",
                                           columns=["speaker"])["speaker"])
                    for s in splits.SPLITS}
        assert speakers["test"] == set(f["test_speakers"])
        assert speakers["val"] == set(f["val_speakers"])
        assert not speakers["train"] & (speakers["val"] | speakers["test"])
        train_rows = pd.read_parquet(fold_dir / "features" / "train.parquet",
                                     columns=["augmentation"])
        assert train_rows["augmentation"].value_counts().to_dict() == {"none": 14, "noise": 14}
        for split in ("val", "test"):
            rows = pd.read_parquet(fold_dir / "features" / f"{split}.parquet")
            assert set(rows["augmentation"]) == {"none"}


def test_scaler_is_fit_per_fold_on_its_training_rows(run):
    workdir, config, _, _ = run
    cached = clip_cache.clip_features(config, workdir / "cv" / "clip_features", ["none", "noise"],
                                   workdir)
    means = []
    for k in range(FOLDS):
        features = workdir / "cv" / f"fold_{k:02d}" / "features"
        scaler = Scaler.load(features / "scaler.json")
        train_speakers = set(json.loads((features / "manifest.json").read_text())[
            "speakers"]["train"])
        rows = [i for i, c in enumerate(cached.clips) if c.speaker in train_speakers]
        raw = np.concatenate([cached.features[kind][rows] for kind in ("none", "noise")])
        np.testing.assert_allclose(scaler.mean, raw.astype(np.float64).mean(0), rtol=1e-6,
                                   atol=1e-6)
        x, _ = store.load_split(features / "train.parquet", list(EMOTIONS))
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
        test_x, _ = store.load_split(features / "test.parquet", list(EMOTIONS))
        assert np.abs(test_x.mean(0)).max() > 0.1  # scaled with train's statistics
        means.append(scaler.mean)
    assert not np.allclose(means[0], means[1])  # one scaler per fold


def test_clip_features_are_cached_and_extended_per_kind(run, tmp_path, monkeypatch):
    workdir, config, _, _ = run
    cache = workdir / "cv" / "clip_features"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["kinds"] == ["noise", "none"] and len(manifest["clips"]) == SPEAKERS * 7

    forbid_audio_loading(monkeypatch)  # served from the cache: no audio is read
    cached = clip_cache.clip_features(config, cache, ["none", "noise"], workdir)
    assert set(cached.features) == {"none", "noise"}
    assert cached.features["none"].shape == (SPEAKERS * 7, len(FEATURE_NAMES))
    assert not np.allclose(cached.features["none"], cached.features["noise"])
    monkeypatch.undo()

    copy = tmp_path / "clip_features"
    shutil.copytree(cache, copy)
    extracted = []
    real = pipeline._extract_jobs
    monkeypatch.setattr(pipeline, "_extract_jobs", lambda waves, clips, jobs, seed, data: (
        extracted.extend(kind for _, kind in jobs) or real(waves, clips, jobs, seed, data)))
    more = clip_cache.clip_features(config, copy, ["noise", "shift", "none"], workdir)
    assert extracted == ["shift"]  # only the missing kind
    for kind in ("none", "noise"):
        np.testing.assert_array_equal(more.features[kind], cached.features[kind])
    assert json.loads((copy / "manifest.json").read_text())["kinds"] == ["noise", "none", "shift"]


def test_rerun_skips_finished_folds_and_resumes_an_unfinished_one(run, monkeypatch, capsys):
    workdir, config, summary, first = run
    results = sorted((workdir / "cv").glob("fold_*/train_result.json"))
    before = {p: p.stat().st_mtime_ns for p in results}
    trained = []
    real = loop.train_and_evaluate

    def spy(config, fold_dir):
        trained.append(fold_dir.name)
        return real(config, fold_dir)

    monkeypatch.setattr(loop, "train_and_evaluate", spy)
    assert cv.cross_validate(config, workdir) == summary
    assert trained == []
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert "mean" in capsys.readouterr().out

    # As if killed after fold 1's training but before its result was written.
    fold = workdir / "cv" / "fold_01"
    (fold / "train_result.json").unlink()
    shutil.rmtree(fold / "evaluation")
    again = cv.cross_validate(config, workdir)
    assert trained == ["fold_01"]
    assert json.loads((fold / "train_result.json").read_text())["epochs_run"] == 2
    assert again["per_fold"][1]["accuracy"] == summary["per_fold"][1]["accuracy"]


def test_a_fold_made_with_other_settings_starts_again(run, tmp_path, monkeypatch):
    workdir, config, _, _ = run
    fold_dir = tmp_path / "fold_00"
    shutil.copytree(workdir / "cv" / "fold_00", fold_dir)
    cached = clip_cache.clip_features(config, workdir / "cv" / "clip_features", ["none", "noise"],
                                   workdir)
    fold = cv.make_folds(cv.assign_speakers(cached.clips, FOLDS, config.seed))[0]
    calls = []

    def fake_train(config, fold_dir):
        calls.append("train")
        (fold_dir / "train_result.json").write_text('{"best_epoch": 1, "epochs_run": 1}')

    monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
    monkeypatch.setattr(cv.evaluate, "evaluate", lambda d: calls.append("evaluate") or {})

    def rerun(config):
        return cv.run_fold(config, cached, fold, ["none", "noise"], list(EMOTIONS), fold_dir)

    faster = config.copy_and_resolve_references()
    faster.train.eval_batch_size = 32  # how it runs, not what it computes: still finished
    stored = {**json.loads((fold_dir / "evaluation" / "metrics.json").read_text()),
              "training": json.loads((fold_dir / "train_result.json").read_text())}
    assert rerun(faster) == stored and calls == []
    wider = config.copy_and_resolve_references()
    wider.model.filters = 16
    assert rerun(wider)["training"]["epochs_run"] == 1
    assert calls == ["train", "evaluate"]
    assert not (fold_dir / "checkpoints").exists() and not (fold_dir / "bundle").exists()
    assert (fold_dir / "features" / "train.parquet").is_file()


def test_cv_from_the_command_line_reuses_the_finished_folds(run):
    workdir, config, summary, _ = run
    flags = [f"--config.data.corpora={config.data.corpora}",
             "--config.data.augment.recipe=none,noise", "--config.data.batch_size=8",
             "--config.model.filters=8", "--config.train.batch_size=16",
             "--config.train.epochs=2", "--config.train.eval_batch_size=64",
             f"--config.cv.folds={FOLDS}"]
    done = subprocess.run([sys.executable, "-m", "ser_jax.main", "--config=configs/default.py",
                           f"--workdir={workdir}", "--stage=cv", *flags],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already trained" in done.stderr and "balanced acc." in done.stdout
    saved = json.loads((workdir / "cv" / "summary.json").read_text())
    assert saved["accuracy"] == summary["accuracy"]
