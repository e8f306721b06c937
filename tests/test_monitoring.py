"""Drift monitoring on real shifts: a tiny model trained once on a synthetic corpus, then new
clips of other speakers (unshifted, gain-shifted, noise-shifted, class-mix-shifted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ser_jax.data import synthetic
from ser_jax.features import pipeline as prepare
from ser_jax.monitoring import drift, run
from ser_jax.training import loop as train
from ser_jax.training import reference
from tests.conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(workdir, bundle, folder of held-out clips from speakers unseen in training)."""
    tmp = tmp_path_factory.mktemp("monitor")
    corpus = synthetic.write_synthetic_corpus(tmp / "corpus", speakers=10, clips_per_class=2)
    held_out = synthetic.write_synthetic_corpus(tmp / "held_out", speakers=4, clips_per_class=2,
                                                seed=1)
    config = tiny_config(epochs=8)
    config.compilation_cache_dir = ""
    config.data.corpora = f"synthetic:{corpus}"
    config.data.augment.recipe = "none"
    workdir = tmp / "work"
    prepare.prepare_features(config, workdir / "features")
    train.train_and_evaluate(config, workdir)
    return workdir, workdir / "bundle", held_out


def _shifted(held_out: Path, out: Path, change, emotions: tuple[str, ...] = ()) -> Path:
    """Copies the held-out clips (only ``emotions`` when given) through ``change(wave, rng)``."""
    rng = np.random.default_rng(0)
    for path in sorted(held_out.rglob("*.wav")):
        if emotions and path.stem.split("_")[2] not in emotions:
            continue
        wave, rate = sf.read(path, dtype="float32")
        target = out / path.relative_to(held_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, np.clip(change(wave, rng), -1, 1), rate, subtype="FLOAT")
    return out


def test_reference_written_by_training(trained):
    workdir, bundle_dir, _ = trained
    ref = reference.read_reference(bundle_dir)
    train_rows = pd.read_parquet(workdir / "features" / "train.parquet")
    assert ref["rows"] == (train_rows["augmentation"] == "none").sum() == 98
    assert len(ref["bins"]["edges"]) == len(ref["feature_names"]) == 270
    for proportions in ref["bins"]["proportions"]:
        assert abs(sum(proportions) - 1) < 1e-9
    assert abs(sum(ref["class_mix"]["proportions"]) - 1) < 1e-9
    assert ref["quality"] == {"clips": ref["rows"], "silent": 0.0, "clipped": 0.0,
                              "too_short": 0.0}
    assert ref["data_fingerprint"]


def test_psi_on_proportions():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0
    # smoothed: an empty bin does not make the index infinite
    value = drift.psi([0.5, 0.5], [1.0, 0.0])
    assert np.isfinite(value) and value > 3
    p = drift.smoothed([0.5, 0.5, 0.0])
    assert abs(p.sum() - 1) < 1e-12 and p[2] > 0


def test_unshifted_held_out_clips_do_not_drift(trained, tmp_path):
    _, bundle_dir, held_out = trained
    report = run.monitor(bundle_dir, [held_out], tmp_path)
    assert not report["drift"], report["reasons"]
    assert report["features"]["share_drifted"] < 0.2
    assert report["quality"]["silent"]["rate"] == 0
    assert (tmp_path / "drift_report.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "drift_report.json").read_text())["drift"] is False


def test_gain_shift_drifts_energy_features(trained, tmp_path):
    _, bundle_dir, held_out = trained
    quiet = _shifted(held_out, tmp_path / "quiet", lambda w, rng: 0.2 * w)
    report = run.monitor(bundle_dir, [quiet], tmp_path / "report")
    drifted = set(report["features"]["drifted"])
    assert report["drift"] and "rms" in drifted and "mel_010" in drifted
    assert "zcr" not in drifted and not any(n.startswith("chroma") for n in drifted)
    # thresholds respected: the same data under a share limit above what drifted
    share = report["features"]["share_drifted"]
    again = run.monitor(bundle_dir, [quiet], tmp_path / "lenient",
                        drift.Thresholds(share=share + 0.01, class_psi=100, quality=1))
    assert not again["drift"] and again["features"]["drifted"] == report["features"]["drifted"]


def test_noise_shift_drifts_zero_crossings(trained, tmp_path):
    _, bundle_dir, held_out = trained
    noisy = _shifted(held_out, tmp_path / "noisy",
                     lambda w, rng: w + 0.5 * w.std() * rng.standard_normal(w.shape))
    report = run.monitor(bundle_dir, [noisy], tmp_path / "report")
    assert report["drift"] and "zcr" in report["features"]["drifted"]


def test_class_mix_shift(trained, tmp_path):
    _, bundle_dir, held_out = trained
    angry = _shifted(held_out, tmp_path / "angry", lambda w, rng: w, emotions=("angry",))
    report = run.monitor(bundle_dir, [angry], tmp_path / "report",
                         drift.Thresholds(share=1.0))  # only the class mix may decide
    assert report["drift"] and report["class_mix"]["drift"]
    assert any("class mix" in reason for reason in report["reasons"])


def test_quality_shift_and_cli_exit_codes(trained, tmp_path):
    _, bundle_dir, held_out = trained
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "ser_jax.monitor", f"--bundle={bundle_dir}"]
    loud = _shifted(held_out, tmp_path / "loud", lambda w, rng: 50 * w)  # clipped
    drifted = subprocess.run([*command, f"--report={tmp_path / 'b'}", str(loud)], env=env,
                             capture_output=True, text=True)
    assert drifted.returncode == 3, drifted.stdout + drifted.stderr
    report = json.loads((tmp_path / "b" / "drift_report.json").read_text())
    assert report["drift"] and report["quality"]["clipped"]["rate"] > 0.9
    # the same data under thresholds nothing reaches: exit 0
    lenient = subprocess.run(
        [*command, f"--report={tmp_path / 'c'}", "--psi_threshold=1000",
         "--class_psi_threshold=1000", "--quality_threshold=2", str(loud)],
        env=env, capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "no drift" in lenient.stdout


def test_features_parquet_input(trained, tmp_path):
    workdir, bundle_dir, _ = trained
    report = run.monitor(bundle_dir, [workdir / "features" / "test.parquet"], tmp_path)
    assert "quality" not in report and "class_mix" in report and report["rows"] > 0
