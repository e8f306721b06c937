"""Feature extraction throughput: the JAX extractor vs librosa on the training recipe.

Both paths take the same decoded RAVDESS waveforms (ser_jax.data.audio.load_clips; audio loading is
excluded from both timings) and produce the 4-row training recipe per clip: none, noise,
pitch +3 semitones, pitch + noise, each row reduced to the 270 features. librosa does it the
seed's way, one clip at a time (librosa.effects.pitch_shift + the five librosa.feature calls);
JAX does it the way the features stage (ser_jax.features.pipeline) does: per recipe row, in
batches (augment.augment, then extractor.extract_features). Both compute the pitch shift once
per pitched row (twice per clip), and both are warmed up first (JAX compiles every shape,
numba compiles librosa's kernels).

First a JAX-only sweep over batch sizes (on CPU, extractor.map_chunks runs anything above 8 clips
as chunks of 8), then JAX and librosa alternate every --compare-batch clips, so that both see
the same load from other processes on a shared machine. librosa runs twice: with numpy's
default BLAS threads (as the seed ran it) and with BLAS limited to one thread (threadpoolctl),
which on this 2-core machine is several times faster: its small matrix products lose more to
OpenBLAS's threads than they gain. Reported:
clips/s (wall clock), CPU ms per clip (all threads of this process), their ratios, the 1-minute
load average before and after, and how far the JAX rows are from librosa's.

    .venv/bin/python benchmarks/bench_features.py --clips 64 --batch-sizes 4,8,16,64
"""

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ser_jax.data import audio
from ser_jax.features import augment, extractor

RECIPE = ("none", "noise", "pitch", "pitch_noise")
SAMPLE_RATE = 22050
NOISE_SIGMA = 0.035
SEMITONES = 3.0
GROUPS = {"zcr": slice(0, 1), "rms": slice(1, 2), "chroma": slice(2, 14),
          "mel": slice(14, 142), "mfcc": slice(142, 270)}


def librosa_features(y: np.ndarray, sr: int) -> np.ndarray:
    """The seed's 270 features with librosa."""
    import librosa

    stft = np.abs(librosa.stft(y))
    return np.concatenate([
        np.mean(librosa.feature.zero_crossing_rate(y=y), axis=1),
        np.mean(librosa.feature.rms(y=y), axis=1),
        np.mean(librosa.feature.chroma_stft(S=stft, sr=sr), axis=1),
        np.mean(librosa.feature.melspectrogram(y=y, sr=sr), axis=1),
        np.mean(librosa.feature.mfcc(y=y, sr=sr, n_mfcc=128), axis=1),
    ])


