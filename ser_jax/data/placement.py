"""Where a clip's training window sits, and which parts of a recording hold speech.

``data.placement`` chooses the window that training takes from each clip and that predict's
first window starts at:

- ``'offset'``: the window starts ``data.offset`` seconds into the clip (the seed's habit: RAVDESS
  clips open with silence).
- ``'speech'``: the window starts at the first speech sample, found by an energy trim like
  ``librosa.effects.trim(top_db=60)`` (frames of 2048 samples every 512, centred, whose RMS is
  within 60 dB of the loudest frame's).

With ``'speech'`` (and in predict with either), a start that would leave the window short of the
clip's end is moved earlier, down to 0, so the window holds as much audio as the clip has; a clip
shorter than the window is zero-padded at its end.
"""

from __future__ import annotations

import numpy as np

PLACEMENTS = ("offset", "speech")
FRAME_LENGTH = 2048
FRAME_HOP = 512
TRIM_TOP_DB = 60.0


def check_placement(placement: str) -> str:
    """Returns placement, or raises ValueError naming the accepted values."""
    if placement not in PLACEMENTS:
        raise ValueError(f"data.placement={placement!r}: use one of {', '.join(PLACEMENTS)}")
    return placement


def frame_rms_db(wave: np.ndarray) -> np.ndarray:
    """RMS in dB (re full scale 1.0) of centred frames (FRAME_LENGTH every FRAME_HOP samples,
    zero-padded at both ends, as librosa.feature.rms); -inf for digital silence. Frame i is
    centred on sample i * FRAME_HOP."""
    padded = np.pad(np.asarray(wave, np.float64), FRAME_LENGTH // 2)
    energy = np.concatenate([[0.0], np.cumsum(padded * padded)])
    starts = np.arange(0, len(padded) - FRAME_LENGTH + 1, FRAME_HOP)
    mean_square = np.maximum(energy[starts + FRAME_LENGTH] - energy[starts], 0.0) / FRAME_LENGTH
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(mean_square)


def speech_bounds(wave: np.ndarray, top_db: float = TRIM_TOP_DB) -> tuple[int, int] | None:
    """(first, end) samples of the non-silent part, as librosa.effects.trim: frames within
    top_db of the loudest frame; None when the clip is digital silence."""
    db = frame_rms_db(wave)
    if not np.isfinite(db.max()):
        return None
    loud = np.flatnonzero(db > db.max() - top_db)
    return int(loud[0]) * FRAME_HOP, min(len(wave), (int(loud[-1]) + 1) * FRAME_HOP)


def window_start(wave: np.ndarray, sample_rate: int, placement: str, offset: float,
                 duration: float) -> int:
    """The first sample of the window of `duration` seconds that `placement` takes from
    `wave`: the offset or the first speech sample, moved earlier (not before 0) so that the
    window ends no later than the clip does."""
    check_placement(placement)
    if placement == "offset":
        anchor = round(sample_rate * offset)
    else:
        bounds = speech_bounds(wave)
        anchor = 0 if bounds is None else bounds[0]
    return max(0, min(anchor, len(wave) - round(sample_rate * duration)))
