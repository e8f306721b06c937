"""Trainer tests: model size, plateau and early-stopping logic, training, checkpoints, bad input."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import default
from ser_jax.data import errors, store
from ser_jax.inference import bundle
from ser_jax.models import registry
from ser_jax.training import checkpoints
from ser_jax.training import loop as training_loop
from ser_jax.training import state as train_state
from ser_jax.training import trainer as trainer_lib
from tests.conftest import tiny_config, write_feature_dir


def test_seed_model_has_the_keras_parameter_count():
    model = registry.create_model(default.get_config().model, num_classes=7)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 270, 1)),
                                                  train=False))
    assert registry.count_parameters(variables["params"]) == 478_151
    assert registry.count_parameters(variables["batch_stats"]) == 896


def test_model_output_shape_follows_config():
    config = default.get_config().model
    config.filters, config.kernel_size, config.pool_size = 16, 5, 3
    model = registry.create_model(config, num_classes=5)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 270, 1)), train=False)
    assert model.apply(variables, jnp.ones((2, 270, 1)), train=False).shape == (2, 5)


def _learning_rates(val_losses: list[float]) -> list[float]:
    """The learning rate in force after each epoch's plateau step."""
    config = default.get_config().train
    optimizer = train_state.make_optimizer(config)
    params = {"w": jnp.zeros(3)}
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                             opt_state=optimizer.init(params), dropout_rate=jnp.float32(0.2))
    rates = []
    for value in val_losses:
        state = train_state.plateau_step(optimizer, state, jnp.float32(value))
        rates.append(float(train_state.learning_rate(state)))
    return rates


def test_plateau_schedule_matches_hand_worked_keras_sequence():
    # factor 0.4, patience 2, min_delta 1e-4 (absolute): two epochs without a decrease of more
    # than 1e-4 below the best cut the rate; 0.89995 is not an improvement on 0.9.
    losses = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.8, 0.85, 0.86, 0.87, 0.88]
    expected = [1e-3, 1e-3, 1e-3, 4e-4, 4e-4, 4e-4, 4e-4, 1.6e-4, 1.6e-4, 6.4e-5]
    np.testing.assert_allclose(_learning_rates(losses), expected, rtol=1e-5)


def test_plateau_schedule_stops_at_min_learning_rate():
    rates = _learning_rates([1.0] + [2.0] * 30)
    assert rates[-1] == pytest.approx(1e-6, rel=1e-5)
    assert min(rates) == pytest.approx(1e-6, rel=1e-5)


def test_early_stopping_matches_hand_worked_keras_sequence():
    # min_delta 0.001, patience 4: 0.8995 is not better than 0.9 by more than 0.001.
    stopper = train_state.EarlyStopping(min_delta=0.001, patience=4)
    losses = [1.0, 0.9, 0.8995, 0.85, 0.86, 0.851, 0.8495, 0.87, 0.9]
    improved, stopped_at = [], None
    for epoch, value in enumerate(losses):
        improved.append(stopper.update(epoch, value))
        if stopper.should_stop(epoch):
            stopped_at = epoch
            break
    assert improved == [True, True, False, True, False, False, False, False]
    assert stopped_at == 7
    assert stopper.best_epoch == 3 and stopper.best == 0.85


def test_early_stopping_round_trips_through_json():
    stopper = train_state.EarlyStopping(min_delta=0.001, patience=4)
    assert train_state.EarlyStopping.from_json(json.loads(json.dumps(stopper.to_json()))) == stopper
    stopper.update(0, 0.5)
    assert train_state.EarlyStopping.from_json(stopper.to_json()) == stopper


