"""End to end on RAVDESS: the default ser-jax pipeline (features + training) vs the seed's way.

    .venv/bin/python benchmarks/bench_pipeline.py [--corpus ../shared/data/ravdess] [--epochs 10]
        [--actors 01,02,03] [--clips-per-actor N] [--skip-seed | --skip-serjax] [--workdir DIR]
        [--keep] [--json-out FILE]

Two subprocesses, one after the other, never concurrently:

1. ser-jax: ``python -m ser_jax.main --config=configs/default.py --stage=all`` on the corpus,
   with ``train.epochs=E`` and early stopping off (patience far above E), so that it trains
   exactly E epochs. Everything else is the default config (speaker-independent split,
   4-row training recipe, batch 64, reduce-on-plateau, a checkpoint per epoch, bundle and
   evaluation report). Parts come from its own files: the features stage's
   ``manifest.json`` timings (decode, extract, total), ``metrics.jsonl`` (seconds per epoch),
   and the modification times of ``features/manifest.json`` and ``train_result.json``: the
   train stage runs from the one to the other, "evaluate" from the latter to the process's
   exit (evaluate stage, report files, interpreter shutdown).
2. the seed's way (this file with ``--worker seed``): the very clips of ser-jax's split (the
   ``path`` and ``augmentation`` columns of its train/val/test parquet files, so the same rows
   go to the same split), decoded with ``ser_jax.audio.load_clips`` (the same decoder, window
   and resampler; ``--seed-decoder librosa`` uses ``librosa.load`` clip by clip instead), the
   seed's 270 librosa features one clip at a time with the seed's recipe for training clips
   (none, noise, pitch +3 semitones, pitch + noise: ``bench_features.librosa_recipe``) and
   un-augmented rows for val/test (``bench_features.librosa_features``), standardisation with
   numpy (train mean/std), then the seed model in Keras 3 on TensorFlow
   (``peers/keras_seed.seed_model``) compiled as the seed did (Adam 1e-3, categorical
   cross-entropy, accuracy; Keras' default jit_compile) and one ``model.fit`` of E epochs at
   batch 64 with shuffle and the val split as validation_data, then accuracy on the test split.
   librosa runs with numpy's default BLAS threads, as the seed did.

Nothing is warmed up on either side: JAX/XLA compilation, numba's kernel loading and Keras'
XLA compilation all count, as in a real run. ser-jax's persistent XLA compilation cache is
switched off by default (``--xla-cache off``), so that a run does not depend on what earlier
runs on the machine left in it; ``--xla-cache default`` keeps configs/default.py's cache.

Known differences, by design of each side: ser-jax drops each epoch's last partial batch,
Keras trains it; ser-jax reduces the learning rate on plateau and reports the best epoch's
weights (by val loss), the seed's way trains at a fixed 1e-3 and evaluates the last epoch.

``--actors 01,02`` restricts the corpus (for smoke runs) through a temp folder with one real
folder per actor holding symlinks to its files (Python 3.11's ``Path.rglob``, which
``ser_jax.corpora`` uses, does not descend into symlinked folders). With fewer than 3 actors
the default speaker split cannot give train, val and test a speaker each, so the run adds
``data.split.mode=file`` unless ``--set`` names a split setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "ravdess"
SPLITS = ("train", "val", "test")
BATCH_SIZE = 64  # configs/default.py train.batch_size; checked against the run's config.json
LEARNING_RATE = 1e-3


# --- the parent: runs both sides and reports ---------------------------------------------------

def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def child_env() -> dict[str, str]:
    """The inherited environment (thread settings untouched) with the repo importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def run_child(cmd: list[str], log: Path, timeout: float) -> dict:
    """Runs cmd alone (stdout + stderr to log); wall and CPU seconds (children's user + sys)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, start_epoch, start = os.getloadavg(), time.time(), time.perf_counter()
    with log.open("w") as out:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=out,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout} s"
    wall, end_epoch = time.perf_counter() - start, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    result = {"returncode": rc, "wall_s": wall, "cpu_s": cpu, "start_time": start_epoch,
              "end_time": end_epoch, "load_before": list(load_before),
              "load_after": list(os.getloadavg()), "log": str(log)}
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        print(f"FAILED ({rc}): {' '.join(cmd)}\n  " + "\n  ".join(tail), file=sys.stderr)
    return result


def make_subset(corpus: Path, actors: list[str], per_actor: int | None, root: Path) -> Path:
    """A folder of real Actor_XX folders holding symlinks to the chosen actors' clips."""
    import random

    for actor in actors:
        source = corpus / f"Actor_{actor}"
        files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else []
        if not files:
            raise SystemExit(f"no clips in {source}")
        if per_actor:
            files = sorted(random.Random(int(actor)).sample(files, min(per_actor, len(files))))
        target = root / source.name
        target.mkdir(parents=True)
        for f in files:
            (target / f.name).symlink_to(f.resolve())
    return root


