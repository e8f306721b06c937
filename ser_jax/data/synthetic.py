"""Embedded demo corpus: speech-like synthetic clips so the default job runs with no download.

Each clip is a voiced source (glottal pulses along an F0 contour, plus aspiration noise) shaped
by per-frame formant filtering, cut into syllables and gated by an energy envelope. The classes
differ in mean F0 and contour, pitch jitter, syllable rate, loudness, spectral tilt and
breathiness; speakers differ in base pitch, vocal-tract length (formant scale) and gain; every
clip gets random jitter on all of these, and background noise.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from ser_jax.core.files import atomic_directory
from ser_jax.data.corpora import EMOTIONS
from ser_jax.data.errors import DatasetError

CLIP_SECONDS = 3.2
VERSION = "1"
_FRAME, _HOP = 512, 256  # formant filtering STFT (23 ms window at 22.05 kHz)
# F1, F2, F3 (Hz) of five vowels (a, e, i, o, u) of an adult male vocal tract.
_VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]],
    np.float64,
)


@dataclass(frozen=True)
class _Style:
    """How one emotion is spoken."""

    f0: float  # mean F0 relative to the speaker's base pitch
    contour: str  # shape of the F0 movement, see _f0_contour
    swing: float  # relative size of the F0 movement
    jitter: float  # relative period-to-period F0 noise
    rate: float  # syllables per second
    loudness: float  # relative RMS
    tilt: float  # spectral tilt exponent: higher is darker
    breath: float  # aspiration noise relative to the voiced source
    creak: float  # alternate-period amplitude modulation (vocal fry)


_STYLES = {
    "angry": _Style(1.35, "fall", 0.30, 0.010, 5.2, 1.00, 0.00, 0.05, 0.0),
    "disgust": _Style(0.88, "decline", 0.15, 0.035, 3.2, 0.55, 0.80, 0.10, 0.5),
    "fear": _Style(1.45, "tremor", 0.10, 0.030, 6.2, 0.50, 0.50, 0.35, 0.0),
    "happy": _Style(1.30, "bounce", 0.25, 0.010, 5.0, 0.80, 0.25, 0.05, 0.0),
    "neutral": _Style(1.00, "decline", 0.06, 0.006, 4.0, 0.50, 0.60, 0.08, 0.0),
    "sad": _Style(0.85, "flat", 0.03, 0.012, 2.6, 0.30, 1.10, 0.25, 0.0),
    "surprise": _Style(1.10, "rise", 0.80, 0.010, 3.6, 0.65, 0.40, 0.20, 0.0),
}


@dataclass(frozen=True)
class _Speaker:
    f0: float  # base pitch (Hz)
    tract: float  # formant scale (shorter vocal tract: higher formants)
    gain: float


def _speaker(seed: int, index: int) -> _Speaker:
    rng = np.random.default_rng([seed, index])
    female = index % 2 == 1
    return _Speaker(
        f0=rng.uniform(180, 230) if female else rng.uniform(100, 130),
        tract=rng.uniform(1.08, 1.22) if female else rng.uniform(0.92, 1.05),
        gain=rng.uniform(0.75, 1.0),
    )


def _syllables(rng: np.random.Generator, rate: float, sr: int) -> list[tuple[int, int]]:
    """(start, end) samples of syllables between 0.15-0.4 s of lead-in and 0.1 s of tail."""
    t = rng.uniform(0.15, 0.4)
    out = []
    while True:
        length = rng.gamma(8.0, 1.0 / (8.0 * rate))
        if t + length > CLIP_SECONDS - 0.1:
            return out
        out.append((int(t * sr), int((t + 0.8 * length) * sr)))  # 20% of a syllable is closure
        t += length + (rng.uniform(0.1, 0.3) if rng.random() < 0.15 else 0.0)  # word pauses


def _f0_contour(style: _Style, u: np.ndarray, local: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Relative F0 movement given utterance time u in [0,1], syllable time local in [0,1)."""
    s = style.swing
    if style.contour == "fall":  # fast fall inside every syllable
        return s * (1.0 - 2.0 * local) - 0.1 * u
    if style.contour == "bounce":  # up-down in every syllable
        return s * np.sin(np.pi * local) - 0.05 * u
    if style.contour == "rise":  # glide up over the utterance
        return s * u**2 - 0.1
    if style.contour == "tremor":  # 7 Hz wobble
        return s * np.sin(2 * np.pi * 7.0 * t)
    if style.contour == "decline":
        return s * (0.5 - u) + 0.03 * np.sin(np.pi * local)
    return s * np.sin(np.pi * local)  # flat


def _formant_gain(freqs: np.ndarray, formants: np.ndarray, tilt: float) -> np.ndarray:
    """Magnitude response (vowels, bins) of resonances at `formants` (vowels, 3) with a tilt."""
    bandwidth = np.array([80.0, 100.0, 150.0])
    df = 2.0 * (freqs[None, None, :] - formants[:, :, None]) / bandwidth[None, :, None]
    peaks = (np.array([1.0, 0.8, 0.6])[None, :, None] / np.sqrt(1.0 + df**2)).sum(axis=1)
    return peaks * (1.0 + freqs / 500.0) ** -tilt


