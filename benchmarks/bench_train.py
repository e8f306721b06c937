"""Training throughput: ser-jax vs the same model and training in Keras (TensorFlow) and PyTorch.

    .venv/bin/python benchmarks/bench_train.py --batch-sizes 16,64 --epochs 3 --rows 4096

Each framework variant runs alone in its own subprocess (benchmarks/peers/*, one JSON line
each), one after another, so thread pools never overlap. Every run trains the same seeded
rows: one warm-up epoch (compilation, reported as first-epoch time), then --epochs timed epochs.
Then one accuracy sanity check per framework on learnable Gaussian clusters. Prints each run's
JSON line as it ends, then Markdown tables: samples/s, ratio to --reference at the same batch
size, first-epoch seconds and the child's peak RSS.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERJAX, KERAS, TORCH = (f"benchmarks.peers.{m}" for m in ("serjax_seed", "keras_seed",
                                                            "torch_seed"))
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "ser-jax": (SERJAX, []),  # whatever configs/default.py says
    "ser-jax/step1": (SERJAX, ["--loop", "step", "--steps-per-call", "1"]),
    "ser-jax/step4": (SERJAX, ["--loop", "step", "--steps-per-call", "4"]),
    "ser-jax/step16": (SERJAX, ["--loop", "step", "--steps-per-call", "16"]),
    "ser-jax/scan": (SERJAX, ["--loop", "scan"]),
    "ser-jax/scan-bf16": (SERJAX, ["--loop", "scan", "--compute-dtype", "bfloat16"]),
    "keras/xla": (KERAS, []),
    "keras/graph": (KERAS, ["--no-jit"]),
    "torch/eager": (TORCH, []),
    "torch/compile": (TORCH, ["--compile"]),
}
DEFAULT_FRAMEWORKS = ("ser-jax/step1,ser-jax/step4,ser-jax/step16,ser-jax/scan,"
                      "keras/xla,keras/graph,torch/eager,torch/compile")


def run_peer(name: str, task: str, batch: int, args: argparse.Namespace) -> dict:
    """Runs one variant in a fresh interpreter; returns its JSON record (or the error)."""
    module, extra = VARIANTS[name]
    if module == TORCH:
        extra = [*extra, "--device", args.device]
    epochs = args.epochs if task == "throughput" else args.accuracy_epochs
    cmd = [sys.executable, "-m", module, "--task", task, "--batch-size", str(batch),
           "--epochs", str(epochs), "--rows", str(args.rows), "--seed", str(args.seed), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                                  text=True, timeout=args.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            failure = None if proc.returncode == 0 and lines else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            lines, failure = [], f"timed out after {args.timeout} s"
        err.seek(0)
        tail = err.read()[-1500:]
    record = json.loads(lines[-1]) if not failure else {"error": f"{failure}: {tail}"}
    record.update(name=name, wall_s=round(time.perf_counter() - start, 1),
                  load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
    return record


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx512f": " avx512f" in flags,
            "platform": platform.platform()}


def throughput_table(runs: list[dict], reference: str) -> str:
    """Markdown: one row per variant and batch size."""
    ref = {r["batch_size"]: r["samples_per_second"] for r in runs
           if r["name"] == reference and "error" not in r}
    out = [f"| framework | batch | samples/s | vs {reference} | samples/CPU-s | first epoch s | "
           "peak RSS MB | timed epochs s | load 1-min |",
           "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        if "error" in r:
            out.append(f"| {r['name']} | {r['batch']} | failed | | | | | | |")
            continue
        rate, base = r["samples_per_second"], ref.get(r["batch_size"])
        ratio = f"{rate / base:.2f}x" if base else ""
        epochs = ", ".join(f"{s:.2f}" for s in r["epoch_s"])
        out.append(f"| {r['name']} | {r['batch_size']} | {rate:,.0f} | {ratio} | "
                   f"{r.get('samples_per_cpu_second') or 0:,.0f} | {r['first_epoch_s']:.1f} | "
                   f"{r['peak_rss_mb']:,.0f} | {epochs} | "
                   f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
    return "\n".join(out)


def best_by_framework(runs: list[dict]) -> str:
    """One line per batch size: the fastest variant of each framework and ratios to ser-jax's."""
    lines = []
    for batch in sorted({r["batch"] for r in runs}):
        best: dict[str, dict] = {}
        for r in runs:
            if r["batch"] == batch and "error" not in r:
                fw = r["framework"]
                if fw not in best or r["samples_per_second"] > best[fw]["samples_per_second"]:
                    best[fw] = r
        jax_rate = best.get("ser-jax", {}).get("samples_per_second")
        parts = [f"{fw} {r['samples_per_second']:,.0f} ({r['variant']})"
                 + (f" = ser-jax/{r['samples_per_second'] / jax_rate:.2f}" if jax_rate and
                    fw != "ser-jax" else "") for fw, r in best.items()]
        lines.append(f"batch {batch}: best " + "; ".join(parts))
    return "\n".join(lines)


