"""Audio loading: formats, mono mix, resampling, windowing, padding, rejects."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_jax.data.audio import AudioError, load_clip, load_clips
from tests.conftest import RAVDESS

SR = 22050


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    sf.write(path, data, sr, subtype=subtype)
    return path


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_subtypes_window_exactly(tmp_path, subtype):
    ramp = np.linspace(-0.5, 0.5, 4 * SR, dtype=np.float32)
    wave = load_clip(write(tmp_path / "x.wav", ramp, SR, subtype), sample_rate=SR)
    assert wave.dtype == np.float32 and wave.shape == (round(SR * 2.5),)
    start = round(0.6 * SR)
    tol = {"PCM_U8": 1e-2, "PCM_16": 1e-4}.get(subtype, 1e-6)
    np.testing.assert_allclose(wave, ramp[start : start + wave.size], atol=tol)


def test_flac_and_ogg(tmp_path):
    x = tone(440, 3.5, SR)
    flac = load_clip(write(tmp_path / "x.flac", x, SR), sample_rate=SR)
    np.testing.assert_allclose(flac, x[round(0.6 * SR) :][: flac.size], atol=1e-4)
    ogg = load_clip(write(tmp_path / "x.ogg", x, SR), sample_rate=SR)
    assert ogg.shape == (round(SR * 2.5),)
    assert abs(peak_hz(ogg, SR) - 440) < 5


def test_stereo_is_mean_of_channels(tmp_path):
    left, right = tone(300, 3.5, SR, 0.6), tone(300, 3.5, SR, 0.2)
    wave = load_clip(write(tmp_path / "s.wav", np.stack([left, right], 1), SR, "FLOAT"))
    start = round(0.6 * SR)
    np.testing.assert_allclose(
        wave, 0.4 * tone(300, 3.5, SR, 1.0)[start : start + wave.size], atol=1e-6
    )


@pytest.mark.parametrize("native", [8000, 48000])
def test_resampling_keeps_length_and_frequency(tmp_path, native):
    path = write(tmp_path / f"r{native}.wav", tone(1000, 3.5, native), native, "PCM_16")
    wave = load_clip(path, sample_rate=SR)
    assert wave.shape == (round(SR * 2.5),)
    assert abs(peak_hz(wave, SR) - 1000) < 2
    assert 0.45 < np.abs(wave[1000:-1000]).max() < 0.55
    out = load_clip(path, sample_rate=16000, duration=1.0)
    assert out.shape == (16000,) and abs(peak_hz(out, 16000) - 1000) < 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's imports, via librosa
def test_matches_librosa_load(tmp_path):
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    path = write(tmp_path / "n.wav", 0.1 * rng.standard_normal((4 * 48000, 2)), 48000, "PCM_16")
    expected, _ = librosa.load(path, sr=SR, offset=0.6, duration=2.5)
    np.testing.assert_allclose(load_clip(path, sample_rate=SR), expected, atol=1e-6)


def test_short_clip_is_zero_padded(tmp_path):
    wave = load_clip(write(tmp_path / "short.wav", tone(440, 1.0, SR), SR, "PCM_16"))
    n_real = round(0.4 * SR)
    assert wave.shape == (round(SR * 2.5),)
    assert np.abs(wave[:n_real]).max() > 0.4
    assert not wave[n_real:].any()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        (
            "corrupt.wav",
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
            "cannot read or decode",
        ),
        ("empty.wav", lambda p: p.write_bytes(b""), "empty file"),
        ("noframes.wav", lambda p: sf.write(p, np.zeros(0, np.float32), SR), "no audio frames"),
        ("tiny.wav", lambda p: sf.write(p, tone(440, 0.5, SR), SR), "offset"),
        ("missing.wav", lambda p: None, "cannot read or decode"),
        (
            "nan.wav",
            lambda p: sf.write(p, np.full(3 * SR, np.nan, np.float32), SR, "FLOAT"),
            "NaN or inf",
        ),
    ],
)
def test_bad_files_raise_audio_error(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioError, match=reason) as info:
        load_clip(path)
    assert str(path) in str(info.value) and info.value.reason in str(info.value)


def test_inf_sample_in_window_is_rejected(tmp_path):
    x = tone(440, 3.0, SR)
    x[SR] = np.inf
    with pytest.raises(AudioError, match="1 samples are NaN or inf"):
        load_clip(write(tmp_path / "inf.wav", x, SR, "FLOAT"))


def test_load_clips_keeps_order_and_collects_rejects(tmp_path):
    good = [write(tmp_path / f"g{i}.wav", tone(200 + 100 * i, 3.2, SR), SR) for i in range(4)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    paths = [good[0], bad, good[1], good[2], str(tmp_path / "gone.wav"), good[3]]
    serial = load_clips(paths, sample_rate=SR, offset=0.6, duration=2.5, workers=1)
    threaded = load_clips(paths, sample_rate=SR, offset=0.6, duration=2.5, workers=3)
    for waves, ok, rejects in (serial, threaded):
        assert waves.shape == (4, round(SR * 2.5)) and waves.dtype == np.float32
        assert ok == [0, 2, 3, 5]
        assert [p for p, _ in rejects] == [str(bad), str(tmp_path / "gone.wav")]
        assert [round(peak_hz(w, SR)) for w in waves] == [200, 300, 400, 500]
    np.testing.assert_array_equal(serial[0], threaded[0])
    waves, ok, rejects = load_clips([bad], sample_rate=SR, offset=0.6, duration=1.0)
    assert waves.shape == (0, SR) and ok == [] and len(rejects) == 1


def test_real_ravdess_stereo_clips_load_as_mono():
    if not RAVDESS.is_dir():
        pytest.skip(f"RAVDESS not found at {RAVDESS}")
    paths = sorted(RAVDESS.glob("Actor_0[1-5]/*.flac"))
    stereo = [p for p in paths if sf.info(p).channels == 2]
    assert stereo, "expected the known stereo RAVDESS files in actors 1-5"
    waves, ok, rejects = load_clips(stereo + paths[:5], sample_rate=SR, offset=0.6, duration=2.5)
    assert not rejects and waves.shape == (len(stereo) + 5, round(SR * 2.5))
    assert np.isfinite(waves).all() and (np.abs(waves).max(axis=1) > 0.01).all()
