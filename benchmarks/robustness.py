"""How a bundle holds up when the recording changes: held-out speakers' clips under conditions.

``python benchmarks/robustness.py --bundle=WORKDIR/bundle [--speakers=ravdess_15,ravdess_16]
[--corpora=ravdess:PATH] [--output=FILE.json]``

Each condition is made from the clean clips (decoded whole at the bundle's sample rate) and
predicted as ``ser_jax.predict`` does (sliding windows, the file row averaging the speech
windows; ser_jax.inference.windows):

- ``clean``; ``gain -20 dB``; ``gain +10 dB`` (clipped to [-1, 1]);
- ``telephone``: down to 8 kHz, 300-3400 Hz band-pass (FFT mask), back up;
- ``white`` / ``babble`` noise at 20 and 10 dB SNR against the clip's speech power (the power
  over its energy-trimmed part); babble is the sum of 4 clips of speakers outside the scored set,
  each trimmed and scaled to unit power;
- ``leading silence 1 s`` (digital zeros before the clip);
- ``cut to 1.5 s``: the 1.5 s from the clip's first speech sample;
- ``two clips``: the clip followed by a clip of the same speaker with another emotion.

Scores: balanced accuracy of the file rows (a file with no speech window counts as wrong) and
its drop against clean; window accuracy, the fraction of speech windows whose label is that of
the clip under most of the window (for ``two clips`` the only score: does the output follow the
change?). Defaults come from the bundle's config: its corpora and its test speakers.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ser_jax.data import audio, corpora  # noqa: E402
from ser_jax.data.placement import speech_bounds  # noqa: E402
from ser_jax.inference import bundle, windows  # noqa: E402

TELEPHONE_RATE = 8000
BABBLE_TALKERS = 4


def speech_power(wave: np.ndarray) -> float:
    """Mean square over the energy-trimmed part (the whole clip when it is silent)."""
    bounds = speech_bounds(wave) or (0, len(wave))
    part = wave[bounds[0]:bounds[1]]
    return float(np.mean(part.astype(np.float64) ** 2)) or 1e-12


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave plus noise scaled to snr_db below the wave's speech power."""
    noise = noise[:len(wave)].astype(np.float64)
    scale = np.sqrt(speech_power(wave) / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    return (wave + scale * noise).astype(np.float32)


def telephone(wave: np.ndarray, rate: int) -> np.ndarray:
    """Down to 8 kHz, 300-3400 Hz band-pass, back to rate (same length)."""
    low = soxr.resample(wave, rate, TELEPHONE_RATE, quality="HQ")
    spectrum = np.fft.rfft(low)
    freqs = np.fft.rfftfreq(len(low), 1 / TELEPHONE_RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    band = np.fft.irfft(spectrum, len(low)).astype(np.float32)
    return audio.fit(soxr.resample(band, TELEPHONE_RATE, rate, quality="HQ"), len(wave))


def babble(others: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """The sum of BABBLE_TALKERS trimmed, unit-power clips drawn from others, each tiled."""
    out = np.zeros(length)
    for index in rng.choice(len(others), BABBLE_TALKERS, replace=len(others) < BABBLE_TALKERS):
        wave = others[index]
        start, end = speech_bounds(wave) or (0, len(wave))
        part = wave[start:end] / np.sqrt(np.mean(wave[start:end].astype(np.float64) ** 2))
        shift = rng.integers(len(part))
        out += np.resize(np.roll(part, shift), length)
    return out


def conditions(rate: int, others: list[np.ndarray], rng: np.random.Generator
               ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Condition name -> function of a clean clip."""
    def cut(wave: np.ndarray) -> np.ndarray:
        start = (speech_bounds(wave) or (0, 0))[0]
        return wave[start:start + round(1.5 * rate)]

    made = {
        "clean": lambda w: w,
        "gain -20 dB": lambda w: (w * 10 ** (-20 / 20)).astype(np.float32),
        "gain +10 dB": lambda w: np.clip(w * 10 ** (10 / 20), -1, 1).astype(np.float32),
        "telephone (8 kHz, 300-3400 Hz)": lambda w: telephone(w, rate),
    }
    for snr in (20, 10):
        made[f"white noise {snr} dB SNR"] = (
            lambda w, snr=snr: add_noise(w, rng.standard_normal(len(w)), snr))
        made[f"babble {snr} dB SNR"] = (
            lambda w, snr=snr: add_noise(w, babble(others, len(w), rng), snr))
    made["leading silence 1 s"] = lambda w: np.concatenate([np.zeros(rate, np.float32), w])
    made["cut to 1.5 s"] = cut
    return made


def balanced_accuracy(truth: list[int], predicted: list[int]) -> float:
    """Mean recall over the classes present in truth."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return float(np.mean([np.mean(predicted[truth == c] == c) for c in np.unique(truth)]))


def window_labels(result: windows.FilePrediction, bounds: list[tuple[float, float, int]]
                  ) -> tuple[int, int]:
    """(speech windows whose label is that of the clip under most of them, speech windows)."""
    hits = total = 0
    for window in result.windows:
        if not window.speech:
            continue
        overlap = [min(window.end, end) - max(window.start, start) for start, end, _ in bounds]
        total += 1
        hits += window.emotion == bounds[int(np.argmax(overlap))][2]
    return hits, total


def score(model: bundle.Bundle, waves: list[np.ndarray], labels: list[str],
          segments: list[list[tuple[float, float, str]]], hop: float | None) -> dict:
    """Balanced accuracy and window accuracy of the predictions for waves."""
    results = windows.predict_waveforms(model, waves, hop)
    index = {name: i for i, name in enumerate(model.labels)}
    predicted = [index.get(r.file_row["emotion"], -1) for r in results]
    truth = [index[label] for label in labels]
    hits = total = 0
    for result, bounds in zip(results, segments, strict=True):
        h, t = window_labels(result, bounds)
        hits, total = hits + h, total + t
    return {"files": len(waves),
            "balanced_accuracy": balanced_accuracy(truth, predicted),
            "accuracy": float(np.mean(np.asarray(predicted) == truth)),
            "no_speech_files": sum(not r.file_row["speech"] for r in results),
            "window_accuracy": hits / total if total else None, "speech_windows": total}


def run(bundle_dir: str, speakers: list[str] | None = None, corpora_spec: str | None = None,
        hop: float | None = None, seed: int = 0) -> dict:
    """Scores the bundle under every condition; returns {"conditions": {name: scores}, ...}."""
    model = bundle.load(bundle_dir)
    data = model.config.data
    spec = corpora_spec or data.corpora
    if not spec:
        raise SystemExit("no corpus: pass --corpora=NAME:PATH (the bundle's config names none)")
    speakers = speakers or [s for s in data.split.test_speakers.split(",") if s]
    if not speakers:
        raise SystemExit("no held-out speakers: pass --speakers=ID,ID (the bundle's config "
                         "names no data.split.test_speakers)")
    scan = corpora.scan_corpora(spec, keep_boredom=data.keep_boredom)
    held = [c for c in scan.clips if c.speaker in speakers and c.emotion in model.labels]
    if not held:
        raise SystemExit(f"no clips of speakers {speakers} in {spec}")
    rng = np.random.default_rng(seed)
    rate = data.sample_rate
    outside = [c for c in scan.clips if c.speaker not in speakers]
    others = [audio.load_recording(c.path, rate)
              for c in rng.choice(outside, min(40, len(outside)), replace=False)]
    clean = [audio.load_recording(c.path, rate) for c in held]
    labels = [c.emotion for c in held]
    report = {}
    for name, make in conditions(rate, others, rng).items():
        started = time.perf_counter()
        waves = [make(w) for w in clean]
        segments = [[(0.0, len(w) / rate, label)] for w, label in zip(waves, labels, strict=True)]
        report[name] = score(model, waves, labels, segments, hop)
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
    pairs, segments, firsts = [], [], []
    for i, clip in enumerate(held):
        mates = [j for j, other in enumerate(held)
                 if other.speaker == clip.speaker and other.emotion != clip.emotion]
        j = int(rng.choice(mates)) if mates else None
        if j is None:
            continue
        split = len(clean[i]) / rate
        pairs.append(np.concatenate([clean[i], clean[j]]))
        segments.append([(0.0, split, labels[i]), (split, split + len(clean[j]) / rate,
                                                    labels[j])])
        firsts.append(labels[i])
    if pairs:
        two = score(model, pairs, firsts, segments, hop)
        report["two clips (window follows the change)"] = {
            "files": two["files"], "window_accuracy": two["window_accuracy"],
            "speech_windows": two["speech_windows"]}
    clean_ba = report["clean"]["balanced_accuracy"]
    for scores in report.values():
        if scores.get("balanced_accuracy") is not None:
            scores["drop"] = clean_ba - scores["balanced_accuracy"]
    return {"bundle": str(bundle_dir), "speakers": speakers, "clips": len(held),
            "placement": data.get("placement", "offset"),
            "hop": windows.default_hop(model) if hop is None else hop, "seed": seed,
            "commit": _commit(), "cpu": _cpu(), "conditions": report}


def markdown(report: dict) -> str:
    """The report as a markdown table."""
    lines = ["| condition | balanced accuracy | drop vs clean | accuracy | window accuracy |",
             "|---|---:|---:|---:|---:|"]
    for name, s in report["conditions"].items():
        cells = [f"{s[k]:.3f}" if s.get(k) is not None else "" for k in
                 ("balanced_accuracy", "drop", "accuracy", "window_accuracy")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--speakers", default="", help="held-out speaker ids, comma-separated")
    parser.add_argument("--corpora", default="", help="NAME:PATH pairs (default: the bundle's)")
    parser.add_argument("--hop", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run(args.bundle, [s for s in args.speakers.split(",") if s] or None,
                 args.corpora or None, args.hop, args.seed)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"{report['clips']} clips of {', '.join(report['speakers'])}; placement "
          f"{report['placement']}; hop {report['hop']} s; commit {report['commit']}")
    print(markdown(report))


if __name__ == "__main__":
    main()
