"""The tune stage on a tiny synthetic corpus: objective, pruning, failures, resume, best config."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from ser_jax.data import store, synthetic
from ser_jax.training import loop as train
from ser_jax.tuning import space, study
from tests import tuning_config

REPO = Path(__file__).resolve().parents[1]


def _config(corpus: Path, **tune):
    config = tuning_config.get_config()
    config.data.corpora = f"synthetic:{corpus}"
    config.tune.update(tune)
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthetic.write_synthetic_corpus(tmp_path_factory.mktemp("tune") / "corpus",
                                            speakers=4, clips_per_class=1)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, corpus):
    """One run of the tune stage (2 trials), recording every split file a trial reads."""
    workdir = tmp_path_factory.mktemp("tuned")
    reads = []
    original = store.load_split

    def recording(path, labels):
        reads.append(Path(path))
        return original(path, labels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "load_split", recording)
        summary = study.run_tune(_config(corpus), workdir)
    return workdir, summary, reads


def with_features(tuned, path: Path) -> Path:
    """A fresh workdir holding a copy of the tuned run's features (reused by fingerprint)."""
    shutil.copytree(tuned[0] / "features", path / "features")
    return path


def worker(config_args: list[str], workdir: Path, **popen) -> subprocess.Popen:
    """`python -m ser_jax.main --stage=tune` with tests/tuning_config.py, as a worker would."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "ser_jax.main", "--config=tests/tuning_config.py",
         f"--workdir={workdir}", "--stage=tune", *config_args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def wait_for_running(load_study, process: subprocess.Popen, timeout: float = 120) -> None:
    """Polls the study until a trial is RUNNING with its parameters drawn (mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0][-3000:]
        try:
            if any(t.params for t in load_study().get_trials(states=(TrialState.RUNNING,))):
                return
        except (KeyError, ValueError):  # the study is not created yet
            pass
        time.sleep(0.3)
    raise AssertionError("no trial started in time")


# --------------------------------------------------------------------------- space


def test_space_drives_sampler_and_config():
    config = tuning_config.get_config()
    config.tune.spaces.seed_cnn.kernel_size.high = 9
    dims = space.dimensions(config)
    assert {d.key for d in dims} == {"model.filters", "model.kernel_size", "model.pool_size",
                                     "model.dropout", "train.learning_rate", "train.batch_size"}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = space.suggest(trial, dims)
    assert trial.distributions["learning_rate"].log
    applied = space.apply(config, dims, params)
    assert applied.model.kernel_size == params["kernel_size"]
    assert applied.train.learning_rate == params["learning_rate"]
    assert config.model.kernel_size == 3  # the input config is left alone
    config.model.name = "temporal_cnn"
    assert "train.mixup_alpha" in [d.key for d in space.dimensions(config)]


@pytest.mark.parametrize("field, value, message", [
    ("kind", "normal", "valid: int"), ("key", "model.filterz", "names no field"),
    ("low", 0.0, "needs low > 0")])
def test_space_errors_name_the_dimension(field, value, message):
    config = tuning_config.get_config()
    config.tune.spaces.seed_cnn.learning_rate[field] = value
    with pytest.raises(ValueError, match=message) as error:
        space.dimensions(config)
    assert "tune.spaces.seed_cnn.learning_rate" in str(error.value)


def test_pruner_names():
    config = tuning_config.get_config()
    for name, kind in [("median", optuna.pruners.MedianPruner),
                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                       ("hyperband", optuna.pruners.HyperbandPruner)]:
        config.tune.pruner = name
        assert isinstance(study.make_pruner(config.tune), kind)
    config.tune.pruner = "sometimes"
    with pytest.raises(ValueError, match="tune.pruner='sometimes'"):
        study.make_pruner(config.tune)


# --------------------------------------------------------------------------- stage


def test_objective_and_report(tuned):
    workdir, summary, _ = tuned
    loaded = study.open_study(tuning_config.get_config(), workdir)
    trials = loaded.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert t.user_attrs["val_balanced_accuracy"] == t.value
        assert sorted(t.intermediate_values) == [1, 2]  # one report per epoch
        trial_dir = workdir / "tune" / f"trial_{t.number:04d}"
        assert (trial_dir / "bundle" / "variables.msgpack").is_file()
        assert not (trial_dir / "checkpoints").exists()
    table = pd.read_csv(workdir / "tune" / "best_trials.csv")
    assert list(table["trial"]) == [summary["best_trial"], 1 - summary["best_trial"]]
    assert {"param_dropout", "param_learning_rate"} <= set(table.columns)
    for name in ("history.png", "importances.png"):
        assert (workdir / "tune" / name).read_bytes()[:4] == b"\x89PNG"
    assert {"dropout", "learning_rate"} <= set(summary["importances"])