def accuracy_table(runs: list[dict]) -> str:
    out = ["| framework | batch | epochs | last-epoch loss | train accuracy | held-out accuracy |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "error" in r:
            out.append(f"| {r['name']} | {r['batch']} | | failed | | |")
            continue
        out.append(f"| {r['name']} | {r['batch_size']} | {r['timed_epochs'] + 1} | "
                   f"{r['last_epoch_loss']:.3f} | {r['train_accuracy']:.3f} | "
                   f"{r['test_accuracy']:.3f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=DEFAULT_FRAMEWORKS,
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    p.add_argument("--rows", type=int, default=4096, help="training rows (N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over all runs; the table keeps each run's fastest round")
    p.add_argument("--accuracy-epochs", type=int, default=4,
                   help="timed epochs of the accuracy check (plus the warm-up); 0 skips it")
    p.add_argument("--accuracy-batch-size", type=int, default=64)
    p.add_argument("--accuracy-frameworks", default="ser-jax,keras/xla,torch/eager",
                   help="variants given the accuracy check (ser-jax's loops compute the same)")
    p.add_argument("--reference", default="keras/xla", help="the ratio column's denominator")
    p.add_argument("--device", default="cpu", help="PyTorch device (JAX uses its default)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    names, checked = ([n.strip() for n in flag.split(",") if n.strip()]
                      for flag in (args.frameworks, args.accuracy_frameworks))
    if unknown := [n for n in names + checked if n not in VARIANTS]:
        p.error(f"unknown frameworks {unknown}; valid: {', '.join(VARIANTS)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def run(name: str, task: str, batch: int) -> dict:
        log(f"[{time.strftime('%H:%M:%S')}] {name} {task} batch {batch} "
            f"(load {os.getloadavg()[0]:.2f})")
        record = run_peer(name, task, batch, args)
        record["batch"] = batch
        print(json.dumps(record), flush=True)
        return record

    loads = [os.getloadavg()]
    rounds = [[run(n, "throughput", b) for b in batches for n in names]
              for _ in range(args.repeat)]
    runs = [max(cell, key=lambda r: r.get("samples_per_second") or 0) for cell in zip(*rounds,
                                                                                     strict=True)]
    checks = ([run(n, "accuracy", args.accuracy_batch_size) for n in checked]
              if args.accuracy_epochs > 0 else [])
    loads.append(os.getloadavg())

    all_loads = [r[k] for r in [*runs, *checks] for k in ("load_before", "load_after")]
    summary = (f"load average (1, 5, 15 min): {loads[0]} at start, {loads[-1]} at end; 1-min "
               f"between runs {min(all_loads):.2f} to {max(all_loads):.2f}")
    print(f"\n{machine()}\n{summary}\n\n{throughput_table(runs, args.reference)}\n\n"
          f"{best_by_framework(runs)}")
    if checks:
        print(f"\n{accuracy_table(checks)}")
    versions: dict[str, str] = {}
    for r in [*runs, *checks]:
        versions.update(r.get("versions", {}))
    print(f"\nversions: {versions}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
            "load_average": {"start": loads[0], "end": loads[-1]}, "versions": versions,
            "runs": runs, "rounds": rounds, "accuracy": checks}, indent=1))


if __name__ == "__main__":
    main()
