"""The features stage from the command line on real RAVDESS speech (skipped where it is absent)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from ser_jax.data.corpora import EMOTIONS
from tests.conftest import RAVDESS, REPO

pytestmark = pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"{RAVDESS} is absent")


def test_ravdess_features_from_the_command_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "ser_jax.main", "--config=configs/default.py",
         f"--workdir={tmp_path}", "--stage=features", f"--config.data.corpora=ravdess:{RAVDESS}",
         "--config.data.augment.recipe=none", "--config.data.split.test_fraction=0.125"],
        cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    splits = {name: pd.read_parquet(tmp_path / "features" / f"{name}.parquet",
                                    columns=["label", "speaker", "corpus", "augmentation"])
              for name in ("train", "val", "test")}
    assert sum(len(frame) for frame in splits.values()) == 960
    speakers = {name: set(frame["speaker"]) for name, frame in splits.items()}
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    assert len(set().union(*speakers.values())) == 16
    for frame in splits.values():
        assert set(frame["label"]) == set(EMOTIONS)
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert not manifest.get("synthetic")
    assert "surprise" in run.stdout and "speakers" in run.stdout