def _clip(style: _Style, speaker: _Speaker, rng: np.random.Generator, sr: int) -> np.ndarray:
    n = round(CLIP_SECONDS * sr)
    t = np.arange(n) / sr
    rate = style.rate * rng.uniform(0.88, 1.12)
    syllables = _syllables(rng, rate, sr)
    # Syllable gate, per-syllable time and vowel.
    gate = np.zeros(n)
    local = np.zeros(n)
    vowel = np.zeros(n, np.int64)
    for start, end in syllables:
        m = end - start
        x = np.arange(m) / m
        gate[start:end] = np.sin(np.pi * x) ** 0.6 * rng.uniform(0.7, 1.0)
        local[start:end] = x
        vowel[start:end] = rng.integers(len(_VOWELS))
    u = t / CLIP_SECONDS
    # F0 with a contour, jitter (smoothed noise) and per-clip offset.
    f0 = speaker.f0 * style.f0 * rng.uniform(0.93, 1.07)
    knots = np.arange(0, n + 64, 64)
    noise = np.interp(np.arange(n), knots, rng.standard_normal(len(knots)))  # ~3 ms smooth
    f0 = f0 * (1.0 + _f0_contour(style, u, local, t) * rng.uniform(0.8, 1.2) + style.jitter * noise)
    phase = np.cumsum(f0) / sr
    # Rosenberg glottal flow derivative: opening 40% and closing 20% of the period, then an
    # abrupt closure (the jump gives the -6 dB/octave harmonics of a voice) and a closed phase.
    frac = phase % 1.0
    opening = 0.5 * np.sin(np.pi * frac / 0.4)
    closing = -np.sin(np.pi * (frac - 0.4) / 0.4)
    source = np.where(frac < 0.4, opening, np.where(frac < 0.6, closing, 0.0))
    if style.creak:
        source *= 1.0 - style.creak * (np.floor(phase) % 2)
    source += style.breath * rng.uniform(0.7, 1.3) * rng.standard_normal(n)
    # Per-frame formant filtering: windowed frames, one vowel's response each, overlap-add.
    pad = np.concatenate([np.zeros(_FRAME), source, np.zeros(_FRAME + _HOP)])
    frames = sliding_window_view(pad, _FRAME)[: n + _FRAME : _HOP] * np.hanning(_FRAME)
    centers = np.clip(np.arange(len(frames)) * _HOP - _FRAME // 2, 0, n - 1)
    freqs = np.fft.rfftfreq(_FRAME, 1.0 / sr)
    formants = _VOWELS * speaker.tract * rng.uniform(0.95, 1.05)
    gains = _formant_gain(freqs, formants, style.tilt + rng.uniform(-0.1, 0.1))
    filtered = np.fft.irfft(np.fft.rfft(frames, axis=1) * gains[vowel[centers]], _FRAME, axis=1)
    blocks = np.zeros((len(pad) // _HOP + 1, _HOP))
    for i in range(_FRAME // _HOP):
        blocks[i : i + len(frames)] += filtered[:, i * _HOP : (i + 1) * _HOP]
    out = blocks.ravel()
    voiced = out[_FRAME : _FRAME + n] * gate
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
    level = 0.12 * style.loudness * speaker.gain * rng.uniform(0.85, 1.15)
    wave = level * voiced + rng.uniform(0.002, 0.006) * rng.standard_normal(n)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _readme(speakers: int, clips_per_class: int, sample_rate: int, seed: int) -> str:
    return (
        "ser-jax synthetic demo corpus: synthetic speech-like audio, not real speech.\n"
        "Generated by ser_jax.synthetic.write_synthetic_corpus; do not use for real results.\n"
        f"version={VERSION} speakers={speakers} clips_per_class={clips_per_class} "
        f"sample_rate={sample_rate} seed={seed} seconds={CLIP_SECONDS}\n"
    )


def _clip_name(speaker: int, emotion: str, k: int) -> Path:
    return Path(f"spk{speaker:02d}") / f"synthetic_spk{speaker:02d}_{emotion}_{k:03d}.wav"


def _complete(out_dir: Path, readme: str, files: list[Path]) -> bool:
    marker = out_dir / "README.txt"
    return (
        marker.is_file()
        and marker.read_text() == readme
        and all((out_dir / f).is_file() for f in files)
    )


def write_synthetic_corpus(
    out_dir: str | Path,
    *,
    speakers: int = 6,
    clips_per_class: int = 4,
    sample_rate: int = 22050,
    seed: int = 0,
) -> Path:
    """Writes (or reuses) the synthetic corpus: out_dir/spkNN/synthetic_spkNN_EMOTION_KKK.wav
    16-bit WAVs of CLIP_SECONDS each, speakers spk01.., plus README.txt. Deterministic per seed."""
    out_dir = Path(out_dir)
    readme = _readme(speakers, clips_per_class, sample_rate, seed)
    clips = [
        (s, c, k)
        for s in range(1, speakers + 1)
        for c in range(len(EMOTIONS))
        for k in range(clips_per_class)
    ]
    files = [_clip_name(s, EMOTIONS[c], k) for s, c, k in clips]
    if _complete(out_dir, readme, files):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        marker = out_dir / "README.txt"
        if not (marker.is_file() and marker.read_text().startswith("ser-jax synthetic")):
            raise DatasetError(f"{out_dir} exists and is not a synthetic corpus; not "
                               "overwriting it — move it away or choose another --workdir")
    speaker_params = {s: _speaker(seed, s) for s in range(1, speakers + 1)}

    def write_clip(tmp: Path, clip: tuple[int, int, int]) -> None:
        s, c, k = clip
        wave = _clip(
            _STYLES[EMOTIONS[c]],
            speaker_params[s],
            np.random.default_rng([seed, *clip]),
            sample_rate,
        )
        sf.write(tmp / _clip_name(s, EMOTIONS[c], k), wave, sample_rate, subtype="PCM_16")

    # A stale or partial corpus (e.g. from other settings) is replaced whole, atomically.
    with atomic_directory(out_dir) as tmp:
        for s in speaker_params:
            (tmp / f"spk{s:02d}").mkdir()
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # numpy releases the GIL
            list(pool.map(lambda clip: write_clip(tmp, clip), clips))
        (tmp / "README.txt").write_text(readme)
    return out_dir
