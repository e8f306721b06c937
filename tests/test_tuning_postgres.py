"""Many workers on one study in a real PostgreSQL server: exact trial counts, SIGKILL recovery."""

import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ser_jax.data import synthetic
from ser_jax.tuning import study
from tests import tuning_config
from tests.postgres import postgres_url  # noqa: F401 - the session fixture
from tests.test_tuning import wait_for_running, worker


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic corpus and its features, extracted once and copied into each worker's
    workdir (the features stage reuses them by fingerprint)."""
    root = tmp_path_factory.mktemp("pg")
    corpus = synthetic.write_synthetic_corpus(root / "corpus", speakers=4, clips_per_class=1)
    config = tuning_config.get_config()
    config.data.corpora = f"synthetic:{corpus}"
    study.prepare_data(config, root / "base")
    return corpus, root / "base" / "features"


def _workdir(path: Path, features: Path) -> Path:
    shutil.copytree(features, path / "features")
    return path


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_two_workers_run_exactly_the_requested_trials(postgres_url, prepared, tmp_path):  # noqa: F811
    corpus, features = prepared
    args = [f"--config.data.corpora=synthetic:{corpus}", f"--config.tune.storage={postgres_url}",
            "--config.tune.study_name=two-workers", "--config.tune.trials=2"]
    workers = [worker(args, _workdir(tmp_path / f"w{i}", features)) for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, output in zip(workers, outputs, strict=True):
        assert w.returncode == 0, output[-3000:]
    trials = _study(postgres_url, "two-workers").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # each worker ran two of them (its own trial_NNNN folders)
    ran = [sorted(p.name for p in (tmp_path / f"w{i}" / "tune").glob("trial_*")) for i in (0, 1)]
    assert [len(r) for r in ran] == [2, 2] and not set(ran[0]) & set(ran[1])


def test_sigkilled_worker_trial_is_failed_and_retried(postgres_url, prepared, tmp_path):  # noqa: F811
    corpus, features = prepared
    name = "killed-worker"
    args = [f"--config.data.corpora=synthetic:{corpus}", f"--config.tune.storage={postgres_url}",
            f"--config.tune.study_name={name}", "--config.tune.trials=1",
            "--config.tune.heartbeat_interval=1", "--config.tune.grace_period=3",
            "--config.train.epochs=40", "--config.train.early_stop_patience=40"]
    process = worker(args, _workdir(tmp_path / "killed", features))
    wait_for_running(lambda: _study(postgres_url, name), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed = _study(postgres_url, name).get_trials()
    assert [t.state for t in killed] == [TrialState.RUNNING]  # stuck until the heartbeat check
    time.sleep(4)  # past the grace period

    config = tuning_config.get_config()
    config.data.corpora = f"synthetic:{corpus}"
    config.tune.update(storage=postgres_url, study_name=name, trials=1, heartbeat_interval=1,
                       grace_period=3)
    workdir = _workdir(tmp_path / "next", features)
    resumed = study.open_study(config, workdir)
    study.optimize(config, workdir, resumed, study.prepare_data(config, workdir))
    first, retry = resumed.get_trials()
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed[0].params  # the same trial, run again
    assert retry.system_attrs["failed_trial"] == first.number
