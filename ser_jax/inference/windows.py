"""Whole recordings of any length: sliding windows of the training window, speech marking,
fixed-shape batches.

A recording is cut into windows of ``data.duration`` seconds (the training window) every ``hop``
seconds. The first window starts where ``data.placement`` puts the training window (the offset,
or the first speech sample), moved earlier when the recording ends before that window would; a
recording shorter than the window gives one zero-padded window. The last window is aligned to
the end of the recording, so every window of a longer recording is full of audio. A window whose
loudest frame (2048 samples) is more than ``silence_db`` below the recording's loudest frame, or
below ``FLOOR_DB`` dBFS, has no speech: it is marked, not classified. The recording's own row
averages the class probabilities of its speech windows.

Windows of all recordings in a call are classified together in batches of ``batch_windows``
(the last zero-padded), so the feature extractor and the model each compile once for a bundle,
whatever the recordings' lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from ser_jax import audio, features
from ser_jax.bundle import Bundle
from ser_jax.data.placement import FRAME_HOP, frame_rms_db, window_start

SILENCE_DB = 50.0
FLOOR_DB = -80.0
BATCH_WINDOWS = features.CPU_CHUNK


@dataclasses.dataclass(frozen=True)
class Window:
    """One window: its span in seconds of the recording, and a prediction when it has speech."""

    start: float
    end: float
    speech: bool
    emotion: str | None = None
    probabilities: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class FilePrediction:
    """A recording's windows and its own row (the mean over its speech windows)."""

    path: str | None
    duration: float
    windows: list[Window]
    file_row: dict

    def rows(self, windows: bool = True) -> list[dict]:
        """Output rows: one per window (kind 'window', when `windows`), then the file's row."""
        head = {"path": self.path}
        out = [{**head, "kind": "window", **dataclasses.asdict(w)} for w in self.windows
               ] if windows else []
        return [*out, {**head, **self.file_row}]


def error_row(path: str, reason: str) -> dict:
    """The output row of a file that could not be predicted."""
    return {"path": path, "kind": "error", "error": reason}


def default_hop(bundle: Bundle) -> float:
    """Half the training window, in seconds."""
    return bundle.config.data.duration / 2


def window_starts(wave: np.ndarray, bundle: Bundle, hop: float) -> list[int]:
    """First samples of the windows predict takes from `wave` (module docstring)."""
    data = bundle.config.data
    n = round(data.sample_rate * data.duration)
    step = round(data.sample_rate * hop)
    if step <= 0:
        raise ValueError(f"hop={hop}: give a positive number of seconds")
    first = window_start(wave, data.sample_rate, data.get("placement", "offset"), data.offset,
                         data.duration)
    last = max(first, len(wave) - n)
    starts = list(range(first, last, step))
    return [*starts, last]


