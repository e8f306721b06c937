"""Audio quality gates (silent, clipped, short clips) and the class-balance checks."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_jax.data.audio import AudioError, Quality, load_clip, load_clips, rms_dbfs
from ser_jax.data.corpora import EMOTIONS, Clip
from ser_jax.data.errors import DatasetError
from ser_jax.features.pipeline import check_class_balance

SR = 22050
WINDOW = {"sample_rate": SR, "offset": 0.6, "duration": 2.5}


def write(path: Path, wave: np.ndarray) -> str:
    sf.write(path, wave.astype(np.float32), SR, subtype="PCM_16")
    return str(path)


def speech(seconds: float, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    noise = np.random.default_rng(seed).normal(scale=0.02, size=t.size)
    return amp * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + noise


def test_rms_dbfs():
    assert rms_dbfs(np.zeros(100)) == float("-inf")
    assert rms_dbfs(np.ones(100)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(100, 0.1)) == pytest.approx(-20.0)


def test_gates_reject_silence_flag_clipping_and_short_clips(tmp_path):
    paths = [write(tmp_path / "ok.wav", speech(4)),
             write(tmp_path / "silent.wav", np.zeros(4 * SR)),
             write(tmp_path / "hiss.wav", speech(4, amp=0.0) * 0.01),  # about -74 dBFS
             write(tmp_path / "clipped.wav", np.clip(speech(4) * 20, -1, 1)),
             write(tmp_path / "short.wav", speech(2))]
    flagged: list[tuple[str, str]] = []
    waves, ok, rejects = load_clips(paths, quality=Quality(), flagged=flagged, **WINDOW)
    assert ok == [0, 3, 4] and waves.shape == (3, round(2.5 * SR))
    assert [(Path(p).name, r.split(":")[0]) for p, r in rejects] == [
        ("silent.wav", "silent"), ("hiss.wav", "silent")]
    assert "RMS -inf dBFS is below data.quality.min_rms_dbfs=-70" in rejects[0][1]
    assert [(Path(p).name, r.split(":")[0]) for p, r in flagged] == [
        ("clipped.wav", "clipped"), ("short.wav", "short")]
    assert flagged[1][1].endswith("zero-padded")

    strict = Quality(clipping="reject", short="reject", min_rms_dbfs=-80)
    _, ok, rejects = load_clips(paths, quality=strict, **WINDOW)
    assert ok == [0, 2]
    assert sorted(r.split(":")[0] for _, r in rejects) == ["clipped", "short", "silent"]
    # Without gates (the library default) every readable clip loads.
    assert load_clips(paths, **WINDOW)[1] == [0, 1, 2, 3, 4]


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(AudioError, match="is a directory, not an audio file"):
        load_clip(tmp_path, **WINDOW)


def test_quality_from_config_fills_missing_values():
    assert Quality.from_config(None) == Quality()
    assert Quality.from_config({"clipping": "reject"}) == Quality(clipping="reject")


def clips(counts: dict[str, int]) -> list[Clip]:
    return [Clip(path=f"{label}_{k}.wav", corpus="synthetic", speaker=f"s{k % 3}",
                 emotion=label) for label, count in counts.items() for k in range(count)]


def test_class_balance_warns_about_rare_and_missing_classes():
    counts = {label: 12 for label in EMOTIONS[:5]} | {EMOTIONS[5]: 2}
    items = clips(counts)
    splits = {"train": list(range(len(items))), "val": [], "test": []}
    warnings = check_class_balance(items, splits, EMOTIONS, 0.25)
    assert warnings == [f"class {EMOTIONS[6]} has no clips in the corpus",
                        f"class {EMOTIONS[5]} has 2 clips, under 25% of the largest class (12)"]


def test_a_split_without_a_class_the_others_have_is_an_error():
    items = clips({label: 4 for label in EMOTIONS})
    val = [i for i, c in enumerate(items) if c.emotion != "sad" and c.path.endswith("_0.wav")]
    splits = {"train": [i for i in range(len(items)) if i not in val], "val": val, "test": []}
    with pytest.raises(DatasetError,
                       match="the val split has no clips of sad, which the other splits have"):
        check_class_balance(items, splits, EMOTIONS, 0.25)
