"""Waveform augmentations: pitch accuracy, shapes, determinism, noise level, edge cases."""

import jax
import numpy as np
import pytest

from ser_jax.features import augment
from ser_jax.features.augment import AUGMENTATIONS

SR = 22050
T = round(2.5 * SR)
KEY = jax.random.key(0)


def tone(freq: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(T) / SR)).astype(np.float32)


def peak_frequency(wave: np.ndarray) -> float:
    """Spectral peak of the steady middle half, refined by a parabola through log magnitudes."""
    middle = wave[T // 4 : 3 * T // 4]
    n = 8 * middle.size
    spectrum = np.log(np.abs(np.fft.rfft(middle * np.hanning(middle.size), n)) + 1e-12)
    k = int(spectrum.argmax())
    a, b, c = spectrum[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


@pytest.fixture(scope="module")
def tones() -> np.ndarray:
    return np.stack([tone(220.0), tone(330.0, 0.2)])


@pytest.fixture(scope="module")
def pitched(tones) -> np.ndarray:
    return np.asarray(augment.augment(tones, "pitch", KEY, sample_rate=SR, pitch_semitones=3.0))


def test_pitch_up_three_semitones_moves_220_hz_to_261_6(pitched):
    assert peak_frequency(pitched[0]) == pytest.approx(220.0 * 2 ** (3 / 12), rel=0.01)
    assert peak_frequency(pitched[1]) == pytest.approx(330.0 * 2 ** (3 / 12), rel=0.01)
    # The method is accurate well beyond the 1% asked for (0.5 cent here).
    assert peak_frequency(pitched[0]) == pytest.approx(261.626, rel=5e-4)


def test_pitch_down_and_duration_kept(tones):
    down = np.asarray(augment.pitch_shift(tones, SR, -3.0))
    assert down.shape == tones.shape
    assert peak_frequency(down[0]) == pytest.approx(220.0 * 2 ** (-3 / 12), rel=0.01)


def test_pitch_keeps_level_like_librosa(tones, pitched):
    librosa = pytest.importorskip("librosa")
    reference = librosa.effects.pitch_shift(tones[0], sr=SR, n_steps=3.0)
    middle = slice(T // 4, 3 * T // 4)
    assert np.std(pitched[0][middle]) == pytest.approx(np.std(reference[middle]), rel=0.01)


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_shape_dtype_and_determinism(tones, kind):
    first = augment.augment(tones, kind, KEY, sample_rate=SR)
    again = augment.augment(tones, kind, KEY, sample_rate=SR)
    assert first.shape == tones.shape and first.dtype == np.float32
    assert np.isfinite(np.asarray(first)).all()
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    other = augment.augment(tones, kind, jax.random.key(1), sample_rate=SR)
    random_kinds = {"noise", "pitch_noise", "shift"}
    assert (not np.array_equal(np.asarray(first), np.asarray(other))) == (kind in random_kinds)


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_silence_stays_silent(kind):
    silence = np.zeros((2, T), np.float32)
    out = np.asarray(augment.augment(silence, kind, KEY, sample_rate=SR))
    np.testing.assert_array_equal(out, 0.0)


def test_noise_level_follows_the_seed_recipe():
    """amp = sigma * U(0, 1) * max|x| per clip, so (y - x) / (sigma * max|x|) has a standard
    deviation U per clip: within [0, 1], averaging 1/2 over many clips."""
    rng = np.random.default_rng(0)
    x = (rng.uniform(0.1, 1.0, (256, 1)) * np.sin(np.arange(4096) / 7.0)).astype(np.float32)
    sigma = 0.035
    y = np.asarray(augment.add_noise(x, KEY, sigma))
    scale = sigma * np.abs(x).max(axis=1)
    level = (y - x).std(axis=1) / scale
    assert level.min() >= 0.0 and level.max() <= 1.05
    assert level.mean() == pytest.approx(0.5, abs=0.06)
    assert abs((y - x).mean()) < 1e-3 * scale.mean()


def test_stretch_slows_down_without_changing_pitch():
    t = np.arange(T) / SR
    onset = np.where(t >= 0.5, 0.5 * np.sin(2 * np.pi * 300.0 * t), 0.0).astype(np.float32)
    out = np.asarray(augment.augment(onset[None], "stretch", KEY, sample_rate=SR,
                                     stretch_rate=0.8))[0]
    assert out.shape == (T,)
    start = np.argmax(np.abs(out) > 0.25) / SR
    assert start == pytest.approx(0.5 / 0.8, abs=0.03)
    assert peak_frequency(out) == pytest.approx(300.0, rel=0.005)


def test_shift_moves_by_whole_samples_and_fills_zeros():
    impulse = np.zeros((64, T), np.float32)
    impulse[:, T // 2] = 1.0
    out = np.asarray(augment.augment(impulse, "shift", KEY, sample_rate=SR, shift_seconds=0.2))
    limit = round(0.2 * SR)
    moved = out.argmax(axis=1) - T // 2
    np.testing.assert_array_equal(out.max(axis=1), 1.0)
    np.testing.assert_array_equal((out != 0).sum(axis=1), 1)
    assert np.abs(moved).max() <= limit and len(set(moved.tolist())) > 32
    ones = np.asarray(augment.augment(np.ones((8, T), np.float32), "shift", KEY,
                                      sample_rate=SR))
    leading, trailing = np.argmax(ones != 0, axis=1), np.argmax(ones[:, ::-1] != 0, axis=1)
    assert (np.minimum(leading, trailing) == 0).all()  # zeros enter on one side only
    np.testing.assert_array_equal((ones == 0).sum(axis=1), leading + trailing)


def test_unknown_kind_names_valid_kinds(tones):
    with pytest.raises(ValueError, match="reverb.*none, noise, pitch, pitch_noise, stretch"):
        augment.augment(tones, "reverb", KEY, sample_rate=SR)
