"""How many programs a many-file predict run compiles, and how fast it goes.

``python benchmarks/predict_compiles.py --bundle=WORKDIR/bundle --corpus=PATH [--files=1000]``
writes FILES recordings of random lengths (0.3-30 s, uniform; made by concatenating random clips
of the corpus folder and cutting) into a temporary folder, predicts them all as
``ser_jax.predict`` does (ser_jax.inference.windows.predict_paths) and prints the number of
programs JAX lowered in the whole process (each one a compile or a persistent-cache load),
before and during the run, with files and windows per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ser_jax.core.compiles import compile_count  # noqa: E402
from ser_jax.data import audio  # noqa: E402
from ser_jax.inference import bundle, cli, windows  # noqa: E402


def write_recordings(folder: Path, sources: list[Path], count: int, rate: int,
                     rng: np.random.Generator) -> list[float]:
    """Writes count WAVs of random lengths from the sources; returns their lengths (s)."""
    pool = [audio.load_recording(p, rate) for p in rng.choice(sources, 24, replace=False)]
    lengths = rng.uniform(0.3, 30.0, count)
    for i, seconds in enumerate(lengths):
        n = round(seconds * rate)
        parts, total = [], 0
        while total < n:
            parts.append(pool[rng.integers(len(pool))])
            total += len(parts[-1])
        sf.write(folder / f"rec_{i:04d}.wav", np.concatenate(parts)[:n], rate, subtype="PCM_16")
    return lengths.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--corpus", required=True, help="a folder of audio clips")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = bundle.load(args.bundle)
    rate = model.config.data.sample_rate
    sources, _ = cli.expand_paths([args.corpus])
    with tempfile.TemporaryDirectory() as tmp:
        lengths = write_recordings(Path(tmp), sources, args.files, rate,
                                   np.random.default_rng(args.seed))
        files, _ = cli.expand_paths([tmp])
        before = compile_count()
        started = time.perf_counter()
        count = 0
        for result in windows.predict_paths(model, files):
            count += len(result.windows)
        seconds = time.perf_counter() - started
    print(json.dumps({"files": len(files), "distinct_lengths": len(set(lengths)),
                      "seconds_of_audio": round(sum(lengths)), "windows": count,
                      "compiles_before_run": before,
                      "compiles_during_run": compile_count() - before,
                      "wall_seconds": round(seconds, 1),
                      "files_per_second": round(len(files) / seconds, 1),
                      "windows_per_second": round(count / seconds, 1)}))


if __name__ == "__main__":
    main()
