"""Inference for the server: uploaded bytes -> waveform -> windows -> class probabilities ->
the answer.

Decoding is the server's own (bytes, with limits); the windows, their classification and the
answer's rows are predict's (ser_jax.inference.windows), so the server answers a file with the
rows the predict command writes for it. The engine fixes the batch shapes ("buckets"): every
model call pads its rows to the smallest bucket that holds them, so after :meth:`warm_up`
nothing compiles again.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import soxr

from ser_jax.inference import bundle as bundle_lib
from ser_jax.inference import windows

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


class Engine:
    """The bundle, its batch shapes and predict's windows (default hop and silence rule)."""

    def __init__(self, model: bundle_lib.Bundle, buckets: Sequence[int] = (1, 2, 4, 8, 16, 32)):
        self.bundle = model
        self.buckets = tuple(sorted(set(buckets)))
        self.max_rows = self.buckets[-1]
        self.sample_rate = model.config.data.sample_rate
        self.window_samples = round(self.sample_rate * model.config.data.duration)

    def warm_up(self) -> None:
        """Compiles every bucket's program once (features, scaling, model)."""
        for size in self.buckets:
            self.probabilities(np.zeros((size, self.window_samples), np.float32))

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities for window rows (n, T), in calls of at most max_rows."""
        return windows.classify_windows(self.bundle, rows, self.buckets)

    def cut(self, wave: np.ndarray) -> windows.Cut:
        """A decoded upload cut into windows, as predict cuts a file."""
        return windows.cut_windows(self.bundle, wave)

    def answer(self, cut: windows.Cut, probabilities: np.ndarray) -> dict:
        """The JSON answer: predict's file row (emotion, probabilities, speech, counts), its
        window rows under ``window_rows``; no ``path`` (an upload has none)."""
        *window_rows, file_row = [{k: v for k, v in row.items() if k != "path"} for row in
                                  windows.file_prediction(cut, probabilities,
                                                          self.bundle.labels).rows()]
        return {**file_row, "window_rows": window_rows}
