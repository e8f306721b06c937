"""Inference for the server: uploaded bytes -> waveform -> window rows -> class probabilities.

``Engine.predict_waves`` is the one place that turns waveforms into per-window rows and a
file-level result; everything model-related goes through the loaded bundle (``Bundle.inputs``,
``Bundle.probabilities``), the same path ``predict_files`` takes, in fixed batch shapes.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Sequence

import jax
import jax.monitoring
import numpy as np
import soundfile as sf
import soxr

from ser_jax.inference import bundle as bundle_lib
from ser_jax.training.reference import SILENT_RMS  # a window below it is marked silent

MAX_RATE = 192_000  # highest native sample rate decoded
MAX_CHANNELS = 8


class InputError(Exception):
    """An upload that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# Leading bytes of the containers libsndfile decodes (wav, flac, ogg/opus, aiff, mp3).
_MAGIC = ((b"RIFF", "wav"), (b"RF64", "wav"), (b"fLaC", "flac"), (b"OggS", "ogg"),
          (b"FORM", "aiff"), (b"ID3", "mp3"))
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac",
               "audio/x-flac", "audio/ogg", "audio/mpeg", "audio/mp3", "audio/aiff",
               "audio/x-aiff", "application/octet-stream")


def sniff_format(data: bytes) -> str | None:
    """The audio container ``data`` starts with, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # an MPEG frame sync
        return "mp3"
    return None


def check_media_type(content_type: str | None) -> None:
    """Raises 415 for a declared type that is not audio (none or octet-stream: sniffed later)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in AUDIO_TYPES and not media.startswith("audio/"):
        raise InputError(415, f"unsupported content type {media!r}; send audio "
                              "(WAV, FLAC, OGG, AIFF or MP3) as audio/* or "
                              "application/octet-stream")


