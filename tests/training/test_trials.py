"""vmapped trials compute what separate runs with the same settings compute."""

import pytest

from ser_jax.training import loop, trials
from tests.conftest import tiny_config, write_feature_dir


def test_vmapped_trials_match_separate_runs(tmp_path):
    feature_dir = write_feature_dir(tmp_path / "features", {"train": 64, "val": 21})
    # Separate runs with one learning rate share one compiled trainer (seed and dropout are
    # state values); the third trial checks that a per-trial learning rate is honoured.
    settings = [trials.Trial(seed=0, learning_rate=1e-3, dropout=0.2),
                trials.Trial(seed=1, learning_rate=1e-3, dropout=0.0),
                trials.Trial(seed=0, learning_rate=1e-5, dropout=0.2)]
    together = trials.train_trials(tiny_config(epochs=2), feature_dir, settings)
    for trial, result in zip(settings[:2], together, strict=False):
        config = tiny_config(epochs=2)
        config.seed, config.model.dropout = trial.seed, trial.dropout
        alone = loop.train_and_evaluate(config, tmp_path / f"seed{trial.seed}", feature_dir)
        assert result["best_epoch"] == alone["best_epoch"]
        assert result["val_loss"] == pytest.approx(alone["val"]["loss"], rel=1e-4)
        assert result["val_accuracy"] == pytest.approx(alone["val"]["accuracy"], abs=1e-6)
    assert together[0]["val_loss"] != together[1]["val_loss"]
    # A learning rate 100x smaller barely moves the weights in 2 epochs.
    assert together[2]["val_loss"] > together[0]["val_loss"]
