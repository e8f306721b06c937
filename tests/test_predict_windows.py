"""Predict on whole recordings: windows, speech marking, folders, output files, exit status,
placement, compile count, and the robustness benchmark, with one tiny bundle trained here on a
two-class corpus (angry = noise bursts at 2-4 kHz, sad = a low harmonic tone) whose clips open
with 0.2-1.2 s of silence; trained with data.placement='speech'."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_jax.core.compiles import compile_count
from ser_jax.data import audio
from ser_jax.data.placement import speech_bounds, window_start
from ser_jax.features import pipeline as prepare
from ser_jax.inference import bundle, cli, windows
from ser_jax.training import loop as train
from tests.conftest import REPO, tiny_config

SR = 22050
SPEAKERS = 4


def speech(emotion: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like bursts: band noise (angry) or a 150 Hz harmonic tone (sad)."""
    t = np.arange(round(seconds * SR)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t)
    if emotion == "angry":
        spectrum = np.fft.rfft(rng.standard_normal(len(t)))
        freqs = np.fft.rfftfreq(len(t), 1 / SR)
        spectrum[(freqs < 2000) | (freqs > 4000)] = 0
        carrier = np.fft.irfft(spectrum, len(t))
        carrier *= 0.4 / carrier.std()
    else:
        f0 = rng.uniform(145, 155)
        carrier = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5))
    return (envelope * carrier).astype(np.float32)


