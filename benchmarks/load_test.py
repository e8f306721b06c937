"""Load test of the HTTP service on loopback: requests/s and latency percentiles.

Starts two servers on free 127.0.0.1 ports from one bundle, one micro-batching and one serving a
request per model call (--nobatching), waits until both are ready, then runs rounds interleaved
(batching on, off, on, off, ...) at each concurrency with an httpx async client, each bounded in
requests and seconds. Prints a Markdown table.

    python benchmarks/load_test.py --bundle=WORKDIR/bundle --audio=clip.wav \
        [--concurrency=1,8,32] [--requests=200] [--seconds=20] [--rounds=2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: str, port: int, batching: bool,
                 extra: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "ser_jax.serve", f"--bundle={bundle}", f"--port={port}",
               "--batching" if batching else "--nobatching", *(extra or [])]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server on {port} not ready after {timeout} s")


async def run_round(port: int, audio: bytes, concurrency: int, requests: int,
                    seconds: float) -> dict:
    """``concurrency`` clients sending one request after another until ``requests`` are sent
    or ``seconds`` have passed; returns throughput and latency percentiles."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sent = 0
    url = f"http://127.0.0.1:{port}/v1/predict"
    headers = {"content-type": "audio/wav"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() - start < seconds:
                sent += 1
                t = time.perf_counter()
                response = await client.post(url, content=audio, headers=headers)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99]) if latencies else [np.nan] * 3
    return {"ok": len(latencies), "errors": errors, "seconds": elapsed,
            "rps": len(latencies) / elapsed, "p50": ms[0], "p95": ms[1], "p99": ms[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--audio", required=True, help="one audio file sent by every request")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=200, help="per round, at most")
    parser.add_argument("--seconds", type=float, default=20, help="per round, at most")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    args = parser.parse_args()
    audio = Path(args.audio).read_bytes()
    ports = {True: free_port(), False: free_port()}
    servers = {mode: start_server(args.bundle, port, mode) for mode, port in ports.items()}
    try:
        for mode, port in ports.items():
            wait_ready(port, servers[mode])
        results: dict[tuple[int, bool], list[dict]] = {}
        for concurrency in map(int, args.concurrency.split(",")):
            for mode in [True, False] * args.rounds:
                asyncio.run(run_round(ports[mode], audio, concurrency, 8, 10))  # warm connections
                r = asyncio.run(run_round(ports[mode], audio, concurrency, args.requests,
                                          args.seconds))
                results.setdefault((concurrency, mode), []).append(r)
                print(f"c={concurrency} batching={mode}: {r['rps']:.1f} req/s "
                      f"p50 {r['p50']:.0f} p95 {r['p95']:.0f} p99 {r['p99']:.0f} ms "
                      f"({r['ok']} ok, errors {r['errors']})", file=sys.stderr)
        print("Medians over the rounds (p99: the worst round).\n")
        print("| concurrency | micro-batching | requests/s | p50 ms | p95 ms | p99 ms | "
              "requests | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for (concurrency, mode), rounds in results.items():
            print(f"| {concurrency} | {'on' if mode else 'off'} | "
                  f"{statistics.median(r['rps'] for r in rounds):.1f} | "
                  f"{statistics.median(r['p50'] for r in rounds):.0f} | "
                  f"{statistics.median(r['p95'] for r in rounds):.0f} | "
                  f"{max(r['p99'] for r in rounds):.0f} | {sum(r['ok'] for r in rounds)} | "
                  f"{sum(sum(r['errors'].values()) for r in rounds)} |")
        for concurrency in sorted({c for c, _ in results}):
            ratios = [a["rps"] / b["rps"] for a, b in zip(results[(concurrency, True)],
                                                          results[(concurrency, False)],
                                                          strict=True)]
            print(f"\nconcurrency {concurrency}: micro-batching / one request per call, "
                  f"requests/s per interleaved pair: {', '.join(f'{r:.2f}' for r in ratios)} "
                  f"(median {statistics.median(ratios):.2f}x)")
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
