"""Many trials at once: K trials vmapped into one compiled program vs the same K one after another.

    .venv/bin/python benchmarks/bench_trials.py --trials 4 --rows 1024 --batch-size 64 --epochs 2

Both modes train the seed model on the same seeded random rows as benchmarks/bench_train.py
(N x 270 float32, 7 classes, resident on the device) with the same K trials, which differ in seed,
learning rate and dropout rate: (a) ``vmap``, all trials together through a ``Trainer`` built
with ``runs=K`` (as ``training.trials.train_trials`` drives it); (b) ``sequential``, each trial
alone through the plain ``Trainer`` (as ``train_and_evaluate`` drives it). Each trial trains
one warm-up epoch, then --epochs timed epochs; an epoch is timed from its shuffle to
``jax.block_until_ready`` on the new state and totals. ``samples_per_second`` counts
trial-samples: K x rows per epoch, over the timed epochs' wall seconds. ``first_epoch_s`` is the
first warm-up epoch (compilation included); ``compile_s`` the mode's XLA compile seconds (from
jax.monitoring); ``timed_epoch_compiles`` must be 0; ``end_to_end_s`` is the whole mode, init
and warm-ups included. On CPU, ``--loop scan`` compiles once per mode (``step`` several times).

Prints one JSON line per mode as it ends (and rewrites --json-out then, so a killed run keeps
what finished), a summary line, then a Markdown table. The two modes compute the same trials, so
their last-epoch losses should agree closely (``max_loss_diff``).
"""

import argparse
import dataclasses
import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # configs/ and benchmarks/ are not installed packages
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.peers import common  # noqa: E402
from configs import default  # noqa: E402
from ser_jax.training import trainer as trainer_lib  # noqa: E402
from ser_jax.training import trials  # noqa: E402

LEARNING_RATES = (1e-3, 3e-4, 3e-3, 1e-4)
DROPOUTS = (0.2, 0.3, 0.1, 0.0)