def speech_windows(wave: np.ndarray, starts: Sequence[int], n: int,
                   silence_db: float = SILENCE_DB) -> np.ndarray:
    """Whether each window [start, start + n) has a frame (centred in it) within silence_db of
    the recording's loudest frame and above FLOOR_DB dBFS."""
    db = frame_rms_db(wave)
    threshold = max(float(db.max()) - silence_db, FLOOR_DB)
    first = -(-np.asarray(starts) // FRAME_HOP)
    end = (np.asarray(starts) + n - 1) // FRAME_HOP + 1
    return np.array([db[a:b].max(initial=-np.inf) >= threshold for a, b in zip(first, end,
                                                                               strict=True)])


def classify_windows(bundle: Bundle, windows: np.ndarray,
                     batch_windows: int = BATCH_WINDOWS) -> np.ndarray:
    """Class probabilities (k, classes) of windows (k, samples), batch_windows at a time, the
    last batch zero-padded: one input shape whatever k is."""
    out = []
    for i in range(0, len(windows), batch_windows):
        chunk = windows[i:i + batch_windows]
        padded = np.pad(chunk, ((0, batch_windows - len(chunk)), (0, 0)))
        out.append(bundle.probabilities(bundle.inputs(padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(bundle.labels)), np.float32)


def predict_waveforms(bundle: Bundle, waves: Sequence[np.ndarray], hop: float | None = None, *,
                      paths: Sequence[str | None] | None = None, silence_db: float = SILENCE_DB,
                      batch_windows: int = BATCH_WINDOWS) -> list[FilePrediction]:
    """Predicts recordings (float32 mono at the bundle's data.sample_rate), their windows
    classified together in fixed-shape batches."""
    data = bundle.config.data
    rate, n = data.sample_rate, round(data.sample_rate * data.duration)
    hop = default_hop(bundle) if hop is None else hop
    paths = [None] * len(waves) if paths is None else paths
    plans, pieces = [], []
    for wave in waves:
        wave = np.asarray(wave, np.float32)
        starts = window_starts(wave, bundle, hop)
        speech = speech_windows(wave, starts, n, silence_db)
        plans.append((wave, starts, speech))
        pieces += [_fit(wave[s:s + n], n) for s, keep in zip(starts, speech, strict=True) if keep]
    probabilities = iter(classify_windows(bundle, np.stack(pieces) if pieces else
                                          np.zeros((0, n), np.float32), batch_windows))
    results = []
    for path, (wave, starts, speech) in zip(paths, plans, strict=True):
        windows, rows = [], []
        for start, keep in zip(starts, speech, strict=True):
            span = (round(start / rate, 3), round(min(start + n, len(wave)) / rate, 3))
            if not keep:
                windows.append(Window(*span, speech=False))
                continue
            row = next(probabilities)
            rows.append(row)
            windows.append(Window(*span, True, *_labelled(bundle.labels, row)))
        file_row = {"kind": "file", "start": 0.0, "end": round(len(wave) / rate, 3),
                    "speech": bool(rows), "windows": len(windows), "speech_windows": len(rows),
                    "emotion": None, "probabilities": None}
        if rows:
            file_row["emotion"], file_row["probabilities"] = _labelled(
                bundle.labels, np.mean(rows, axis=0))
        results.append(FilePrediction(None if path is None else str(path), len(wave) / rate,
                                      windows, file_row))
    return results


def predict_waveform(bundle: Bundle, wave: np.ndarray, hop: float | None = None,
                     **kwargs) -> FilePrediction:
    """predict_waveforms for one recording."""
    return predict_waveforms(bundle, [wave], hop, **kwargs)[0]


def predict_paths(bundle: Bundle, paths: Sequence[str | Path], hop: float | None = None, *,
                  files_per_batch: int = 16, workers: int | None = None,
                  on_file: Callable[[], None] | None = None, **kwargs
                  ) -> Iterator[FilePrediction | dict]:
    """Predicts audio files in order: a FilePrediction each, or an error_row for a file that
    cannot be decoded (the others go on). Files are decoded by a thread pool one group ahead of
    the group being classified; on_file is called once per finished file (progress bars)."""
    rate = bundle.config.data.sample_rate
    groups = [list(paths[i:i + files_per_batch]) for i in range(0, len(paths), files_per_batch)]
    with ThreadPoolExecutor(workers or audio.default_workers()) as pool:
        pending = _submit(pool, groups[0], rate) if groups else []
        for index in range(len(groups)):
            loaded = [f.result() for f in pending]
            if index + 1 < len(groups):
                pending = _submit(pool, groups[index + 1], rate)
            good = [(p, w) for p, w in zip(groups[index], loaded, strict=True)
                    if not isinstance(w, str)]
            done = iter(predict_waveforms(bundle, [w for _, w in good], hop,
                                          paths=[str(p) for p, _ in good], **kwargs))
            for path, wave in zip(groups[index], loaded, strict=True):
                yield error_row(str(path), wave) if isinstance(wave, str) else next(done)
                if on_file:
                    on_file()


def _submit(pool: ThreadPoolExecutor, paths: list, rate: int) -> list[Future]:
    return [pool.submit(_load_or_reason, path, rate) for path in paths]


def _load_or_reason(path: str | Path, rate: int) -> np.ndarray | str:
    """The decoded recording, or why it cannot be used (never raises for a bad file)."""
    try:
        return audio.load_recording(path, rate)
    except audio.AudioError as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 - one broken file must not stop the others
        return f"cannot read or decode: {type(e).__name__}: {e}"


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[:min(n, len(wave))] = wave[:n]
    return out


def _labelled(labels: list[str], row: np.ndarray) -> tuple[str, dict[str, float]]:
    return labels[int(np.argmax(row))], {k: round(float(v), 6) for k, v in zip(labels, row,
                                                                             strict=True)}


_COMPILES = [0]


def _count(event: str, *args, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def compile_count() -> int:
    """Programs JAX has lowered for compilation in this process so far (each jit cache miss,
    whether or not the persistent compilation cache then had the binary)."""
    return _COMPILES[0]