def test_test_speakers_never_read(tuned):
    workdir, _, reads = tuned
    assert reads, "no split file was read"
    assert {p.name for p in reads} == {"train.parquet", "val.parquet"}
    speakers = {split: set() for split in ("train", "val")}
    for path in reads:
        speakers[path.stem] |= set(pd.read_parquet(path, columns=["speaker"])["speaker"])
    assert speakers == {"train": {"synthetic_01", "synthetic_02"}, "val": {"synthetic_03"}}
    # the features stage did extract the test speaker (for the final model), the trials did not
    assert set(pd.read_parquet(workdir / "features" / "test.parquet")["speaker"]) == {
        "synthetic_04"}


def test_best_config_round_trips_into_train_stage(tuned, tmp_path):
    workdir, summary, _ = tuned
    best = json.loads((workdir / "tune" / "best_params.json").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "final"
    subprocess.run([sys.executable, "-m", "ser_jax.main",
                    f"--config={workdir / 'tune' / 'best_config.py'}", f"--workdir={out}",
                    "--stage=all"], cwd=REPO, env=env, check=True, capture_output=True)
    used = json.loads((out / "config.json").read_text())
    assert used["model"]["dropout"] == best["params"]["dropout"] == best["overrides"][
        "model.dropout"]
    assert used["train"]["learning_rate"] == summary["best_params"]["learning_rate"]
    assert (out / "evaluation" / "metrics.json").is_file()  # trained and scored on the test split


def test_pruning_prunes(tmp_path, corpus, tuned):
    config = _config(corpus, metric="val_loss", trials=2)
    data = study.prepare_data(config, with_features(tuned, tmp_path))
    # val_loss is always above 0: every trial is pruned at its first report
    pruned = study.open_study(config, tmp_path, pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    study.optimize(config, tmp_path, pruned, data)
    trials = pruned.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] for t in trials)  # stopped after epoch 1


def test_failing_trials_do_not_stop_the_study(tmp_path, corpus, tuned):
    config = _config(corpus, trials=3)
    config.tune.spaces.seed_cnn.batch_size.choices = (8, 4096)
    data = study.prepare_data(config, with_features(tuned, tmp_path))
    failing = study.open_study(config, tmp_path)
    failing.enqueue_trial({"batch_size": 4096})  # more than the training rows
    failing.enqueue_trial({"learning_rate": 1e30, "batch_size": 8})  # the loss overflows
    study.optimize(config, tmp_path, failing, data)
    first, second, third = failing.get_trials()
    assert (first.state, second.state, third.state) == (TrialState.FAIL, TrialState.FAIL,
                                                        TrialState.COMPLETE)
    assert "fewer than train.batch_size=4096" in first.user_attrs[study.FAIL_REASON]
    assert "TrainingDivergedError" in second.user_attrs[study.FAIL_REASON]


def test_killed_study_resumes_from_journal(corpus, tuned, tmp_path):
    """A worker SIGKILLed mid-trial; the next run marks its trial FAIL and runs the rest."""
    config = tuning_config.get_config()
    args = [f"--config.data.corpora=synthetic:{corpus}", "--config.tune.trials=2"]
    workdir = with_features(tuned, tmp_path / "work")
    process = worker([*args, "--config.train.epochs=40",
                      "--config.train.early_stop_patience=40"], workdir)
    wait_for_running(lambda: optuna.load_study(
        study_name=config.tune.study_name, storage=study.make_storage(config, workdir)), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resumed = worker(args, workdir)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    trials = study.open_study(config, workdir).get_trials()
    assert trials[0].state == TrialState.FAIL
    assert "killed worker" in trials[0].user_attrs[study.FAIL_REASON]
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2
    assert "trial    2 COMPLETE" in output
    # the resumed sampler does not draw the killed trial's parameters again
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3


def test_trainer_calls_on_epoch(feature_dir, tmp_path):
    from tests.conftest import tiny_config

    records = []
    result = train.train_and_evaluate(tiny_config(epochs=2), tmp_path / "a", feature_dir,
                                      on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1, 2] and result["epochs_run"] == 2
    assert {"val_loss", "val_accuracy", "loss"} <= set(records[0])

    def stop(record):
        raise optuna.TrialPruned(f"epoch {record['epoch']}")

    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        train.train_and_evaluate(tiny_config(epochs=2), tmp_path / "b", feature_dir,
                                 on_epoch=stop)