def librosa_recipe(waves: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """(N, T) -> (N, 4, 270): the seed's recipe, clip by clip, rows in RECIPE order."""
    import librosa

    def noise(y: np.ndarray) -> np.ndarray:
        amp = NOISE_SIGMA * rng.uniform() * np.amax(np.abs(y))
        return (y + amp * rng.normal(size=y.shape)).astype(np.float32)

    def pitch(y: np.ndarray) -> np.ndarray:
        return librosa.effects.pitch_shift(y, sr=sr, n_steps=SEMITONES)

    rows = {"none": lambda y: y, "noise": noise, "pitch": pitch,
            "pitch_noise": lambda y: noise(pitch(y))}
    return np.stack([[librosa_features(rows[kind](y), sr) for kind in RECIPE] for y in waves])


def jax_recipe(waves: np.ndarray, batch: int, sr: int, key: jax.Array) -> np.ndarray:
    """(N, T) -> (N, 4, 270) as the features stage does it: per recipe row, in padded batches."""
    n = len(waves)
    padded = np.zeros((-(-n // batch) * batch, waves.shape[1]), np.float32)
    padded[:n] = waves
    rows = []
    for r, kind in enumerate(RECIPE):
        for b in range(0, len(padded), batch):
            x = augment.augment(jnp.asarray(padded[b : b + batch]), kind,
                                jax.random.fold_in(key, r * 100_000 + b), sample_rate=sr,
                                noise_sigma=NOISE_SIGMA, pitch_semitones=SEMITONES)
            rows.append(extractor.extract_features(x, sr))
    out = np.asarray(jnp.concatenate(rows)).reshape(len(RECIPE), -1, len(extractor.FEATURE_NAMES))
    return out[:, :n].transpose(1, 0, 2)


def timed(fn, *args) -> tuple[float, float, np.ndarray]:
    """(wall seconds, CPU seconds of this process over all threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def load_waves(data: Path, count: int) -> np.ndarray:
    paths = sorted(data.rglob("*.flac")) + sorted(data.rglob("*.wav"))
    if not paths:
        raise SystemExit(f"no audio under {data}")
    chosen = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))[:count]]
    waves, _, rejects = audio.load_clips(chosen, sample_rate=SAMPLE_RATE, offset=0.6,
                                         duration=2.5)
    if rejects:
        raise SystemExit(f"could not load: {rejects}")
    return waves


def group_error(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Per feature group: max over clips of max|ours - ref| / max|ref| within the group."""
    return {
        name: float((np.abs(ours[:, sl] - reference[:, sl]).max(axis=1)
                     / np.maximum(np.abs(reference[:, sl]).max(axis=1), 1e-30)).max())
        for name, sl in GROUPS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
    parser.add_argument("--data", type=Path, default=default_data, help="RAVDESS folder")
    parser.add_argument("--clips", type=int, default=64, help="clips for both paths")
    parser.add_argument("--batch-sizes", default="4,8,16,64", help="JAX batch sizes to sweep")
    parser.add_argument("--compare-batch", type=int, default=8,
                        help="JAX batch size, and clips per turn, when alternating with librosa")
    parser.add_argument("--skip-librosa", action="store_true", help="only the JAX sweep")
    args = parser.parse_args()

    waves = load_waves(args.data, args.clips)
    n = len(waves)
    key = jax.random.key(0)
    print(f"{n} RAVDESS clips of {waves.shape[1]} samples; recipe {', '.join(RECIPE)}; "
          f"JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
          f"audio loading excluded; load average {os.getloadavg()[0]:.2f}")

    for batch in (int(b) for b in args.batch_sizes.split(",")):
        jax_recipe(waves[:batch], batch, SAMPLE_RATE, key)  # compile every shape once
        wall, cpu, _ = timed(jax_recipe, waves, batch, SAMPLE_RATE, key)
        print(f"JAX batch {batch:4d}: {n / wall:7.1f} clips/s  CPU {1e3 * cpu / n:6.1f} ms/clip")
    if args.skip_librosa:
        return

    batch = args.compare_batch
    jax_recipe(waves[:batch], batch, SAMPLE_RATE, key)
    rng = np.random.default_rng(0)
    librosa_recipe(waves[:1], SAMPLE_RATE, rng)  # numba compiles (or loads) its kernels

    def librosa_one_blas_thread(group: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits  # installed with librosa (scikit-learn)

        with threadpool_limits(limits=1, user_api="blas"):
            return librosa_recipe(group, SAMPLE_RATE, rng)

    totals = {"jax": np.zeros(2), "librosa": np.zeros(2), "librosa, 1 BLAS thread": np.zeros(2)}
    ours, reference = [], []
    for start in range(0, n, batch):
        group = waves[start : start + batch]
        wall, cpu, rows = timed(jax_recipe, group, batch, SAMPLE_RATE, key)
        totals["jax"] += (wall, cpu)
        ours.append(rows)
        wall, cpu, rows = timed(librosa_recipe, group, SAMPLE_RATE, rng)
        totals["librosa"] += (wall, cpu)
        reference.append(rows)
        wall, cpu, _ = timed(librosa_one_blas_thread, group)
        totals["librosa, 1 BLAS thread"] += (wall, cpu)
    print(f"Alternating every {batch} clips (JAX batch {batch}):")
    jax_wall, jax_cpu = totals["jax"]
    for name, (wall, cpu) in totals.items():
        ratio = "" if name == "jax" else (
            f"   JAX is {wall / jax_wall:4.1f}x faster, {cpu / jax_cpu:4.1f}x less CPU")
        print(f"  {name:23s} {n / wall:6.1f} clips/s  CPU {1e3 * cpu / n:6.1f} ms/clip{ratio}")
    print(f"  load average {os.getloadavg()[0]:.2f}")
    ours, reference = np.concatenate(ours), np.concatenate(reference)
    for r, kind in enumerate(RECIPE):
        if kind in ("none", "pitch"):  # the noisy rows draw different noise
            errors = group_error(ours[:, r], reference[:, r])
            print(f"  {kind:6s} rows, max |JAX - librosa| / group max: "
                  + ", ".join(f"{g} {e:.1e}" for g, e in errors.items()))


if __name__ == "__main__":
    main()