def clip(emotion: str, rng: np.random.Generator, lead: float | None = None) -> np.ndarray:
    lead = rng.uniform(0.2, 1.2) if lead is None else lead
    return np.concatenate([np.zeros(round(lead * SR), np.float32), speech(emotion, 2.8, rng),
                           np.zeros(round(0.3 * SR), np.float32)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle folder, corpus folder): a seed model trained on the two-class corpus."""
    root = tmp_path_factory.mktemp("two_class")
    corpus = root / "corpus"
    rng = np.random.default_rng(0)
    for s in range(1, SPEAKERS + 1):
        (corpus / f"spk{s:02d}").mkdir(parents=True)
        for emotion in ("angry", "sad"):
            for k in range(8):
                sf.write(corpus / f"spk{s:02d}" / f"synthetic_spk{s:02d}_{emotion}_{k:03d}.wav",
                         clip(emotion, rng), SR, subtype="PCM_16")
    config = tiny_config(epochs=40, batch_size=4, early_stop_patience=40)
    config.data.corpora = f"synthetic:{corpus}"
    config.data.augment.recipe = "none,noise"
    config.data.placement = "speech"
    config.data.split.val_speakers = "synthetic_03"
    config.data.split.test_speakers = "synthetic_04"
    workdir = root / "work"
    prepare.prepare_features(config, workdir / "features")
    train.train_and_evaluate(config, workdir)
    return workdir / "bundle", corpus


@pytest.fixture(scope="module")
def model(trained) -> bundle.Bundle:
    return bundle.load(trained[0])


def test_speech_placement_is_recorded_and_reused(trained, model, tmp_path):
    assert json.loads((trained[0] / "config.json").read_text())["data"]["placement"] == "speech"
    wave = clip("sad", np.random.default_rng(1), lead=1.5)
    starts = windows.window_starts(wave, model, hop=1.0)
    # The first speech sample, up to a frame early (frames are centred, as librosa's trim).
    assert -2048 <= starts[0] - round(1.5 * SR) <= 0
    model.config.data.placement = "offset"
    try:
        assert windows.window_starts(wave, model, hop=1.0)[0] == round(0.6 * SR)
    finally:
        model.config.data.placement = "speech"
    # Training took its windows the same way: load_clip starts at the speech.
    path = tmp_path / "lead.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    loaded = audio.load_clip(path, sample_rate=SR, placement="speech")
    start = window_start(wave, SR, "speech", 0.6, 2.5)
    np.testing.assert_allclose(loaded, wave[start:start + len(loaded)], atol=1e-6)
    assert np.abs(loaded[:2048]).max() > 0 and np.abs(wave[:start]).max() == 0
    assert speech_bounds(np.zeros(SR, np.float32)) is None


def test_bundle_separates_the_two_classes(trained, model):
    clips = sorted((trained[1] / "spk04").glob("*.wav"))
    results = list(windows.predict_paths(model, clips))
    assert [r.file_row["emotion"] for r in results] == [p.stem.split("_")[2] for p in clips]


def test_windows_follow_a_change_of_class(model):
    rng = np.random.default_rng(2)
    wave = np.concatenate([speech("angry", 8.0, rng), speech("sad", 8.0, rng)])
    result = windows.predict_waveform(model, wave, hop=0.5)
    labels = [(w.start, w.end, w.emotion) for w in result.windows]
    assert all(w.speech for w in result.windows) and len(labels) >= 25
    assert {e for s, end, e in labels if end <= 8.0} == {"angry"}
    assert {e for s, end, e in labels if s >= 8.0} == {"sad"}
    assert result.file_row["windows"] == len(labels)
    mean = np.mean([list(w.probabilities.values()) for w in result.windows], axis=0)
    np.testing.assert_allclose(list(result.file_row["probabilities"].values()), mean, atol=1e-5)


def test_silent_windows_are_marked_not_classified(model):
    rng = np.random.default_rng(3)
    wave = np.concatenate([speech("sad", 3.0, rng), np.zeros(7 * SR, np.float32),
                           speech("angry", 3.0, rng)])
    result = windows.predict_waveform(model, wave, hop=1.0)
    silent = [w for w in result.windows if not w.speech]
    assert silent and all(w.start >= 2.9 and w.end <= 10.1 for w in silent)
    assert all(w.emotion is None and w.probabilities is None for w in silent)
    assert result.file_row["speech_windows"] == len(result.windows) - len(silent)
    nothing = windows.predict_waveform(model, np.zeros(5 * SR, np.float32))
    assert not nothing.file_row["speech"] and nothing.file_row["emotion"] is None
    assert not any(w.speech for w in nothing.windows)


def test_a_file_shorter_than_the_window_is_one_padded_window(model):
    wave = speech("angry", 0.5, np.random.default_rng(4))
    result = windows.predict_waveform(model, wave)
    assert [(w.start, w.end, w.speech) for w in result.windows] == [(0.0, 0.5, True)]
    padded = np.zeros((1, round(2.5 * SR)), np.float32)
    padded[0, :len(wave)] = wave
    expected = windows.classify_windows(model, padded)[0]
    np.testing.assert_allclose(list(result.file_row["probabilities"].values()), expected,
                               atol=1e-5)


def test_no_recompilation_for_new_lengths(model):
    rng = np.random.default_rng(5)
    windows.predict_waveform(model, speech("sad", 3.0, rng))  # compiled (or cached) here
    before = compile_count()
    lengths = [0.3, 1.0, 2.5, 2.6, 4.2, 11.7, 31.0]
    for seconds in lengths:
        windows.predict_waveform(model, speech("angry", seconds, rng))
    windows.predict_waveforms(model, [speech("sad", s, rng) for s in lengths], hop=0.7)
    assert compile_count() == before
    jax_probe = __import__("jax").jit(lambda x: x + 1)
    jax_probe(np.zeros(3))  # the counter does count a new program
    assert compile_count() == before + 1


def test_folders_are_searched_recursively(tmp_path):
    rng = np.random.default_rng(6)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    written = [tmp_path / "x.wav", tmp_path / "a" / "y.flac", tmp_path / "a" / "b" / "z.ogg"]
    for path in written:
        sf.write(path, speech("sad", 1.0, rng), SR)
    sf.write(tmp_path / ".hidden" / "h.wav", speech("sad", 1.0, rng), SR)
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    files, missing = cli.expand_paths([tmp_path, tmp_path / "nope.wav"])
    assert sorted(files) == sorted(written)
    assert missing == [(str(tmp_path / "nope.wav"), "no such file or folder")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_predict_command_output_and_exit_status(trained, tmp_path, fmt):
    folder = tmp_path / "in" / "deeper"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    sf.write(folder / "angry.flac", np.concatenate([clip("angry", rng), clip("sad", rng)]), SR)
    sf.write(tmp_path / "in" / "sad.wav", clip("sad", rng), SR)
    (folder / "broken.wav").write_bytes(b"RIFF not really audio")
    out = tmp_path / f"rows.{fmt}"
    run = subprocess.run([sys.executable, "-m", "ser_jax.predict", f"--bundle={trained[0]}",
                          f"--output={out}", "--hop=1.0", str(tmp_path / "in")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr[-2000:]  # one failed file
    assert "1 of 3 files failed" in run.stderr
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        with out.open() as f:
            rows = list(csv.DictReader(f))
    kinds = {(Path(r["path"]).name, r["kind"]) for r in rows}
    assert {("broken.wav", "error"), ("angry.flac", "file"), ("sad.wav", "file"),
            ("angry.flac", "window")} <= kinds
    files = {Path(r["path"]).name: r for r in rows if r["kind"] == "file"}
    assert files["sad.wav"]["emotion"] == "sad"
    long_windows = [r for r in rows if r["kind"] == "window" and r["path"].endswith("flac")]
    assert {r["emotion"] for r in long_windows if r["emotion"]} == {"angry", "sad"}
    if fmt == "csv":
        assert float(files["sad.wav"]["sad"]) > 0.5  # a column per class
    assert cli.exit_code(300) == 125


def test_robustness_benchmark_on_the_tiny_bundle(trained):
    spec = importlib.util.spec_from_file_location("robustness",
                                                  REPO / "benchmarks" / "robustness.py")
    robustness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robustness)
    report = robustness.run(str(trained[0]))  # corpus and test speakers from the bundle
    conditions = report["conditions"]
    assert report["speakers"] == ["synthetic_04"] and report["clips"] == 16
    assert len(conditions) == 11
    assert conditions["clean"]["balanced_accuracy"] == 1.0
    for scores in conditions.values():
        if "drop" in scores:
            assert scores["drop"] == pytest.approx(1.0 - scores["balanced_accuracy"])
    assert conditions["two clips (window follows the change)"]["window_accuracy"] > 0.7
    assert "| gain -20 dB |" in robustness.markdown(report)
