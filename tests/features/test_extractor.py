"""JAX feature extractor vs librosa 0.11 on the same waveforms (RAVDESS and synthetic).

Relative error of a feature group (zcr, rms, chroma, mel, mfcc) for one clip:

    max_i |jax_i - librosa_i| / max(|librosa_i|, 1e-3 * max_j |librosa_j|)

over the group's features i, j: elementwise, except that values smaller than 0.1% of the group's
largest magnitude are judged against that 0.1% floor. MFCCs pass through zero (mfcc_001.. are
signed dB-scale coefficients), so a pure elementwise ratio would blow up on them, while the
floor keeps the test strict (at 1e-3 it allows 1e-6 of the group's scale there).

Tolerances: 1e-3 for zcr, rms, mel and mfcc; chroma 1e-3 too where the per-clip tuning
estimate (librosa.estimate_tuning, reimplemented in extractor.estimate_tuning) agrees with
librosa's. The estimate is the fullest bin of a histogram of peak-pitch deviations (0.01 of a
semitone wide); when the two fullest bins hold equal or nearly equal counts, a peak that the
float32 STFT nudges across a bin edge or a median can decide the winner differently, and chroma
then differs by up to ~12% (3 of 360 RAVDESS clips and noisy copies we checked). Such a clip
passes if our bin's count in librosa's own histogram is within 1 of the maximum. Without the
tuning estimate (tuning fixed at 0), librosa's own chroma moves by up to ~6% on these clips.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ser_jax.data.audio import load_clips
from ser_jax.features import extractor
from tests.conftest import RAVDESS

librosa = pytest.importorskip("librosa")
scipy_fft = pytest.importorskip("scipy.fft")  # a librosa dependency
# librosa warns when it estimates the tuning of silence (it returns 0, as we do).
pytestmark = pytest.mark.filterwarnings("ignore:Trying to estimate tuning:UserWarning")

SR = 22050
T = round(2.5 * SR)
GROUPS = {"zcr": slice(0, 1), "rms": slice(1, 2), "chroma": slice(2, 14),
          "mel": slice(14, 142), "mfcc": slice(142, 270)}
TOLERANCE = {"zcr": 1e-3, "rms": 1e-3, "chroma": 1e-3, "mel": 1e-3, "mfcc": 1e-3}


def librosa_features(y: np.ndarray) -> np.ndarray:
    """The seed's 270 features."""
    return np.concatenate([
        np.mean(librosa.feature.zero_crossing_rate(y=y), axis=1),
        np.mean(librosa.feature.rms(y=y), axis=1),
        np.mean(librosa.feature.chroma_stft(S=np.abs(librosa.stft(y)), sr=SR), axis=1),
        np.mean(librosa.feature.melspectrogram(y=y, sr=SR), axis=1),
        np.mean(librosa.feature.mfcc(y=y, sr=SR, n_mfcc=128), axis=1),
    ])


def librosa_tuning_histogram(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, left edges) of the histogram inside librosa.estimate_tuning (its own code)."""
    pitch, mag = librosa.piptrack(S=np.abs(librosa.stft(y)), sr=SR)
    peaks = pitch > 0
    frequencies = pitch[(mag >= np.median(mag[peaks])) & peaks]
    residual = np.mod(12 * librosa.hz_to_octs(frequencies), 1.0)
    residual[residual >= 0.5] -= 1.0
    counts, edges = np.histogram(residual, np.linspace(-0.5, 0.5, 101))
    return counts, edges[:-1]


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """The module docstring's group error for one clip."""
    floor = max(1e-3 * np.abs(reference).max(), 1e-30)
    return float((np.abs(ours - reference) / np.maximum(np.abs(reference), floor)).max())


def synthetic_waves() -> dict[str, np.ndarray]:
    t = np.arange(T) / SR
    rng = np.random.default_rng(0)
    voiced = sum(0.3 / k * np.sin(2 * np.pi * 196.0 * k * t) for k in range(1, 8))
    tone_then_silence = np.where(t < 1.0, 0.4 * np.sin(2 * np.pi * 440.0 * t), 0.0)
    waves = {
        "chirp": 0.3 * librosa.chirp(fmin=100, fmax=8000, sr=SR, length=T),
        "harmonic": voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)),
        "noise": 0.1 * rng.standard_normal(T),
        "tone_then_silence": tone_then_silence,
    }
    return {name: w.astype(np.float32) for name, w in waves.items()}


def ravdess_waves() -> dict[str, np.ndarray]:
    paths = sorted(Path(RAVDESS).rglob("*.flac")) if Path(RAVDESS).is_dir() else []
    chosen = paths[::157][:6]
    if not chosen:
        return {}
    waves, ok, _ = load_clips(chosen, sample_rate=SR, offset=0.6, duration=2.5, workers=2)
    return {chosen[i].name: w for i, w in zip(ok, waves, strict=True)}


