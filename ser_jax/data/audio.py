"""Audio loading: decode -> window [offset, offset+duration] -> mono -> resample -> zero-pad."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from ser_jax.core.errors import DataError
from ser_jax.data.placement import check_placement, window_start


class AudioError(DataError):
    """A clip that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


CLIPPING_ACTIONS = ("keep", "reject")
SHORT_ACTIONS = ("pad", "reject")
FULL_SCALE = 0.999  # |sample| at or above this counts as clipped


@dataclasses.dataclass(frozen=True)
class Quality:
    """Audio quality gates (config.data.quality): silent clips are rejected; clipped clips
    and clips shorter than the window are flagged, or rejected when the action says so."""

    min_rms_dbfs: float = -70.0  # RMS of the window below this: silent, rejected
    max_clipped_fraction: float = 0.01  # more samples than this at full scale: clipped
    clipping: str = "keep"  # what to do with a clipped clip: keep (flagged) or reject
    short: str = "pad"  # a clip shorter than offset + duration: pad with zeros (flagged), reject

    @classmethod
    def from_config(cls, quality: object | None) -> Quality:
        """The gates of a config.data.quality section; the defaults for a config without one."""
        if quality is None:
            return cls()
        return cls(**{f.name: quality[f.name] for f in dataclasses.fields(cls)
                      if f.name in quality})


def rms_dbfs(wave: np.ndarray) -> float:
    """The RMS level of ``wave`` in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def _check_quality(path: Path, data: np.ndarray, wanted: int, quality: Quality,
                   notes: list[str] | None) -> None:
    """Raises AudioError for a clip the gates reject; appends the flags of a kept one."""
    level = rms_dbfs(data)
    if level < quality.min_rms_dbfs:
        raise AudioError(path, f"silent: RMS {level:.1f} dBFS is below data.quality."
                               f"min_rms_dbfs={quality.min_rms_dbfs:g}")
    clipped = float(np.mean(np.abs(data) >= FULL_SCALE)) if data.size else 0.0
    if clipped > quality.max_clipped_fraction:
        reason = (f"clipped: {clipped:.1%} of samples at full scale, above data.quality."
                  f"max_clipped_fraction={quality.max_clipped_fraction:g}")
        if quality.clipping == "reject":
            raise AudioError(path, reason)
        if notes is not None:
            notes.append(reason)
    if len(data) < wanted:
        reason = (f"short: {len(data) / max(wanted, 1):.0%} of the window after the offset "
                  f"(data.quality.short={quality.short})")
        if quality.short == "reject":
            raise AudioError(path, reason)
        if notes is not None:
            notes.append(reason + ", zero-padded")


def default_workers() -> int:
    """Threads for load_clips: decoding and resampling release the GIL."""
    return min(8, os.cpu_count() or 1)


def load_clip(
    path: str | Path, *, sample_rate: int = 22050, offset: float = 0.6, duration: float = 2.5,
    placement: str = "offset", quality: Quality | None = None, notes: list[str] | None = None,
) -> np.ndarray:
    """Returns float32 mono samples of [offset, offset+duration] at `sample_rate`, zero-padded
    to exactly round(sample_rate * duration); raises AudioError for an unusable file. With
    placement='speech' the window starts at the first speech sample instead (see
    ser_jax.data.placement).

    With ``quality`` the window also passes its gates (AudioError when one rejects it); the
    flags of a clip that is kept anyway (clipped, short) are appended to ``notes``."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    n = round(sample_rate * duration)
    if placement != "offset":
        wave = load_recording(path, sample_rate)
        window = wave[window_start(wave, sample_rate, placement, offset, duration):][:n]
        if quality is not None:
            _check_quality(path, window[:, None], n, quality, notes)
        return fit(window, n)
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
    if quality is not None:
        _check_quality(path, data, round(native_rate * duration), quality, notes)
    wave = data.mean(axis=1, dtype=np.float32)
    if native_rate != sample_rate:
        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ")
    return fit(wave, n)


def fit(wave: np.ndarray, n: int) -> np.ndarray:
    """wave's first n samples, zero-padded to n (float32)."""
    out = np.zeros(n, np.float32)
    out[: min(n, wave.size)] = wave[:n]
    return out


def load_recording(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole file as float32 mono samples at `sample_rate` (decoded, channels averaged and
    resampled as load_clip does); raises AudioError for an unusable file."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
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
    quality: Quality | None = None,
    flagged: list[tuple[str, str]] | None = None,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Loads clips in input order with a thread pool. Returns (waves (N_ok, T) float32,
    indices of the paths that loaded, rejects [(path, reason)]); never raises for a bad file.

    ``quality`` gates each clip (see load_clip); the clips kept with a flag are appended to
    ``flagged`` as (path, reason), in input order."""

    waves = np.zeros((len(paths), round(sample_rate * duration)), np.float32)
    window = {"sample_rate": sample_rate, "offset": offset, "duration": duration,
              "placement": check_placement(placement), "quality": quality}
    notes: list[list[str]] = [[] for _ in paths]

    def load(i: int) -> str | None:
        try:
            waves[i] = load_clip(paths[i], notes=notes[i], **window)
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
    if flagged is not None:
        flagged += [(str(paths[i]), "; ".join(notes[i])) for i in ok if notes[i]]
    rejects = [(str(paths[i]), r) for i, r in enumerate(reasons) if r is not None]
    return (waves[ok] if rejects else waves), ok, rejects


def load_config_clips(paths: Sequence[str | Path], data: Any,
                      flagged: list[tuple[str, str]] | None = None
                      ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """load_clips with the window, placement and quality gates of a config's ``data`` section
    (as training loads clips); see load_clips for what it returns and ``flagged``."""
    return load_clips([str(p) for p in paths], sample_rate=data.sample_rate, offset=data.offset,
                      duration=data.duration, placement=data.get("placement", "offset"),
                      quality=Quality.from_config(data.get("quality")), flagged=flagged)
