"""model.ensemble: member networks trained side by side, each on its own loss, averaged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default, temporal
from ser_jax import models, train

FRAMES, BANDS = 20, 128


def ensemble_config(variants: str = "plain,centered"):
    config = temporal.get_config()
    config.model.filters = 8
    config.model.ensemble = variants
    return config


def member(config, variant: str):
    """The member network on its own, as it would be built without the ensemble."""
    single = config.model.copy_and_resolve_references()
    single.ensemble, single.center = "", models.VARIANTS[variant]
    return models.create_model(single, num_classes=7)


def member_variables(variables, k: int):
    return {name: tree[f"members_{k}"] for name, tree in variables.items()}


def test_ensemble_predicts_the_members_mean_probabilities():
    config = ensemble_config()
    model = models.create_model(config.model, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (5, FRAMES, BANDS))
    variables = model.init(jax.random.key(1), x, train=False)
    single = member(config, "plain")
    single_params = single.init(jax.random.key(1), x, train=False)["params"]
    assert (models.count_parameters(variables["params"])
            == 2 * models.count_parameters(single_params))

    probabilities = [jax.nn.softmax(member(config, v).apply(member_variables(variables, k), x,
                                                            train=False))
                     for k, v in enumerate(("plain", "centered"))]
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-3)  # distinct members
    ensemble = jax.nn.softmax(model.apply(variables, x, train=False))
    np.testing.assert_allclose(ensemble, (probabilities[0] + probabilities[1]) / 2, atol=1e-6)

    logits, _ = model.apply(variables, x, train=True, dropout_rate=0.0,
                            rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
    assert logits.shape == (2, 5, 7)  # one row of logits per member for the per-member loss


@pytest.mark.parametrize("soft_targets", [False, True])
def test_each_member_learns_from_its_own_loss_only(soft_targets):
    config = ensemble_config()
    trainer = train.Trainer(config, num_classes=7, input_shape=(FRAMES, BANDS))
    state = trainer.init_state(seed=0, learning_rate=1e-3, dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(3), (6, FRAMES, BANDS))
    labels = jnp.arange(6) % 7
    targets = jax.nn.one_hot(labels, 7) * 0.8 + 0.2 / 7 if soft_targets else labels
    (loss, (logits, _)), grads = trainer._loss_and_grads(state, x, targets, jax.random.key(4))

    losses = []
    for k, variant in enumerate(("plain", "centered")):
        network = member(config, variant)

        def member_loss(params, k=k, network=network):
            out, _ = network.apply(
                {"params": params, "batch_stats": state.batch_stats[f"members_{k}"]}, x,
                train=True, dropout_rate=0.0, rngs={"dropout": jax.random.key(4)},
                mutable=["batch_stats"])
            if soft_targets:
                return optax.softmax_cross_entropy(out, targets).mean()
            return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

        value, own = jax.value_and_grad(member_loss)(state.params[f"members_{k}"])
        losses.append(float(value))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b / 2, rtol=1e-4, atol=1e-7),
                     grads[f"members_{k}"], own)
    assert float(loss) == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-5)
    assert logits.shape == (6, 7)  # the ensemble's prediction, for the accuracy count


@pytest.mark.parametrize("model_name, variants, message", [
    ("temporal_cnn", "plain,wide", "unknown member variant 'wide'"),
    ("temporal_cnn", "centered", "names one member"),
    ("seed_cnn", "plain,centered", "'centered' members need frame sequences"),
])
def test_bad_ensemble_settings_are_named(model_name, variants, message):
    config = default.get_config()
    config.model.name, config.model.ensemble = model_name, variants
    with pytest.raises(ValueError, match=message):
        models.create_model(config.model, num_classes=7)


def test_seed_model_ensemble_of_plain_members():
    config = default.get_config()
    config.model.filters, config.model.ensemble = 4, "plain,plain,plain"
    model = models.create_model(config.model, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (2, 270))
    variables = model.init(jax.random.key(1), x, train=False)
    assert sorted(variables["params"]) == ["members_0", "members_1", "members_2"]
    assert model.apply(variables, x, train=False).shape == (2, 7)
