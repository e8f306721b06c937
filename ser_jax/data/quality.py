"""What "silent", "speech" and "clipped" mean, defined once for every stage.

Two questions, one rule each:

- **Does a window of a recording hold speech?** (predict and the server classify only windows
  that do; the others are marked ``speech: false``.) Relative to the recording, so that a quiet
  but clean recording is still read: a window holds speech when one of its frames (2048 samples
  every 512, centred, as ``placement.frame_rms_db``) is within ``SILENCE_DB`` (50 dB) of the
  recording's loudest frame and at or above ``FLOOR_DB`` (-80 dBFS).
- **Is a clip's input usable?** (the monitoring reference and reports count these per clip, on
  the training window of each clip.) Absolute, since drift in level is what it watches:
  *silent* when the window's RMS is below ``SILENT_RMS`` (1e-3 of full scale, -60 dBFS);
  *clipped* when at least ``CLIPPED_SHARE`` (0.1%) of its samples reach ``|x| >= CLIP_LEVEL``
  (0.999); *too short* when the file ends before the training window does (zero-padded).

Where speech starts in a clip (``data.placement='speech'``) is the energy trim of
``placement.speech_bounds`` (frames within 60 dB of the loudest, as librosa's trim).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ser_jax.data.placement import FRAME_HOP, frame_rms_db

SILENCE_DB = 50.0  # a window with no frame within this of the recording's loudest: no speech
FLOOR_DB = -80.0  # ... nor with no frame at or above this level (dBFS)
SILENT_RMS = 1e-3  # a clip's training window with RMS below this is silent (full scale 1.0)
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIPPED_SHARE = 0.001  # a clip is clipped when at least this share of its window is
QUALITY_DEFINITIONS = {
    "silent": f"RMS of the training window below {SILENT_RMS}",
    "clipped": f"at least {CLIPPED_SHARE:.1%} of the window's samples at |x| >= {CLIP_LEVEL}",
    "too_short": "the file ends before the training window does (offset + duration), so the "
                 "window is zero-padded",
}


def speech_windows(wave: np.ndarray, starts: Sequence[int], size: int,
                   silence_db: float = SILENCE_DB) -> np.ndarray:
    """Whether each window [start, start + size) of `wave` holds speech: a frame centred in
    it within silence_db of the recording's loudest frame and at or above FLOOR_DB dBFS."""
    db = frame_rms_db(wave)
    threshold = max(float(db.max()) - silence_db, FLOOR_DB)
    first = -(-np.asarray(starts) // FRAME_HOP)
    end = (np.asarray(starts) + size - 1) // FRAME_HOP + 1
    return np.array([db[a:b].max(initial=-np.inf) >= threshold
                     for a, b in zip(first, end, strict=True)], dtype=bool)


def quality_flags(waves: np.ndarray, seconds: Sequence[float],
                  window_end: float) -> dict[str, np.ndarray]:
    """Per-clip booleans (silent, clipped, too_short) for training windows `waves` (N, T),
    the files' lengths in seconds and where the training window ends (offset + duration)."""
    waves = np.asarray(waves, np.float64)
    rms = np.sqrt(np.mean(waves ** 2, axis=1))
    clipped = np.mean(np.abs(waves) >= CLIP_LEVEL, axis=1) >= CLIPPED_SHARE
    short = np.asarray(seconds) < window_end - 1e-9
    return {"silent": rms < SILENT_RMS, "clipped": clipped, "too_short": short}