def make_trials(count: int) -> list[trials.Trial]:
    """``count`` trials: seeds 0.., learning rates cycling, dropout changing every 4 trials."""
    return [trials.Trial(seed=i, learning_rate=LEARNING_RATES[i % len(LEARNING_RATES)],
                         dropout=DROPOUTS[(i // len(LEARNING_RATES)) % len(DROPOUTS)])
            for i in range(count)]


class CompileCounter:
    """XLA backend compilations (count, seconds) reported through jax.monitoring.

    ``available`` is False where this JAX lacks the listener API; counts then stay 0.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0
        try:
            jax.monitoring.register_event_duration_secs_listener(self._listen)
            self.available = True
        except AttributeError:
            self.available = False

    def _listen(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.count += 1
            self.seconds += duration

    def snapshot(self) -> tuple[int, float]:
        return self.count, self.seconds


COMPILES = CompileCounter()


class EpochTimer:
    """Wall seconds and compilations of each epoch, timed to jax.block_until_ready."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.compiles: list[int] = []
        self.compile_s: list[float] = []

    def time(self, fn, *args):
        count, secs = COMPILES.snapshot()
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.seconds.append(time.perf_counter() - start)
        self.compiles.append(COMPILES.count - count)
        self.compile_s.append(COMPILES.seconds - secs)
        return out


def last_loss(totals) -> float:
    loss_sum, _, count = np.asarray(jax.device_get(totals), np.float64)
    return float(loss_sum / count)


def run_vmap(config, ts: list[trials.Trial], x: np.ndarray, y: np.ndarray, epochs: int) -> dict:
    """All trials as one vmapped program, as train_trials runs them; epoch 0 is the warm-up."""
    start, compiles = time.perf_counter(), COMPILES.snapshot()
    trainer = trainer_lib.get_trainer(config, num_classes=common.NUM_CLASSES,
                                      input_shape=(common.INPUT_LENGTH,), runs=len(ts))
    data = trainer_lib.DeviceData(trainer.put(x), trainer.put(y), [], trainer.put(y[:0]))
    seeds = [t.seed for t in ts]
    seed_keys = trainer.seed_keys(seeds)
    states = trainer.init_state(seeds, [t.learning_rate for t in ts], [t.dropout for t in ts])

    def epoch_fn(states, epoch: int):
        return trainer.train_steps(states, data, seed_keys, epoch)

    timer = EpochTimer()
    for epoch in range(epochs + 1):
        states, totals = timer.time(epoch_fn, states, epoch)
    losses = [last_loss(t) for t in np.asarray(jax.device_get(totals))]
    return _result(timer, [0], start, compiles, losses)


def run_sequential(config, ts: list[trials.Trial], x: np.ndarray, y: np.ndarray,
                   epochs: int) -> dict:
    """Each trial alone with the plain Trainer, as train_and_evaluate runs it; every trial's
    epoch 0 is a warm-up (the first one compiles)."""
    start, compiles = time.perf_counter(), COMPILES.snapshot()
    trainer = trainer_lib.get_trainer(config, num_classes=common.NUM_CLASSES,
                                      input_shape=(common.INPUT_LENGTH,))
    data = trainer_lib.DeviceData(trainer.put(x), trainer.put(y), [], trainer.put(y[:0]))
    timer, warmups, losses = EpochTimer(), [], []
    for t in ts:
        state = trainer.init_state(t.seed, t.learning_rate, t.dropout)
        seed_key = trainer.seed_keys(t.seed)
        warmups.append(len(timer.seconds))
        for epoch in range(epochs + 1):
            state, totals = timer.time(trainer.train_steps, state, data, seed_key, epoch)
        losses.append(last_loss(totals))
    return _result(timer, warmups, start, compiles, losses)


def _result(timer: EpochTimer, warmups: list[int], start: float, compiles: tuple[int, float],
            losses: list[float]) -> dict:
    """The mode's timings; ``warmups`` are the untimed epochs' indices in ``timer``."""
    timed = [i for i in range(len(timer.seconds)) if i not in warmups]
    return {"first_epoch_s": timer.seconds[0],
            "epoch_s": [timer.seconds[i] for i in timed],
            "end_to_end_s": time.perf_counter() - start,
            "compiles": COMPILES.count - compiles[0],
            "compile_s": COMPILES.seconds - compiles[1],
            "first_epoch_compile_s": timer.compile_s[0],
            "timed_epoch_compiles": sum(timer.compiles[i] for i in timed),
            "last_epoch_loss": losses}


def peak_memory_mb() -> float | None:
    """The device's peak bytes in use so far (GPU/TPU; None where JAX does not report it)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory statistics)
        return None
    peak = stats.get("peak_bytes_in_use")
    return round(peak / 2**20, 1) if peak else None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def table(records: list[dict]) -> str:
    seq = next((r["samples_per_second"] for r in records if r["mode"] == "sequential"), None)
    out = ["| mode (loop) | trials | batch | steps/epoch | trial-samples/s | vs sequential | "
           "first epoch s | compile s | timed epochs s | timed-epoch compiles | end-to-end s | "
           "peak device MB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        rate = r["samples_per_second"] or 0.0
        ratio = f"{rate / seq:.2f}x" if seq else ""
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        out.append(f"| {r['mode']} ({r['loop']}) | {r['trials']} | {r['batch_size']} | "
                   f"{r['steps_per_epoch']} | {rate:,.0f} | {ratio} | "
                   f"{r['first_epoch_s']:.2f} | {compile_s} | {sum(r['epoch_s']):.3f} | "
                   f"{'' if r['timed_epoch_compiles'] is None else r['timed_epoch_compiles']} | "
                   f"{r['end_to_end_s']:.1f} | {r['peak_device_mb'] or ''} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8, help="K trials")
    p.add_argument("--rows", type=int, default=4096, help="training rows (N), cut to whole batches")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loop", choices=("auto", "step", "scan"),
                   help="train.loop (default: the config's, 'auto': scan on GPU/TPU, step on CPU)")
    p.add_argument("--steps-per-call", type=int, help="train.steps_per_call (loop=step)")
    p.add_argument("--modes", default="vmap,sequential", help="comma-separated, run in order")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in ("vmap", "sequential")]:
        p.error(f"unknown modes {bad}; valid: vmap, sequential")

    config = default.get_config()
    config.train.batch_size = args.batch_size
    config.train.learning_rate = common.LEARNING_RATE  # the plateau floor's reference only
    if args.loop is not None:
        config.train.loop = args.loop
    if args.steps_per_call is not None:
        config.train.steps_per_call = args.steps_per_call
    x, y, _, _ = common.make_data("throughput", args.rows, args.batch_size, args.seed)
    trainer = trainer_lib.get_trainer(config, num_classes=common.NUM_CLASSES,
                                input_shape=(common.INPUT_LENGTH,))
    ts = make_trials(args.trials)
    device = jax.devices()[0]
    base = {"bench": "trials", "trials": len(ts), "batch_size": args.batch_size, "rows": len(y),
            "steps_per_epoch": len(y) // args.batch_size, "loop": trainer.loop,
            "steps_per_call": config.train.steps_per_call if trainer.loop == "step" else None,
            "timed_epochs": args.epochs, "device": f"{device.platform}:{device.device_kind}",
            "device_count": jax.device_count()}
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                **{n: _version(n) for n in ("jaxlib", "flax", "optax")}}
    trial_list = [dataclasses.asdict(t) for t in ts]
    print(json.dumps({**base, "mode": "setup", "trial_settings": trial_list,
                      "versions": versions}), flush=True)

    records: list[dict] = []
    summary: dict = {}

    def write_json() -> None:
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps({
                "command": " ".join([Path(sys.executable).name, *sys.argv]), **base,
                "trial_settings": trial_list, "versions": versions, "runs": records,
                "summary": summary}, indent=1))

    for mode in modes:
        print(f"[{time.strftime('%H:%M:%S')}] {mode}: {len(ts)} trials x {args.epochs + 1} "
              f"epochs of {len(y)} rows, batch {args.batch_size}, loop {trainer.loop}",
              file=sys.stderr, flush=True)
        run = run_vmap if mode == "vmap" else run_sequential
        result = run(config, ts, x, y, args.epochs)
        timed = sum(result["epoch_s"])
        counted = COMPILES.available and result["compiles"] > 0
        samples = len(ts) * len(y) * args.epochs
        record = {**base, "mode": mode,
                  "samples_per_second": round(samples / timed, 1) if timed else None,
                  "first_epoch_s": round(result["first_epoch_s"], 3),
                  "epoch_s": [round(s, 4) for s in result["epoch_s"]],
                  "end_to_end_s": round(result["end_to_end_s"], 3),
                  "end_to_end_samples_per_second": round(
                      len(ts) * len(y) * (args.epochs + 1) / result["end_to_end_s"], 1),
                  # None where jax.monitoring reported no compilation at all (API changed).
                  "compiles": result["compiles"] if counted else None,
                  "compile_s": round(result["compile_s"], 3) if counted else None,
                  "first_epoch_compile_s": round(result["first_epoch_compile_s"], 3)
                  if counted else None,
                  # Must be 0: a compilation inside the timed epochs would make them dishonest.
                  "timed_epoch_compiles": result["timed_epoch_compiles"] if counted else None,
                  "last_epoch_loss": [round(v, 5) for v in result["last_epoch_loss"]],
                  "peak_device_mb": peak_memory_mb()}
        records.append(record)
        print(json.dumps(record), flush=True)
        write_json()

    by_mode = {r["mode"]: r for r in records}
    if {"vmap", "sequential"} <= by_mode.keys():
        vm, sq = by_mode["vmap"], by_mode["sequential"]
        summary = {
            "bench": "trials", "mode": "summary",
            "speedup": round(vm["samples_per_second"] / sq["samples_per_second"], 3),
            "end_to_end_speedup": round(sq["end_to_end_s"] / vm["end_to_end_s"], 3),
            "max_loss_diff": round(max(abs(a - b) for a, b in zip(
                vm["last_epoch_loss"], sq["last_epoch_loss"], strict=True)), 6)}
        print(json.dumps(summary), flush=True)
        write_json()
    print(f"\n{table(records)}")
    if summary:
        print(f"\nvmap / sequential: {summary['speedup']:.2f}x trial-samples/s in timed epochs, "
              f"{summary['end_to_end_speedup']:.2f}x end to end (compilation included); "
              f"last-epoch losses differ by at most {summary['max_loss_diff']:.2g}")


if __name__ == "__main__":
    main()
