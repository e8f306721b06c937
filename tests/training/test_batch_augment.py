"""On-device batch augmentation: SpecAugment masking and mixup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, temporal
from ser_jax.training import batch_augment


def _spans(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a boolean row."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


def test_span_mask_draws_at_most_count_spans_of_bounded_width():
    mask = np.asarray(batch_augment.span_mask(jax.random.key(0), 512, 108, 2, 12))
    assert mask.shape == (512, 108)
    widths = mask.sum(1)
    assert widths.max() <= 24 and widths.min() >= 0
    for row in mask:
        spans = _spans(row)
        assert len(spans) <= 2
        assert all(width <= 24 for _, width in spans)  # two overlapping spans at most
    assert 0.05 < mask.mean() < 0.15  # expected 2 * 6 / 108 = 0.11 before overlaps
    # Every position can be masked (starts are uniform over where a span fits).
    assert mask[:, 0].any() and mask[:, -1].any()


def test_span_mask_is_a_function_of_the_key():
    a, b, c = (np.asarray(batch_augment.span_mask(jax.random.key(k), 8, 50, 2, 10))
               for k in (1, 1, 2))
    assert (a == b).all() and (a != c).any()


def test_span_mask_width_is_clipped_to_the_length():
    mask = np.asarray(batch_augment.span_mask(jax.random.key(3), 64, 5, 1, 100))
    assert mask.shape == (64, 5) and mask.all(axis=1).any()


def test_spec_augment_zeroes_whole_frames_and_whole_bands_only():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 108, 128)) + 10.0, jnp.float32)
    out = np.asarray(batch_augment.spec_augment(x, jax.random.key(0), time_masks=2,
                                                time_width=12, freq_masks=2, freq_width=16))
    zero = out == 0.0
    assert zero.any()
    x = np.asarray(x)
    np.testing.assert_array_equal(out[~zero], x[~zero])  # the rest is untouched
    for example in zero:
        frames = example.all(axis=1)  # frames masked across every band
        bands = example.all(axis=0)  # bands masked across every frame
        # every zero lies in a masked frame or a masked band
        assert (example == (frames[:, None] | bands[None, :])).all()
        assert len(_spans(frames)) <= 2 and len(_spans(bands)) <= 2
        assert frames.sum() <= 24 and bands.sum() <= 32


def test_spec_augment_off_is_the_identity():
    x = jnp.ones((2, 10, 4))
    out = batch_augment.spec_augment(x, jax.random.key(0), time_masks=0, time_width=5,
                                     freq_masks=2, freq_width=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_mixup_mixes_inputs_and_labels_with_the_same_weights():
    batch = 32
    x = jnp.asarray(np.random.default_rng(1).normal(size=(batch, 6, 3)), jnp.float32)
    labels = jnp.arange(batch)  # one class per example: the targets name the partner
    mixed, targets = batch_augment.mixup(x, labels, jax.random.key(0), alpha=0.4,
                                         num_classes=batch)
    targets, mixed, x = np.asarray(targets), np.asarray(mixed), np.asarray(x)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    own = np.diag(targets)
    assert (own >= 0.5 - 1e-6).all()  # each example keeps the larger weight
    assert (own < 0.9).any()  # and the weights are not all trivial
    for i in range(batch):
        partner = int(np.argsort(targets[i])[-2]) if own[i] < 1.0 else i
        expected = own[i] * x[i] + (1.0 - own[i]) * x[partner]
        np.testing.assert_allclose(mixed[i], expected, atol=1e-5)


def test_settings_that_cannot_apply_are_refused():
    config = default.get_config().train
    config.spec_augment.time_masks, config.spec_augment.time_width = 2, 10
    with pytest.raises(ValueError, match="reads clip features"):
        batch_augment.check_config(config, "clip")
    batch_augment.check_config(temporal.get_config().train, "sequence")
    config.mixup_alpha = -1.0
    with pytest.raises(ValueError, match="mixup_alpha"):
        batch_augment.check_config(config, "sequence")