def serjax_side(args: argparse.Namespace, corpus: Path, run_dir: Path) -> dict:
    overrides = {"data.corpora": f"ravdess:{corpus}", "train.epochs": str(args.epochs),
                 "train.early_stop_patience": str(1_000_000)}
    if args.xla_cache == "off":
        overrides["compilation_cache_dir"] = ""
    if args.actors and len(args.actors) < 3 and not any(s.startswith("data.split.")
                                                         for s in args.set):
        overrides["data.split.mode"] = "file"
        print(f"note: {len(args.actors)} actor(s) cannot fill a speaker-independent "
              "train/val/test split; using data.split.mode=file", flush=True)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key] = value
    cmd = [sys.executable, "-m", "ser_jax.main", "--config=configs/default.py",
           f"--workdir={run_dir}", "--stage=all",
           *(f"--config.{key}={value}" for key, value in overrides.items())]
    print("ser-jax: " + " ".join(cmd[1:]), flush=True)
    run = run_child(cmd, run_dir.parent / "serjax.log", args.timeout)
    run["command"] = cmd
    if run["returncode"] != 0:
        return run
    manifest_path = run_dir / "features" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    timings = manifest["timings"]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if line.strip()]
    features_end = manifest_path.stat().st_mtime
    train_end = (run_dir / "train_result.json").stat().st_mtime
    evaluation = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    run.update(
        parts={
            "startup_s": features_end - timings["total_s"] - run["start_time"],
            "decode_s": timings["load_audio_s"],
            "features_s": timings["extract_s"],
            "features_stage_s": timings["total_s"],
            "epochs_s": sum(e["seconds"] for e in epochs),
            "train_stage_s": train_end - features_end,
            "evaluate_s": run["end_time"] - train_end,
            "total_s": run["wall_s"],
            "cpu_s": run["cpu_s"],
        },
        feature_timings=timings,
        epoch_seconds=[round(e["seconds"], 3) for e in epochs],
        epochs_run=len(epochs),
        rows=manifest["counts"]["rows"],
        test_split=evaluation["split"],
        test_accuracy=evaluation["accuracy"],
        last_epoch=epochs[-1] if epochs else None,
    )
    return run


def seed_side(args: argparse.Namespace, run_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "seed",
           "--workdir", str(run_dir), "--epochs", str(args.epochs),
           "--seed-decoder", args.seed_decoder]
    print("seed way: " + " ".join(cmd[1:]), flush=True)
    log = run_dir.parent / "seed.log"
    run = run_child(cmd, log, args.timeout)
    run["command"] = cmd
    if run["returncode"] != 0:
        return run
    records = [json.loads(line) for line in log.read_text().splitlines()
               if line.startswith('{"worker"')]
    if not records:
        run["returncode"] = "no result line"
        return run
    record = records[-1]
    parts = record.pop("parts")
    parts["startup_s"] = record.pop("imports_done_time") - run["start_time"]
    parts["total_s"], parts["cpu_s"] = run["wall_s"], run["cpu_s"]
    run.update(parts=parts, **record)
    return run


ROWS = (  # (key, label)
    ("startup_s", "start-up and imports"),
    ("decode_s", "decode audio"),
    ("features_s", "features (augment + extract)"),
    ("features_stage_s", "features stage (decode, extract, scale, write)"),
    ("epochs_s", "training epochs (sum)"),
    ("train_stage_s", "train stage (ser-jax: + checkpoints, bundle)"),
    ("evaluate_s", "evaluate test split (ser-jax: + report, exit)"),
    ("total_s", "**whole process, wall**"),
    ("cpu_s", "whole process, CPU s (all threads)"),
)