@jax.jit
def both_extractors(batch: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """extract_features, frame_features and the tuning estimates, compiled together."""
    tuning = extractor.estimate_tuning(jnp.abs(extractor.stft(batch)), SR)
    return extractor.extract_features(batch, SR), extractor.frame_features(batch, SR), tuning


@pytest.fixture(scope="module")
def extracted() -> dict:
    """Every test waveform through both extractors; one JAX compile for the module."""
    named = {**synthetic_waves(), **ravdess_waves(), "silence": np.zeros(T, np.float32)}
    names = list(named)
    batch = np.stack([named[n] for n in names])
    ours, frames, tuning = (np.asarray(a) for a in both_extractors(batch))
    return {
        name: {
            "wave": named[name],
            "ours": ours[i],
            "frames": frames[i],
            "reference": librosa_features(named[name]),
            "tuning": float(tuning[i]),
            "reference_tuning": float(
                librosa.estimate_tuning(S=np.abs(librosa.stft(named[name])), sr=SR)
            ) if named[name].any() else 0.0,
        }
        for i, name in enumerate(names)
    }


def check_parity(clip: dict) -> None:
    tuning_agrees = abs(clip["tuning"] - clip["reference_tuning"]) < 1e-6
    for group, sl in GROUPS.items():
        if group == "chroma" and not tuning_agrees:
            counts, edges = librosa_tuning_histogram(clip["wave"])
            ours = counts[np.argmin(np.abs(edges - clip["tuning"]))]
            assert ours >= counts.max() - 1, f"tuning {clip['tuning']} is no near-tie winner"
            continue
        error = relative_error(clip["ours"][sl], clip["reference"][sl])
        assert error <= TOLERANCE[group], f"{group}: relative error {error:.2e}"


def test_feature_names():
    names = extractor.FEATURE_NAMES
    assert len(names) == 270 and len(set(names)) == 270
    assert names[:3] == ("zcr", "rms", "chroma_00") and names[13] == "chroma_11"
    assert names[14] == "mel_000" and names[141] == "mel_127"
    assert names[142] == "mfcc_000" and names[-1] == "mfcc_127"


@pytest.mark.parametrize("sr", [16000, 22050, 44100])
def test_filter_banks_equal_librosa(sr):
    mel = librosa.filters.mel(sr=sr, n_fft=2048)
    np.testing.assert_array_equal(extractor.mel_filterbank(sr), mel)
    for tuning in (-0.5, -0.13, 0.0, 0.49):
        np.testing.assert_array_equal(extractor.chroma_filterbank(sr, tuning),
                                      librosa.filters.chroma(sr=sr, n_fft=2048, tuning=tuning))
    x = np.random.default_rng(0).normal(size=(128, 3))
    np.testing.assert_allclose(extractor.dct_matrix(128) @ x,
                               scipy_fft.dct(x, type=2, norm="ortho", axis=0), atol=1e-5)


@pytest.mark.parametrize("name", list(synthetic_waves()))
def test_parity_synthetic(extracted, name):
    check_parity(extracted[name])


def test_parity_ravdess(extracted):
    clips = [c for n, c in extracted.items() if n.endswith(".flac")]
    if not clips:
        pytest.skip(f"no RAVDESS audio under {RAVDESS}")
    for clip in clips:
        check_parity(clip)
    ties = sum(abs(c["tuning"] - c["reference_tuning"]) > 1e-6 for c in clips)
    assert ties <= 1, f"tuning estimate differs from librosa's on {ties} of {len(clips)} clips"


def test_silence_is_finite_and_zero(extracted):
    ours = extracted["silence"]["ours"]
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours[:142], 0.0)  # zcr, rms, chroma, mel
    check_parity(extracted["silence"])


def test_frame_features_are_time_ordered_and_average_to_clip_features(extracted):
    clip = extracted["chirp"]
    frames = clip["frames"]
    assert frames.shape == (extractor.num_frames(T), 270)
    np.testing.assert_allclose(frames[:, 1], librosa.feature.rms(y=clip["wave"])[0], rtol=1e-4)
    np.testing.assert_allclose(frames.mean(axis=0), clip["ours"], rtol=1e-4, atol=1e-4)


def test_zero_crossing_rate_equals_librosa_frame_by_frame(extracted):
    """Each frame's count of crossings, exactly: the clip mean would hide an off-by-one sample
    (its error, ~3e-4, passes the 1e-3 clip tolerance)."""
    for name, clip in extracted.items():
        reference = librosa.feature.zero_crossing_rate(y=clip["wave"])[0]
        ours = clip["frames"][:, 0]
        assert ours.shape == reference.shape, name
        np.testing.assert_array_equal(np.round(ours * extractor.N_FFT),
                                      np.round(reference * extractor.N_FFT), err_msg=name)
