"""Trainer runs in their own processes: kill and resume, and data parallelism over 4 devices."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ser_jax.training import loop
from tests.conftest import REPO, tiny_config, write_feature_dir

OVERRIDES = ["--config.model.filters=8", "--config.train.batch_size=16",
             "--config.train.eval_batch_size=64"]


def _train_command(workdir: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "ser_jax.main", "--config=configs/default.py",
            f"--workdir={workdir}", "--stage=train", f"--config.train.epochs={epochs}",
            *OVERRIDES]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def _flat(result: dict) -> dict:
    return {f"{split}_{name}": value for split in ("val", "test")
            for name, value in result[split].items()} | {"best_epoch": result["best_epoch"],
                                                          "epochs_run": result["epochs_run"]}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    features = write_feature_dir(tmp_path / "killed" / "features",
                                 {"train": 960, "val": 140, "test": 70})
    command = _train_command(tmp_path / "killed", epochs=6)
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    second = tmp_path / "killed" / "checkpoints" / "2"
    deadline = time.monotonic() + 300
    while not second.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    assert not (tmp_path / "killed" / "train_result.json").exists()

    resumed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after epoch" in resumed.stderr
    result = json.loads((tmp_path / "killed" / "train_result.json").read_text())

    config = tiny_config(epochs=6)
    whole = loop.train_and_evaluate(config, tmp_path / "whole", features)
    assert _flat(result) == pytest.approx(_flat(whole), rel=1e-6)
    history = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == list(range(1, len(history) + 1))


def test_four_devices_match_one_and_restore_on_one(feature_dir, tmp_path):
    workdir = tmp_path / "four"
    workdir.mkdir()
    (workdir / "features").symlink_to(feature_dir)
    run = subprocess.run(_train_command(workdir, epochs=2), cwd=REPO, capture_output=True,
                         text=True,
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 4 cpu device(s)" in run.stderr
    four = json.loads((workdir / "train_result.json").read_text())
    one = loop.train_and_evaluate(tiny_config(epochs=2), tmp_path / "one", feature_dir)
    assert four["best_epoch"] == one["best_epoch"]
    for split in ("val", "test"):
        assert four[split]["loss"] == pytest.approx(one[split]["loss"], rel=2e-3)
        assert four[split]["accuracy"] == pytest.approx(one[split]["accuracy"], abs=0.03)

    # The 4-device checkpoint restores onto this process' single device and training goes on.
    resumed = loop.train_and_evaluate(tiny_config(epochs=3), workdir, feature_dir)
    assert resumed["epochs_run"] == 3
