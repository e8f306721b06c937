"""Synthetic demo corpus: layout, shapes, determinism, reuse, class differences."""

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from ser_jax.data.audio import load_clip
from ser_jax.data.corpora import EMOTIONS, scan_corpus
from ser_jax.data.synthetic import CLIP_SECONDS, write_synthetic_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("synth") / "corpus", speakers=2, clips_per_class=2
    )


def test_layout_and_shapes(corpus):
    assert "synthetic" in (corpus / "README.txt").read_text()
    scan = scan_corpus("synthetic", corpus)
    assert not scan.skipped and len(scan.clips) == 2 * 7 * 2
    assert Counter(c.emotion for c in scan.clips) == dict.fromkeys(EMOTIONS, 4)
    assert {c.speaker for c in scan.clips} == {"synthetic_01", "synthetic_02"}
    info = sf.info(corpus / "spk02" / "synthetic_spk02_surprise_001.wav")
    assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    assert info.frames == round(CLIP_SECONDS * 22050)
    wave = load_clip(scan.clips[0].path)
    assert wave.shape == (round(22050 * 2.5),) and np.abs(wave).max() > 0.05
    assert not list(corpus.parent.glob(".corpus.tmp-*"))


def test_deterministic_per_seed(tmp_path, corpus):
    again = write_synthetic_corpus(tmp_path / "again", speakers=1, clips_per_class=1)
    other = write_synthetic_corpus(tmp_path / "other", speakers=1, clips_per_class=1, seed=1)
    name = "spk01/synthetic_spk01_happy_000.wav"
    assert (again / name).read_bytes() == (corpus / name).read_bytes()
    assert (other / name).read_bytes() != (corpus / name).read_bytes()


def test_reuse_and_regenerate(tmp_path):
    out = write_synthetic_corpus(tmp_path / "c", speakers=1, clips_per_class=1, sample_rate=8000)
    clip = out / "spk01/synthetic_spk01_sad_000.wav"
    stamp = clip.stat().st_mtime_ns
    assert write_synthetic_corpus(out, speakers=1, clips_per_class=1, sample_rate=8000) == out
    assert clip.stat().st_mtime_ns == stamp  # reused, not rewritten
    clip.unlink()  # incomplete: regenerated
    write_synthetic_corpus(out, speakers=1, clips_per_class=1, sample_rate=8000)
    assert clip.is_file()
    write_synthetic_corpus(out, speakers=2, clips_per_class=1, sample_rate=8000)  # new settings
    assert len(list(out.rglob("*.wav"))) == 14
    assert sf.info(clip).samplerate == 8000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp folders left


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a synthetic corpus"):
        write_synthetic_corpus(tmp_path / "mine", speakers=1, clips_per_class=1)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_classes_differ_like_speech(corpus):
    """Angry is louder and brighter (power spectrum centroid) than sad for every speaker."""

    def stats(speaker: int, emotion: str) -> tuple[float, float]:
        wave, sr = sf.read(
            corpus / f"spk{speaker:02d}/synthetic_spk{speaker:02d}_{emotion}_000.wav"
        )
        spectrum = np.abs(np.fft.rfft(wave)) ** 2
        freqs = np.fft.rfftfreq(wave.size, 1 / sr)
        return float(np.sqrt(np.mean(wave**2))), float((spectrum * freqs).sum() / spectrum.sum())

    for speaker in (1, 2):
        (angry_rms, angry_centroid), (sad_rms, sad_centroid) = (
            stats(speaker, "angry"),
            stats(speaker, "sad"),
        )
        assert angry_rms > 2 * sad_rms
        assert angry_centroid > sad_centroid
