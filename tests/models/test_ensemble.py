"""model.ensemble: member networks trained one by one, their probabilities averaged."""

import json

import jax
import numpy as np
import pytest

from configs import default, temporal
from ser_jax.data import store
from ser_jax.evaluation import evaluate
from ser_jax.inference import bundle
from ser_jax.models import registry
from ser_jax.training import loop
from ser_jax.training import trainer as trainer_lib
from tests.conftest import tiny_config

FRAMES, BANDS = 20, 128


def ensemble_config(variants: str = "plain,centered"):
    config = temporal.get_config()
    config.model.filters = 8
    config.model.ensemble = variants
    return config


def member(config, variant: str):
    """The member network on its own, as it would be built without the ensemble."""
    return registry.create_model(registry.member_config(config.model, variant), num_classes=7)


def member_variables(variables, k: int):
    return {name: tree[f"members_{k}"] for name, tree in variables.items()}


def test_ensemble_predicts_the_members_mean_probabilities():
    config = ensemble_config()
    model = registry.create_model(config.model, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (5, FRAMES, BANDS))
    variables = model.init(jax.random.key(1), x, train=False)
    single = member(config, "plain")
    single_params = single.init(jax.random.key(1), x, train=False)["params"]
    assert (registry.count_parameters(variables["params"])
            == 2 * registry.count_parameters(single_params))

    probabilities = [jax.nn.softmax(member(config, v).apply(member_variables(variables, k), x,
                                                            train=False))
                     for k, v in enumerate(("plain", "centered"))]
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-3)  # distinct members
    ensemble = jax.nn.softmax(model.apply(variables, x, train=False))
    np.testing.assert_allclose(ensemble, (probabilities[0] + probabilities[1]) / 2, atol=1e-6)


def test_members_train_as_separate_runs_and_the_bundle_averages_them(feature_dir, tmp_path):
    config = tiny_config(epochs=2)
    config.model.ensemble = "plain,plain"
    result = loop.train_and_evaluate(config, tmp_path, feature_dir)

    assert [m["seed"] for m in result["members"]] == [0, 1]  # same variant, other seed
    assert result["epochs_run"] == [2, 2] and len(result["best_epoch"]) == 2
    members = [bundle.load(tmp_path / "members" / str(k) / "bundle") for k in (0, 1)]
    for k in (0, 1):
        member_dir = tmp_path / "members" / str(k)
        assert (member_dir / "checkpoints").is_dir() and (member_dir / "metrics.jsonl").is_file()
        assert json.loads((member_dir / "train_result.json").read_text())["epochs_run"] == 2
    x, y = store.load_inputs(feature_dir, "test", members[0].labels)
    ensemble = bundle.load(tmp_path / "bundle")
    assert ensemble.config.model.ensemble == "plain,plain"
    first, second = (m.probabilities(x) for m in members)
    assert not np.allclose(first, second, atol=1e-3)
    np.testing.assert_allclose(ensemble.probabilities(x), (first + second) / 2, atol=1e-6)
    accuracy = float(np.mean(ensemble.probabilities(x).argmax(1) == y))
    assert result["test"]["accuracy"] == pytest.approx(accuracy)
    assert evaluate.evaluate(tmp_path, feature_dir)["accuracy"] == pytest.approx(accuracy)

    lines = (tmp_path / "members" / "1" / "metrics.jsonl").read_text()
    again = loop.train_and_evaluate(config, tmp_path, feature_dir)  # finished: nothing retrains
    assert (tmp_path / "members" / "1" / "metrics.jsonl").read_text() == lines
    assert again["test"] == result["test"]


def test_a_trainer_trains_one_network():
    config = ensemble_config()
    with pytest.raises(ValueError, match="members train one by one"):
        trainer_lib.Trainer(config, num_classes=7, input_shape=(FRAMES, BANDS))


@pytest.mark.parametrize("model_name, variants, message", [
    ("temporal_cnn", "plain,wide", "unknown member variant 'wide'"),
    ("temporal_cnn", "centered", "names one member"),
    ("seed_cnn", "plain,centered", "'centered' members need frame sequences"),
])
def test_bad_ensemble_settings_are_named(model_name, variants, message):
    config = default.get_config()
    config.model.name, config.model.ensemble = model_name, variants
    with pytest.raises(ValueError, match=message):
        registry.create_model(config.model, num_classes=7)
