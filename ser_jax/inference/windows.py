"""Whole recordings of any length: sliding windows of the training window, speech marking,
fixed-shape batches. The predict command and the HTTP server both go through here.

A recording is cut into windows of ``data.duration`` seconds (the training window) every ``hop``
seconds. The first window starts where ``data.placement`` puts the training window (the offset,
or the first speech sample), moved earlier when the recording ends before that window would; a
recording shorter than the window gives one zero-padded window. The last window is aligned to
the end of the recording, so every window of a longer recording is full of audio. A window
without speech (``data.quality.speech_windows``: no frame within ``silence_db`` of the
recording's loudest, or none above -80 dBFS) is marked, not classified. The recording's own row
averages the class probabilities of its speech windows.

The steps can be called apart, as the server's micro-batcher does: :func:`cut_windows` (a
recording -> its windows, speech marks and the rows to classify), :func:`classify_windows`
(rows -> probabilities, in padded batches of fixed sizes) and :func:`file_prediction` (a cut
and its rows' probabilities -> window rows and the file row). Windows of all recordings in a
call are classified together, so the feature extractor and the model each compile once per
batch size, whatever the recordings' lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ser_jax.data import audio
from ser_jax.data.placement import window_start
from ser_jax.data.quality import SILENCE_DB, speech_windows
from ser_jax.features import extractor as features
from ser_jax.inference.bundle import Bundle

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


@dataclasses.dataclass(frozen=True)
class Cut:
    """A recording cut into windows: their first samples, which hold speech, and the speech
    windows' samples (rows, window samples), zero-padded to the window: what gets classified."""

    path: str | None
    samples: int  # the recording's length
    sample_rate: int
    window: int  # samples per window
    starts: list[int]  # each window's first sample
    speech: np.ndarray  # (windows,) bool
    rows: np.ndarray  # (speech windows, window) float32


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


def cut_windows(bundle: Bundle, wave: np.ndarray, hop: float | None = None, *,
                silence_db: float = SILENCE_DB, path: str | Path | None = None) -> Cut:
    """`wave` (float32 mono at the bundle's data.sample_rate) cut into windows every `hop`
    seconds (default: half the window), speech marked, the speech windows' rows taken."""
    data = bundle.config.data
    n = round(data.sample_rate * data.duration)
    wave = np.asarray(wave, np.float32)
    starts = window_starts(wave, bundle, default_hop(bundle) if hop is None else hop)
    speech = speech_windows(wave, starts, n, silence_db)
    rows = np.array([audio.fit(wave[s:s + n], n) for s in np.asarray(starts)[speech]],
                    np.float32).reshape(-1, n)
    return Cut(None if path is None else str(path), len(wave), data.sample_rate, n, starts,
               speech, rows)


def classify_windows(bundle: Bundle, windows: np.ndarray,
                     batch_sizes: Sequence[int] = (BATCH_WINDOWS,)) -> np.ndarray:
    """Class probabilities (k, classes) of windows (k, samples) in calls of at most the largest
    batch size, each zero-padded to the smallest size that holds it: only those input shapes
    are ever compiled, whatever k is."""
    sizes = sorted(set(batch_sizes))
    out = []
    for i in range(0, len(windows), sizes[-1]):
        chunk = windows[i:i + sizes[-1]]
        size = next(s for s in sizes if s >= len(chunk))
        padded = np.pad(chunk, ((0, size - len(chunk)), (0, 0)))
        out.append(bundle.probabilities(bundle.inputs(padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(bundle.labels)), np.float32)


def file_prediction(cut: Cut, probabilities: np.ndarray, labels: Sequence[str]
                    ) -> FilePrediction:
    """The windows and the file row of `cut`, given its rows' class probabilities (one row per
    speech window, in order; none needed when no window holds speech)."""
    rate = cut.sample_rate
    if len(probabilities) != len(cut.rows):
        raise ValueError(f"{len(probabilities)} probability rows for {len(cut.rows)} windows")
    rows = iter(probabilities)
    windows = []
    for start, keep in zip(cut.starts, cut.speech, strict=True):
        span = (round(start / rate, 3), round(min(start + cut.window, cut.samples) / rate, 3))
        windows.append(Window(*span, True, *_labelled(labels, next(rows))) if keep
                       else Window(*span, speech=False))
    file_row = {"kind": "file", "start": 0.0, "end": round(cut.samples / rate, 3),
                "speech": bool(len(probabilities)), "windows": len(windows),
                "speech_windows": len(probabilities), "emotion": None, "probabilities": None}
    if len(probabilities):
        file_row["emotion"], file_row["probabilities"] = _labelled(
            labels, np.mean(probabilities, axis=0))
    return FilePrediction(cut.path, cut.samples / rate, windows, file_row)


def predict_waveforms(bundle: Bundle, waves: Sequence[np.ndarray], hop: float | None = None, *,
                      paths: Sequence[str | None] | None = None, silence_db: float = SILENCE_DB,
                      batch_sizes: Sequence[int] = (BATCH_WINDOWS,)) -> list[FilePrediction]:
    """Predicts recordings (float32 mono at the bundle's data.sample_rate), their windows
    classified together in fixed-shape batches."""
    paths = [None] * len(waves) if paths is None else paths
    cuts = [cut_windows(bundle, wave, hop, silence_db=silence_db, path=path)
            for wave, path in zip(waves, paths, strict=True)]
    rows = (np.concatenate([c.rows for c in cuts]) if cuts else
            np.zeros((0, round(bundle.config.data.sample_rate * bundle.config.data.duration)),
                     np.float32))
    probabilities = classify_windows(bundle, rows, batch_sizes)
    ends = np.cumsum([len(c.rows) for c in cuts])
    return [file_prediction(c, probabilities[end - len(c.rows):end], bundle.labels)
            for c, end in zip(cuts, ends, strict=True)]


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


def _labelled(labels: Sequence[str], row: np.ndarray) -> tuple[str, dict[str, float]]:
    return labels[int(np.argmax(row))], {k: round(float(v), 6) for k, v in zip(labels, row,
                                                                             strict=True)}