def decode(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Uploaded bytes -> float32 mono samples at ``sample_rate`` (the whole file).

    Raises InputError: 422 empty or undecodable, 415 not an audio container, 413 too long."""
    if not data:
        raise InputError(422, "empty upload (0 bytes); send an audio file")
    if sniff_format(data) is None:
        raise InputError(415, "not a recognized audio file (expected WAV, FLAC, OGG, AIFF or "
                              f"MP3; the upload starts with {data[:8]!r})")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            native_rate, frames = f.samplerate, f.frames
            if frames <= 0:
                raise InputError(422, "the audio file holds no samples")
            if frames / native_rate > max_seconds:
                raise InputError(413, f"audio is {frames / native_rate:.1f} s long; the limit "
                                      f"is {max_seconds:g} s")
            if native_rate > MAX_RATE or f.channels > MAX_CHANNELS:
                raise InputError(422, f"{f.channels} channels at {native_rate} Hz; at most "
                                      f"{MAX_CHANNELS} channels at {MAX_RATE} Hz are read")
            # mixed down block by block: a small, well-compressed upload cannot fill memory
            blocks = [block.mean(axis=1, dtype=np.float32) for block in
                      f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)]
    except InputError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
        raise InputError(422, f"cannot decode the audio: {e}") from e
    wave = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if len(wave) == 0:
        raise InputError(422, "the audio file holds no decodable samples (truncated?)")
    if not np.isfinite(wave).all():
        raise InputError(422, "the audio holds NaN or infinite samples")
    if native_rate != sample_rate:
        wave = soxr.resample(wave, native_rate, sample_rate, quality="HQ").astype(np.float32)
    return wave


@dataclasses.dataclass
class Windows:
    """One waveform cut into model windows: rows (n, T), their start times and silence flags."""

    rows: np.ndarray
    starts: list[float]
    silent: list[bool]


def cut_windows(wave: np.ndarray, sample_rate: int, offset: float, duration: float) -> Windows:
    """The training window [offset, offset+duration] for a clip that fits in it; for a longer
    file, consecutive windows of ``duration`` from ``offset`` on (a last partial window of at
    least half a window is zero-padded, a shorter tail dropped). A file shorter than
    ``offset`` is read from its start."""
    size = round(sample_rate * duration)
    start = round(sample_rate * offset) if len(wave) > round(sample_rate * offset) else 0
    starts = list(range(start, max(start + 1, len(wave) - size // 2 + 1), size)) or [start]
    rows = np.zeros((len(starts), size), np.float32)
    for i, s in enumerate(starts):
        piece = wave[s:s + size]
        rows[i, :len(piece)] = piece
    rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
    return Windows(rows, [s / sample_rate for s in starts], [bool(r < SILENT_RMS) for r in rms])


class CompileCounter:
    """Counts XLA backend compilations in this process (jax.monitoring events)."""

    _count = 0
    _lock = threading.Lock()
    _registered = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if not cls._registered:
                jax.monitoring.register_event_duration_secs_listener(cls._on_event)
                cls._registered = True

    @classmethod
    def _on_event(cls, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            with cls._lock:
                cls._count += 1

    @classmethod
    def count(cls) -> int:
        return cls._count


class Engine:
    """The bundle plus fixed batch shapes ("buckets"): every model call pads its rows to the
    smallest bucket that holds them, so after :meth:`warm_up` nothing compiles again."""

    def __init__(self, model: bundle_lib.Bundle, buckets: Sequence[int] = (1, 2, 4, 8, 16, 32)):
        self.bundle = model
        self.buckets = tuple(sorted(set(buckets)))
        self.max_rows = self.buckets[-1]
        data = model.config.data
        self.sample_rate, self.offset, self.duration = (data.sample_rate, data.offset,
                                                        data.duration)
        self.window_samples = round(self.sample_rate * self.duration)
        CompileCounter.install()

    def warm_up(self) -> None:
        """Compiles every bucket's program once (features, scaling, model)."""
        for size in self.buckets:
            self.probabilities(np.zeros((size, self.window_samples), np.float32))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities for window rows (n, T), n <= the largest bucket, in one call."""
        n = len(rows)
        if not 0 < n <= self.max_rows:
            raise ValueError(f"{n} rows; one call takes 1..{self.max_rows}")
        bucket = next(b for b in self.buckets if b >= n)
        padded = np.zeros((bucket, rows.shape[1]), np.float32)
        padded[:n] = rows
        return self.bundle.probabilities(self.bundle.inputs(padded))[:n]

    def windows(self, wave: np.ndarray) -> Windows:
        return cut_windows(wave, self.sample_rate, self.offset, self.duration)

    def result(self, windows: Windows, probabilities: np.ndarray) -> dict:
        """The file-level answer for one waveform from its windows' probabilities: the mean over
        the windows that are not silent (all windows when every one is silent); per-window rows
        when there is more than one window."""
        labels = self.bundle.labels
        everything = list(range(len(windows.silent)))
        keep = [i for i in everything if not windows.silent[i]] or everything
        mean = probabilities[keep].mean(axis=0)
        answer = {"emotion": labels[int(mean.argmax())],
                  "probabilities": dict(zip(labels, map(float, mean), strict=True)),
                  "windows_used": len(keep)}
        if len(windows.starts) > 1:
            answer["windows"] = [
                {"start_s": round(start, 3), "end_s": round(start + self.duration, 3),
                 "silent": silent, "emotion": labels[int(row.argmax())],
                 "probabilities": dict(zip(labels, map(float, row), strict=True))}
                for start, silent, row in zip(windows.starts, windows.silent, probabilities,
                                              strict=True)]
        if all(windows.silent):
            answer["warning"] = "every window is silent; the prediction is not meaningful"
        return answer

    def predict_waves(self, waves: Sequence[np.ndarray]) -> list[dict]:
        """Answers for whole waveforms (mono, at the bundle's rate), one model call per
        ``max_rows`` windows. The micro-batcher calls the pieces (windows, probabilities,
        result) separately to merge requests; this is the same computation, unbatched."""
        cut = [self.windows(w) for w in waves]
        rows = np.concatenate([c.rows for c in cut])
        probs = np.concatenate([self.probabilities(rows[i:i + self.max_rows])
                                for i in range(0, len(rows), self.max_rows)])
        answers, first = [], 0
        for c in cut:
            answers.append(self.result(c, probs[first:first + len(c.starts)]))
            first += len(c.starts)
        return answers
