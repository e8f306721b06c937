"""Audio loading: decode -> window [offset, offset+duration] -> mono -> resample -> zero-pad."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ser_jax.data.placement import check_placement, window_start


class AudioError(Exception):
    """A clip that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def default_workers() -> int:
    """Threads for load_clips: decoding and resampling release the GIL."""
    return min(8, os.cpu_count() or 1)


def load_clip(
    path: str | Path, *, sample_rate: int = 22050, offset: float = 0.6, duration: float = 2.5,
    placement: str = "offset",
) -> np.ndarray:
    """Returns float32 mono samples of [offset, offset+duration] at `sample_rate`, zero-padded
    to exactly round(sample_rate * duration); raises AudioError for an unusable file. With
    placement='speech' the window starts at the first speech sample instead (see
    ser_jax.data.placement)."""
    if placement != "offset":
        wave = load_recording(path, sample_rate)
        start = window_start(wave, sample_rate, placement, offset, duration)
        return fit(wave[start:], round(sample_rate * duration))
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        with sf.SoundFile(path) as f:
            native_rate, frames = f.samplerate, f.frames
            if frames == 0:
                raise AudioError(path, "no audio frames")
            start = round(native_rate * offset)
            if start >= frames:
                raise AudioError(
                    path,
                    f"clip is {frames / native_rate:.3f} s long, not longer than the "
                    f"offset {offset} s",
                )
            f.seek(start)
            data = f.read(round(native_rate * duration), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(path, f"cannot read or decode: {e}") from e
    if not np.isfinite(data).all():
        raise AudioError(path, f"{int((~np.isfinite(data)).sum())} samples are NaN or inf")
    wave = data.mean(axis=1, dtype=np.float32)
    if native_rate != sample_rate:
        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ")
    return fit(wave, round(sample_rate * duration))


def fit(wave: np.ndarray, n: int) -> np.ndarray:
    """wave's first n samples, zero-padded to n (float32)."""
    out = np.zeros(n, np.float32)
    out[: min(n, wave.size)] = wave[:n]
    return out


def load_recording(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole file as float32 mono samples at `sample_rate` (decoded, channels averaged and
    resampled as load_clip does); raises AudioError for an unusable file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        data, native_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(path, f"cannot read or decode: {e}") from e
    if len(data) == 0:
        raise AudioError(path, "no audio frames")
    if not np.isfinite(data).all():
        raise AudioError(path, f"{int((~np.isfinite(data)).sum())} samples are NaN or inf")
    wave = data.mean(axis=1, dtype=np.float32)
    if native_rate != sample_rate:
        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ")
    return wave


def load_clips(
    paths: Sequence[str | Path],
    *,
    sample_rate: int,
    offset: float,
    duration: float,
    placement: str = "offset",
    workers: int | None = None,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Loads clips in input order with a thread pool. Returns (waves (N_ok, T) float32,
    indices of the paths that loaded, rejects [(path, reason)]); never raises for a bad file."""

    waves = np.zeros((len(paths), round(sample_rate * duration)), np.float32)
    window = {"sample_rate": sample_rate, "offset": offset, "duration": duration,
              "placement": check_placement(placement)}

    def load(i: int) -> str | None:
        try:
            waves[i] = load_clip(paths[i], **window)
        except AudioError as e:
            return e.reason
        return None

    workers = default_workers() if workers is None else workers
    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(workers) as pool:
            reasons = list(pool.map(load, range(len(paths))))
    else:
        reasons = [load(i) for i in range(len(paths))]
    ok = [i for i, reason in enumerate(reasons) if reason is None]
    rejects = [(str(paths[i]), r) for i, r in enumerate(reasons) if r is not None]
    return (waves[ok] if rejects else waves), ok, rejects
