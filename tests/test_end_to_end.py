"""The main job end to end on the quick synthetic config, then evaluation and prediction."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_jax.data import store
from ser_jax.evaluation import evaluate
from ser_jax.evaluation.metrics import classification_metrics, confusion_matrix
from ser_jax.inference import bundle
from tests.conftest import REPO


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("quick")
    run = subprocess.run(
        [sys.executable, "-m", "ser_jax.main", "--config=configs/quick.py",
         f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


def test_main_job_leaves_every_artifact(workdir):
    for name in ("config.json", "features/train.parquet", "features/manifest.json",
                 "metrics.jsonl", "train_result.json", "bundle/variables.msgpack",
                 "bundle/scaler.json", "evaluation/metrics.json",
                 "evaluation/confusion_matrix.csv", "evaluation/confusion_matrix.png",
                 "evaluation/predictions.csv"):
        assert (workdir / name).is_file(), name
    report = json.loads((workdir / "evaluation" / "metrics.json").read_text())
    assert report["split"] == "test" and report["rows"] == 14
    assert np.asarray(report["confusion_matrix"]).sum() == 14
    assert (workdir / "evaluation" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    predictions = pd.read_csv(workdir / "evaluation" / "predictions.csv")
    test_rows = pd.read_parquet(workdir / "features" / "test.parquet")
    assert predictions["path"].tolist() == test_rows["path"].tolist()
    assert (predictions["label"] == predictions["predicted"]).mean() == pytest.approx(
        report["accuracy"])
    manifest = json.loads((workdir / "features" / "manifest.json").read_text())
    assert manifest["synthetic"] is True


def test_bundle_predicts_audio_without_the_training_data(workdir, tmp_path):
    clips = sorted((workdir / "synthetic_corpus").rglob("*.wav"))[:3]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    moved = tmp_path / "bundle"
    (workdir / "bundle").rename(moved)  # nothing else of the workdir is needed
    try:
        results = bundle.load(moved).predict_files([*clips, broken])
    finally:
        moved.rename(workdir / "bundle")
    assert [r["path"] for r in results] == [*map(str, clips), str(broken)]
    for result in results[:3]:
        assert result["emotion"] in result["probabilities"]
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "broken.wav" in results[3]["error"]


def test_predict_command_prints_json_lines(workdir):
    clip = next((workdir / "synthetic_corpus").rglob("*.wav"))
    run = subprocess.run([sys.executable, "-m", "ser_jax.predict",
                          f"--bundle={workdir / 'bundle'}", str(clip)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line["path"] == str(clip) and line["emotion"] in line["probabilities"]


def test_evaluate_stage_reruns_from_the_bundle(workdir):
    saved = json.loads((workdir / "evaluation" / "metrics.json").read_text())  # the main job's
    shutil.rmtree(workdir / "evaluation")
    report = evaluate.evaluate(workdir)
    assert report == saved
    for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png",
                 "predictions.csv"):
        assert (workdir / "evaluation" / name).is_file(), name
    # The same figures straight from the bundle and the test split.
    model = bundle.load(workdir / "bundle")
    x, y = store.load_inputs(workdir / "features", "test", model.labels)
    assert (model.probabilities(x).argmax(1) == y).mean() == pytest.approx(report["accuracy"])


def test_classification_metrics_match_hand_computed_values():
    # true: a a a b b c ; predicted: a a b b c c
    matrix = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]),
                                       np.array([0, 0, 1, 1, 2, 2]), 4)
    metrics = classification_metrics(matrix, ["a", "b", "c", "d"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # recalls a 2/3, b 1/2, c 1 (d absent from truth: excluded)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions a 1, b 1/2, c 1/2 -> F1 a 0.8, b 0.5, c 2/3 (d never seen: excluded)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                         "support": 0}