def markdown(report: dict) -> str:
    serjax = (report.get("serjax") or {}).get("parts", {})
    seed = (report.get("seed") or {}).get("parts", {})

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:,.1f}"

    lines = ["| part | ser-jax s | seed-way s | seed / ser-jax |", "|---|---:|---:|---:|"]
    for key, label in ROWS:
        a, b = serjax.get(key), seed.get(key)
        ratio = f"{b / a:.2f}x" if a and b else ""
        lines.append(f"| {label} | {cell(a)} | {cell(b)} | {ratio} |")
    info = report["machine"]
    lines += ["", f"seed / ser-jax > 1: ser-jax is faster. {report['epochs']} epochs at batch "
              f"{report['batch_size']} on both sides; seed-way decoding: {report['seed_decoder']}"
              f"; ser-jax XLA compilation cache: {report['xla_cache']}.",
              f"Machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['platform']}, "
              f"Python {info['python']}."]
    for name, side in (("ser-jax", report.get("serjax")), ("seed way", report.get("seed"))):
        if not side:
            continue
        if side["returncode"] != 0:
            lines.append(f"{name}: FAILED ({side['returncode']}); log {side['log']}")
            continue
        before, after = side["load_before"], side["load_after"]
        accuracy = side.get("test_accuracy")
        lines.append(
            f"{name}: test accuracy {accuracy:.3f} ({side.get('test_split', 'test')} split), "
            f"{side.get('epochs_run')} epochs, rows {side.get('rows')}; load average "
            f"(1/5/15 min) {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f} before, "
            f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="RAVDESS folder")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for both sides")
    parser.add_argument("--actors", type=lambda s: [a.strip().zfill(2) for a in s.split(",")
                                                    if a.strip()],
                        help="comma list of actors (01,02,...) to restrict the corpus to")
    parser.add_argument("--clips-per-actor", type=int,
                        help="with --actors: this many clips per actor (seeded choice)")
    parser.add_argument("--skip-seed", action="store_true", help="run only ser-jax")
    parser.add_argument("--skip-serjax", action="store_true",
                        help="run only the seed's way on --workdir's earlier ser-jax run")
    parser.add_argument("--seed-decoder", choices=("serjax", "librosa"), default="serjax",
                        help="seed side decoding: ser_jax.audio.load_clips or librosa.load")
    parser.add_argument("--xla-cache", choices=("off", "default"), default="off",
                        help="ser-jax's persistent XLA compilation cache: off (cold compile) "
                             "or as configs/default.py sets it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra ser-jax config override (--config.KEY=VALUE); repeatable")
    parser.add_argument("--workdir", type=Path,
                        help="folder for both runs (default: a temp folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per side")
    parser.add_argument("--json-out", type=Path, help="write the report as JSON here")
    parser.add_argument("--worker", choices=("seed",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return seed_worker(args)
    if args.skip_seed and args.skip_serjax:
        raise SystemExit("--skip-seed and --skip-serjax leave nothing to run")
    if args.skip_serjax and not (args.workdir and (args.workdir / "serjax" / "features").is_dir()):
        raise SystemExit("--skip-serjax needs --workdir holding an earlier run's serjax/features")

    base = args.workdir.absolute() if args.workdir else Path(tempfile.mkdtemp(
        prefix="bench_pipeline_"))
    base.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus.absolute()
    if args.actors:
        subset = base / "corpus"
        shutil.rmtree(subset, ignore_errors=True)
        corpus = make_subset(corpus, args.actors, args.clips_per_actor, subset)
    run_dir = base / "serjax"
    report: dict = {"machine": machine_info(), "epochs": args.epochs, "batch_size": BATCH_SIZE,
                    "corpus": str(args.corpus.absolute()), "actors": args.actors,
                    "clips_per_actor": args.clips_per_actor, "seed_decoder": args.seed_decoder,
                    "xla_cache": args.xla_cache, "workdir": str(base)}
    print(f"workdir {base}; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        if not args.skip_serjax:
            if run_dir.exists():
                shutil.rmtree(run_dir)  # never resume: a full run every time
            report["serjax"] = serjax_side(args, corpus, run_dir)
        if not args.skip_seed and (args.skip_serjax or report["serjax"]["returncode"] == 0):
            report["seed"] = seed_side(args, run_dir)
        print(markdown(report), flush=True)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if not (args.workdir or args.keep):
            shutil.rmtree(base, ignore_errors=True)
    failed = [s for s in ("serjax", "seed") if s in report and report[s]["returncode"] != 0]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


# --- the seed's way, in its own process --------------------------------------------------------

def seed_worker(args: argparse.Namespace) -> None:
    """Decode, librosa features, numpy standardisation, Keras fit and test accuracy; prints one
    JSON line starting with {"worker"."""
    parts: dict[str, float] = {}
    tick = time.perf_counter()
    import numpy as np
    import pandas as pd

    from benchmarks.bench_features import RECIPE, librosa_features, librosa_recipe
    from benchmarks.peers.keras_seed import keras, seed_model
    from ser_jax.data import audio
    imports_done = time.time()
    parts["imports_s"] = time.perf_counter() - tick

    run_dir = args.workdir
    config = json.loads((run_dir / "config.json").read_text())
    data = config["data"]
    labels = json.loads((run_dir / "features" / "labels.json").read_text())["labels"]
    recipe = [k.strip() for k in data["augment"]["recipe"].split(",") if k.strip()]
    if not set(recipe) <= set(RECIPE) or config["train"]["batch_size"] != BATCH_SIZE:
        raise SystemExit(f"the seed's way only knows recipe {RECIPE} at batch {BATCH_SIZE}")
    splits = {name: pd.read_parquet(run_dir / "features" / f"{name}.parquet",
                                    columns=["path", "augmentation", "label"])
              for name in SPLITS}
    paths = sorted({p for frame in splits.values() for p in frame["path"]})
    sr, offset, duration = data["sample_rate"], data["offset"], data["duration"]

    tick = time.perf_counter()
    if args.seed_decoder == "serjax":
        waves, loaded, rejects = audio.load_clips(paths, sample_rate=sr, offset=offset,
                                                  duration=duration)
        if rejects:
            raise SystemExit(f"could not decode: {rejects}")
    else:
        import librosa

        length = round(sr * duration)
        waves = np.zeros((len(paths), length), np.float32)
        for i, path in enumerate(paths):
            y, _ = librosa.load(path, sr=sr, offset=offset, duration=duration)
            waves[i, : min(length, y.size)] = y[:length]
    parts["decode_s"] = time.perf_counter() - tick
    index = {p: i for i, p in enumerate(paths)}

    tick = time.perf_counter()
    rng = np.random.default_rng(0)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, frame in splits.items():
        clips = list(dict.fromkeys(frame["path"]))  # each clip once, in parquet order
        position = {p: i for i, p in enumerate(clips)}
        if name == "train":  # (clips, 4, 270), one clip at a time, the seed's recipe
            table = librosa_recipe(waves[[index[p] for p in clips]], sr, rng)
            x = table[[position[p] for p in frame["path"]],
                      [RECIPE.index(a) for a in frame["augmentation"]]]
        else:
            table = np.stack([librosa_features(waves[index[p]], sr) for p in clips])
            x = table[[position[p] for p in frame["path"]]]
        y = np.array([labels.index(label) for label in frame["label"]], np.int32)
        rows[name] = (x.astype(np.float32), y)
    parts["features_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    dropped = {}
    for name, (x, y) in rows.items():
        finite = np.isfinite(x).all(axis=1)
        dropped[name] = int((~finite).sum())
        rows[name] = (x[finite], y[finite])
    x_train = rows["train"][0]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    scaled = {name: (((x - mean) / std).astype(np.float32)[..., None],
                     keras.utils.to_categorical(y, len(labels)), y)
              for name, (x, y) in rows.items()}
    parts["standardise_s"] = time.perf_counter() - tick
    parts["features_stage_s"] = parts["decode_s"] + parts["features_s"] + parts["standardise_s"]

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.logs, self._start = [], {}, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)
            self.logs = dict(logs or {})

    tick = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = seed_model()
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    x, one_hot, _ = scaled["train"]
    validation = scaled["val"][:2] if len(scaled["val"][2]) else None
    model.fit(x, one_hot, batch_size=BATCH_SIZE, epochs=args.epochs, shuffle=True,
              validation_data=validation, verbose=0, callbacks=[timer])
    parts["train_stage_s"] = time.perf_counter() - tick
    parts["epochs_s"] = sum(timer.seconds)

    tick = time.perf_counter()
    test = "test" if len(scaled["test"][2]) else "val"  # as ser_jax.evaluate falls back
    x_test, _, y_test = scaled[test]
    predicted = model.predict(x_test, batch_size=512, verbose=0).argmax(-1)
    accuracy = float(np.mean(predicted == y_test))
    parts["evaluate_s"] = time.perf_counter() - tick

    import librosa
    import tensorflow as tf

    print(json.dumps({
        "worker": "seed", "parts": parts, "imports_done_time": imports_done,
        "epoch_seconds": [round(s, 3) for s in timer.seconds], "epochs_run": len(timer.seconds),
        "rows": {name: len(v[2]) for name, v in scaled.items()}, "dropped_nonfinite": dropped,
        "clips_decoded": len(paths), "test_split": test, "test_accuracy": accuracy,
        "last_epoch": {k: float(v) for k, v in timer.logs.items()},
        "versions": {"numpy": np.__version__, "librosa": librosa.__version__,
                     "tensorflow": tf.__version__, "keras": keras.__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
