"""What a user sees when something is wrong: the real entry points (``python -m ser_jax.main``
and ``python -m ser_jax.predict``) end in one line with exit code 2 (usage) or 1 (data), the
message names the thing and the remedy, no traceback unless asked for, nothing half-written;
damaged features are repaired by rerunning the features stage (issue 12)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ser_jax.data import synthetic
from tests.conftest import REPO

TRACEBACK = "Traceback (most recent call last)"


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python -m module args`` from the repository root with this checkout imported."""
    environment = {name: value for name, value in os.environ.items()
                   if name != "SER_JAX_VERBOSE"}
    environment.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=600)


def main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run("ser_jax.main", *args, env=env)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line, after checking it is the only ser-jax error and the last line."""
    lines = [line for line in done.stderr.splitlines() if line.startswith("ser-jax: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith(lines[0])
    return lines[0]


def assert_one_line(done: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert TRACEBACK not in done.stderr, done.stderr[-3000:]
    line = error_line(done)
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def test_bad_config_is_one_line_and_writes_nothing(tmp_path):
    """Every bad value at once: each is named with the flag that fixes it, and nothing is
    written (validation runs before the workdir is made)."""
    workdir = tmp_path / "work"
    done = main("--config=configs/quick.py", f"--workdir={workdir}", "--stage=cv",
                "--config.train.batch_size=0", "--config.model.name=resnet",
                "--config.data.augment.recipe=none,reverb", "--config.data.split.val_fraction=0.9",
                "--config.model.dropout=1.5", "--config.data.corpora=ravdess:/no/such/folder",
                "--config.data.quality.clipping=ignore", "--config.cv.folds=1")
    assert_one_line(done, 2, "train.batch_size=0 must be > 0 (set --config.train.batch_size)",
                    "unknown model.name 'resnet'", "unknown 'reverb'", "leaves no training data",
                    "model.dropout=1.5 must be in [0, 1)", "/no/such/folder does not exist",
                    "data.quality.clipping='ignore' is not one of 'keep', 'reject'",
                    "cv.folds=1 must be 3 or more")
    assert not workdir.exists()


def test_bad_paths_and_flags_are_one_line(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a folder")
    assert_one_line(main("--config=configs/quick.py", f"--workdir={file}"), 2,
                    f"--workdir={file} is a file, not a folder", "give a folder path")
    assert_one_line(main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}"), 2,
                    "--config=configs/nope.py", "No such file", "configs/default.py")
    assert_one_line(main(f"--workdir={tmp_path / 'w'}"), 2, "--config is required")
    assert_one_line(main("--config=configs/quick.py", f"--workdir={tmp_path / 'w'}",
                         "--config.train.batchsize=3"), 2,
                    "unknown config field 'batchsize'", 'Did you mean "batch_size"')
    assert not (tmp_path / "w").exists()


def test_verbose_shows_the_traceback(tmp_path):
    for env, flag in (({}, ["--verbose"]), ({"SER_JAX_VERBOSE": "1"}, [])):
        done = main("--config=configs/quick.py", f"--workdir={tmp_path / 'w'}",
                    "--config.train.epochs=0", "--config.model.name=temporal_cnn", *flag,
                    env=env)
        assert done.returncode == 2
        assert TRACEBACK in done.stderr and "UsageError" in done.stderr
        line = error_line(done)
        assert "train.epochs=0 must be > 0" in line
        assert "reads log-mel frame sequences" in line and "--config.data.sequences=True" in line


def test_bugs_keep_their_traceback_and_project_errors_their_exit_codes():
    """run_cli, the wrapper every entry point uses, on a bug and on each error kind."""
    script = ("import sys\nfrom ser_jax.core import errors\n"
              "kind = sys.argv.pop(1)\n"
              "def main(argv):\n"
              "    if kind == 'bug': return 1 / 0\n"
              "    raise getattr(errors, kind)('thing.wav: broken — do this')\n"
              "errors.run_cli(main)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SER_JAX_VERBOSE", None)
    outcomes = {kind: subprocess.run([sys.executable, "-c", script, kind], env=env,
                                     capture_output=True, text=True, timeout=120)
                for kind in ("bug", "DataError", "UsageError")}
    assert outcomes["bug"].returncode == 1
    assert TRACEBACK in outcomes["bug"].stderr and "ZeroDivisionError" in outcomes["bug"].stderr
    for kind, code in (("DataError", 1), ("UsageError", 2)):
        assert outcomes[kind].returncode == code
        assert outcomes[kind].stderr == "ser-jax: error: thing.wav: broken — do this\n"


def write_corpus(root: Path) -> tuple[Path, Path, Path]:
    """The quick config's synthetic corpus plus a silent and a heavily clipped clip; returns
    (corpus, silent clip, clipped clip)."""
    corpus = synthetic.write_synthetic_corpus(root / "corpus", speakers=4, clips_per_class=2)
    silent = corpus / "spk01" / "synthetic_spk01_angry_007.wav"
    sf.write(silent, np.zeros(22050 * 3, np.float32), 22050, subtype="PCM_16")
    wave, rate = sf.read(corpus / "spk02" / "synthetic_spk02_sad_000.wav", dtype="float32")
    clipped = corpus / "spk02" / "synthetic_spk02_sad_007.wav"
    sf.write(clipped, np.clip(wave * 50, -1, 1), rate, subtype="PCM_16")
    return corpus, silent, clipped


def test_damaged_features_are_repaired_and_a_run_says_where_everything_is(tmp_path):
    corpus, silent, clipped = write_corpus(tmp_path)
    workdir = tmp_path / "work"
    features = workdir / "features"
    base = ["--config=configs/quick.py", f"--workdir={workdir}",
            f"--config.data.corpora=synthetic:{corpus}", "--config.train.epochs=1"]

    # Quality gates: the silent clip is rejected, the clipped one kept and flagged.
    done = main(*base, "--stage=features")
    assert done.returncode == 0, done.stderr[-3000:]
    quality = json.loads((features / "manifest.json").read_text())["quality"]
    assert quality["rejected"] == {"silent": 1}
    assert quality["flagged"]["count"] == 1 and quality["flagged"]["by_reason"] == {"clipped": 1}
    assert quality["flagged"]["items"][0]["path"] == str(clipped)
    assert f"{silent}: silent: RMS -inf dBFS" in done.stdout
    assert f"features: outputs in {features}" in done.stdout
    config_before = (workdir / "config.json").read_text()

    # A NaN: the train stage stops with one line naming the column and the remedy, writes
    # nothing (no checkpoints/, no metrics.jsonl) and leaves config.json as it was.
    path = features / "train.parquet"
    frame = pd.read_parquet(path)
    frame.loc[3, "chroma_03"] = np.nan
    frame.to_parquet(path, index=False)
    done = main(*base, "--stage=train", "--config.train.learning_rate=0.005")
    assert_one_line(done, 1, "train.parquet", "chroma_03 (1 NaN", "rerun the features stage")
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
    assert (workdir / "config.json").read_text() == config_before

    # Rerunning the features stage notices and rebuilds.
    done = main(*base, "--stage=features")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is damaged (train.parquet changed since it was written" in done.stderr
    assert np.isfinite(pd.read_parquet(path)["chroma_03"]).all()

    # A zero-byte file: the same story; this time the whole job's features stage repairs it,
    # then training, evaluation and the summary follow.
    path.write_bytes(b"")
    assert_one_line(main(*base, "--stage=train"), 1, "train.parquet",
                    "Parquet file size is 0 bytes", "rerun the features stage")
    done = main(*base)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is damaged (train.parquet changed since it was written" in done.stderr
    evaluation = workdir / "evaluation"
    for name, path in (("report", evaluation / "metrics.json"),
                       ("confusion matrix", evaluation / "confusion_matrix.png"),
                       ("training curves", evaluation / "training_curves.png"),
                       ("bundle", workdir / "bundle")):
        assert f"{name + ':':<18}{path}" in done.stdout, done.stdout
    assert (evaluation / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "test accuracy" in done.stdout
    fingerprint = json.loads((features / "manifest.json").read_text())["fingerprint"]
    result = json.loads((workdir / "train_result.json").read_text())
    assert result["made_with"]["features_fingerprint"] == fingerprint
    assert result["made_with"]["config"]["train"]["epochs"] == 1
    made_with = json.loads((workdir / "bundle" / "made_with.json").read_text())
    assert made_with["features_fingerprint"] == fingerprint
    assert not list(workdir.rglob("*.tmp")) and not list(workdir.glob(".*"))

    # A checkpoint of another model: one line naming the field that differs.
    assert_one_line(main(*base, "--stage=train", "--config.model.filters=8"), 1,
                    "model.filters: checkpoint 64, now 8", "use a new --workdir")

    # Predict: the silent clip gets no emotion (no window holds speech), the clipped one is
    # classified; a folder that is not a bundle is one line.
    done = run("ser_jax.predict", f"--bundle={workdir / 'bundle'}", "--nowindows", str(silent),
               str(clipped))
    assert done.returncode == 0 and TRACEBACK not in done.stderr
    silent_row, clipped_row = [json.loads(line) for line in done.stdout.splitlines()]
    assert silent_row["speech"] is False and silent_row["emotion"] is None
    labels = json.loads((workdir / "bundle" / "labels.json").read_text())["labels"]
    assert clipped_row["speech"] is True and clipped_row["emotion"] in labels
    assert_one_line(run("ser_jax.predict", f"--bundle={workdir}", str(clipped)), 1,
                    f"{workdir} is not an inference bundle", "WORKDIR/bundle")