@pytest.fixture(scope="module")
def trained(feature_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(epochs=6)
    return config, workdir, training_loop.train_and_evaluate(config, workdir, feature_dir)


def test_training_learns_and_leaves_artifacts(trained):
    config, workdir, result = trained
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == result["epochs_run"] >= 2
    assert history[-1]["accuracy"] > 0.8  # 7 separable clusters; chance is 1/7
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert set(history[0]) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                               "learning_rate", "seconds", "samples_per_second"}
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "bundle" / "variables.msgpack").exists()
    best = min(history, key=lambda r: r["val_loss"])
    assert result["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-4)


def test_checkpoints_keep_latest_and_best(trained):
    config, workdir, result = trained
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == result["epochs_run"]
    assert result["best_epoch"] in steps
    assert len(steps) <= 2
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


def test_rerun_of_finished_run_resumes_without_training(trained, feature_dir):
    config, workdir, result = trained
    log = (workdir / "metrics.jsonl").read_text()
    epochs = []
    again = training_loop.train_and_evaluate(config, workdir, feature_dir, on_epoch=epochs.append)
    assert again == result
    assert epochs == []  # no epoch was trained again
    assert (workdir / "metrics.jsonl").read_text() == log


def test_same_seed_gives_same_metrics(trained, feature_dir, tmp_path):
    config, _, result = trained
    assert training_loop.train_and_evaluate(config, tmp_path, feature_dir) == result


def test_checkpoint_that_does_not_fit_the_config_is_refused(trained, feature_dir):
    config, workdir, _ = trained
    wider = tiny_config(epochs=8)
    wider.model.filters = 16
    with pytest.raises(checkpoints.CheckpointMismatchError, match="filters"):
        training_loop.train_and_evaluate(wider, workdir, feature_dir)


def _with_nan(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[2, "mel_010"] = np.nan
    return frame


@pytest.mark.parametrize("split, change, message", [
    ("train", lambda f: f.drop(columns=["mfcc_003"]), "mfcc_003"),
    ("val", _with_nan, "mel_010"),
    ("train", lambda f: f.assign(rms=np.inf), "rms"),
    ("train", lambda f: f.assign(label="boredom"), "boredom"),
    ("val", lambda f: f.iloc[:0], "empty"),
])
def test_bad_features_fail_before_training(tmp_path, split, change, message):
    features = write_feature_dir(tmp_path / "features", {"train": 32, "val": 14})
    path = features / f"{split}.parquet"
    change(pd.read_parquet(path)).to_parquet(path, index=False)
    with pytest.raises(errors.DatasetError, match=message) as error:
        training_loop.train_and_evaluate(tiny_config(), tmp_path / "run", features)
    assert f"{split}.parquet" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_too_few_rows_for_a_batch_is_a_clear_error(tmp_path):
    features = write_feature_dir(tmp_path / "features", {"train": 8, "val": 7})
    with pytest.raises(ValueError, match="batch_size"):
        training_loop.train_and_evaluate(tiny_config(), tmp_path / "run", features)


def test_loops_agree(feature_dir, tmp_path):
    """Unrolled chunks of steps (CPU), one scan per epoch (GPU/TPU) and batches placed from the
    host (train.input='host', the multi-process path) compute the same epoch."""
    results = {}
    for loop, chunk, where in (("auto", 1, "auto"), ("step", 2, "auto"), ("scan", 1, "auto"),
                               ("auto", 1, "host")):
        config = tiny_config(epochs=1, loop=loop, steps_per_call=chunk, input=where)
        results[(loop, chunk, where)] = training_loop.train_and_evaluate(
            config, tmp_path / f"{loop}{chunk}{where}", feature_dir)["val"]
    reference = results[("auto", 1, "auto")]
    for value in results.values():
        assert math.isfinite(value["loss"])
        assert value["loss"] == pytest.approx(reference["loss"], rel=1e-4)


def test_bfloat16_compute_keeps_float32_parameters_and_accuracy(trained, feature_dir, tmp_path):
    config, _, result = trained
    bf16 = tiny_config(epochs=config.train.epochs, compute_dtype="bfloat16")
    result_bf16 = training_loop.train_and_evaluate(bf16, tmp_path, feature_dir)
    variables = bundle.load(tmp_path / "bundle").variables
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype("float32")}
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["accuracy"] > 0.8
    assert result_bf16["val"]["accuracy"] == pytest.approx(result["val"]["accuracy"], abs=0.1)


@pytest.fixture(scope="module")
def noisy_val(feature_dir, tmp_path_factory):
    """The feature set with shuffled validation labels: val_loss bottoms out early and then
    rises while the training loss keeps falling (best epoch != last epoch)."""
    directory = tmp_path_factory.mktemp("noisy_val")
    for name in ("train.parquet", "test.parquet", "labels.json", "scaler.json"):
        (directory / name).write_bytes((feature_dir / name).read_bytes())
    val = pd.read_parquet(feature_dir / "val.parquet")
    val["label"] = np.random.default_rng(0).permutation(val["label"].to_numpy())
    val.to_parquet(directory / "val.parquet", index=False)
    return directory


def _noisy_config(epochs: int = 6):
    return tiny_config(epochs=epochs, early_stop_patience=10, plateau_patience=1,
                       plateau_factor=0.5)


@pytest.fixture(scope="module")
def noisy_run(noisy_val, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("noisy_run")
    result = training_loop.train_and_evaluate(_noisy_config(), workdir, noisy_val)
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return workdir, result, history


def test_the_best_epoch_not_the_last_is_evaluated_and_bundled(noisy_run, noisy_val):
    workdir, result, history = noisy_run
    best, lowest = None, math.inf  # Keras' EarlyStopping: an improvement beats min_delta
    for record in history:
        if record["val_loss"] < lowest - _noisy_config().train.early_stop_min_delta:
            best, lowest = record, record["val_loss"]
    assert best["epoch"] < history[-1]["epoch"]  # the fixture does what it is for
    assert history[-1]["val_loss"] > best["val_loss"] * 1.001
    assert result["best_epoch"] == best["epoch"]
    assert result["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    model = bundle.load(workdir / "bundle")
    x, y = store.load_inputs(noisy_val, "val", model.labels)
    probabilities = model.probabilities(x)
    bundle_loss = -np.mean(np.log(probabilities[np.arange(len(y)), y]))
    assert bundle_loss == pytest.approx(best["val_loss"], rel=1e-4)


def test_resume_restores_the_best_state_not_the_latest(noisy_run, noisy_val, tmp_path):
    _, whole, history = noisy_run
    assert whole["best_epoch"] < 3  # so the state saved last before resuming is not the best
    training_loop.train_and_evaluate(_noisy_config(epochs=3), tmp_path, noisy_val)
    resumed = training_loop.train_and_evaluate(_noisy_config(), tmp_path, noisy_val)
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["val"]["loss"] == pytest.approx(whole["val"]["loss"], rel=1e-5)
    assert resumed["test"]["loss"] == pytest.approx(whole["test"]["loss"], rel=1e-5)


def test_plateau_schedule_follows_val_loss(noisy_run):
    """Each epoch's learning rate is what Keras' ReduceLROnPlateau(monitor='val_loss') gives."""
    _, _, history = noisy_run
    config = _noisy_config().train
    expected, best, count, scale = [], math.inf, 0, 1.0
    for record in history:
        expected.append(config.learning_rate * scale)
        if record["val_loss"] < best - config.plateau_min_delta:
            best, count = record["val_loss"], 0
        else:
            count += 1
            if count == config.plateau_patience:
                scale, count = max(scale * config.plateau_factor,
                                   config.min_learning_rate / config.learning_rate), 0
    assert min(expected) < config.learning_rate  # val_loss did plateau
    losses = [r["loss"] for r in history]
    assert losses == sorted(losses, reverse=True)  # while the training loss kept falling
    assert [r["learning_rate"] for r in history] == pytest.approx(expected, rel=1e-6)


def test_mixup_changes_the_train_step(feature_dir, tmp_path):
    plain = training_loop.train_and_evaluate(tiny_config(epochs=1), tmp_path / "plain",
                                             feature_dir)
    mixed = training_loop.train_and_evaluate(tiny_config(epochs=1, mixup_alpha=0.4),
                                             tmp_path / "mixed", feature_dir)
    loss = [json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"]
            for name in ("plain", "mixed")]
    assert loss[1] > loss[0]  # soft targets: a higher cross-entropy on the same rows
    assert mixed["val"]["loss"] != plain["val"]["loss"]


def test_on_epoch_sees_every_epoch_and_may_stop_training(feature_dir, tmp_path):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(record: dict) -> None:
        seen.append(record)
        if record["epoch"] == 2:
            raise Stop

    config = tiny_config(epochs=4)
    with pytest.raises(Stop):
        training_loop.train_and_evaluate(config, tmp_path, feature_dir, on_epoch=on_epoch)
    assert [r["epoch"] for r in seen] == [1, 2]
    assert {"epoch", "loss", "val_loss", "val_accuracy", "val_balanced_accuracy"} <= set(seen[0])
    assert 0.0 <= seen[1]["val_balanced_accuracy"] <= 1.0
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 2 and not (tmp_path / "bundle").exists()
    result = training_loop.train_and_evaluate(config, tmp_path, feature_dir,
                                              on_epoch=seen.append)
    assert [r["epoch"] for r in seen[2:]] == [3, 4] and result["epochs_run"] == 4


def test_a_diverging_loss_stops_training_with_a_clear_error(tmp_path):
    features = write_feature_dir(tmp_path / "features", {"train": 32, "val": 14})
    train = pd.read_parquet(features / "train.parquet")
    columns = [c for c in train.columns if c.startswith(("mel_", "mfcc_"))]
    train[columns] = train[columns] * np.float32(1e36)  # finite, but overflows in the network
    train.to_parquet(features / "train.parquet", index=False)
    with pytest.raises(training_loop.TrainingDivergedError,
                       match=r"epoch 1: .*nan.*learning_rate"):
        training_loop.train_and_evaluate(tiny_config(epochs=2), tmp_path / "run", features)
    assert not (tmp_path / "run" / "bundle").exists()
    assert not (tmp_path / "run" / "train_result.json").exists()


def test_the_epoch_runs_under_a_transfer_guard(feature_dir, tmp_path, monkeypatch):
    """An implicit host-to-device transfer inside the epoch fails (only explicit ones pass)."""
    original = trainer_lib.Trainer.train_epoch

    def leaky(self, *args):
        jnp.asarray(np.ones(2, np.float32))  # implicit
        return original(self, *args)

    monkeypatch.setattr(trainer_lib.Trainer, "train_epoch", leaky)
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        training_loop.train_and_evaluate(tiny_config(epochs=1), tmp_path, feature_dir)
