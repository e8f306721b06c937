"""The HTTP service, started for real as a subprocess on 127.0.0.1 (a free port), with a tiny
bundle trained once for the module; real audio (RAVDESS when present, else synthesized)."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ser_jax.data import synthetic
from ser_jax.inference import bundle
from ser_jax.training import loop as train
from tests.conftest import RAVDESS, REPO, tiny_config, write_feature_dir

MAX_UPLOAD = 2_000_000
MAX_SECONDS = 30.0
MAX_PENDING = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audio_files(tmp: Path) -> list[Path]:
    """Eight real clips: RAVDESS where present, else the synthetic corpus."""
    for root in (RAVDESS, REPO.parents[1] / "shared" / "data" / "ravdess"):
        files = sorted(root.glob("Actor_0[12]/*.wav"))[::6][:8]
        if len(files) == 8:
            return files
    corpus = synthetic.write_synthetic_corpus(tmp / "corpus", speakers=2, clips_per_class=1)
    return sorted(corpus.glob("spk*/*.wav"))[:8]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, bundle dir, audio files, the server process) for a server on a free port."""
    tmp = tmp_path_factory.mktemp("serving")
    features = write_feature_dir(tmp / "work" / "features", {"train": 112, "val": 35})
    config = tiny_config(epochs=2)
    config.compilation_cache_dir = ""
    train.train_and_evaluate(config, tmp / "work")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ser_jax.serve", f"--bundle={tmp / 'work' / 'bundle'}",
         f"--port={port}", "--buckets=1,8", f"--max_upload_bytes={MAX_UPLOAD}",
         f"--max_seconds={MAX_SECONDS}", f"--max_pending={MAX_PENDING}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "server did not answer /healthz in 120 s"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url, tmp / "work" / "bundle", _audio_files(tmp), process, features
    process.terminate()
    process.wait(30)


def _wait_ready(url: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/readyz", timeout=5)
        if response.status_code == 200:
            return response.json()
        time.sleep(0.5)
    raise AssertionError("not ready after 300 s")


def _wav_bytes(samples: np.ndarray, rate: int = 22050) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_ready_only_after_warm_up(served):
    url, *_ = served
    # /healthz answers as soon as the bundle is loaded; compiling takes seconds after that.
    early = httpx.get(f"{url}/readyz")
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert httpx.post(f"{url}/v1/predict", content=b"RIFF").status_code == 503
    ready = _wait_ready(url)
    assert ready["buckets"] == [1, 8] and ready["compiles"] == ready["compiles_after_warm_up"]


def _without_path(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "path"}


def _assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Equal rows; class probabilities within 1e-5."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if k != "probabilities"} == {
            k: v for k, v in b.items() if k != "probabilities"}
        if b["probabilities"] is None:
            assert a["probabilities"] is None
        else:
            assert list(a["probabilities"]) == list(b["probabilities"])
            np.testing.assert_allclose(list(a["probabilities"].values()),
                                       list(b["probabilities"].values()), atol=1e-5)


def test_answers_equal_predict_rows(served, tmp_path):
    """The server answers a file with the rows the predict command writes for it (same windows,
    placement, hop and silence rule): clips, and a long file whose end is silent."""
    url, bundle_dir, files, *_ = served
    rng = np.random.default_rng(1)
    long_file = tmp_path / "long.wav"
    sf.write(long_file, np.concatenate([0.3 * rng.standard_normal(22050 * 6),
                                        np.zeros(22050 * 4)]).astype(np.float32), 22050,
             subtype="PCM_16")
    paths = [*files[:3], long_file]
    out = tmp_path / "rows.jsonl"
    run = subprocess.run([sys.executable, "-m", "ser_jax.predict", f"--bundle={bundle_dir}",
                          f"--output={out}", *map(str, paths)], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    _wait_ready(url)
    for path in paths:
        want = [_without_path(r) for r in rows if r["path"] == str(path)]
        assert want[-1]["kind"] == "file" and len(want) == want[-1]["windows"] + 1
        multipart = httpx.post(f"{url}/v1/predict", files={"file": (path.name, path.read_bytes(),
                                                                   "audio/wav")})
        raw = httpx.post(f"{url}/v1/predict", content=path.read_bytes(),
                         headers={"content-type": "audio/wav"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            got = response.json()
            _assert_same_rows([*got.pop("window_rows"), got], want)


def test_long_file_gets_window_rows(served):
    url, *_ = served
    _wait_ready(url)
    rng = np.random.default_rng(0)
    samples = np.concatenate([0.3 * rng.standard_normal(22050 * 6), np.zeros(22050 * 4)])
    response = httpx.post(f"{url}/v1/predict", content=_wav_bytes(samples.astype(np.float32)))
    body = response.json()
    assert response.status_code == 200, body
    # 10 s: 2.5 s windows from 0.6 s every 1.25 s, the last one ending with the file; the
    # windows after the noise hold no frame within 50 dB of the loudest: no speech
    windows = body["window_rows"]
    assert [w["start"] for w in windows] == [0.6, 1.85, 3.1, 4.35, 5.6, 6.85, 7.5]
    assert [w["end"] for w in windows] == [3.1, 4.35, 5.6, 6.85, 8.1, 9.35, 10.0]
    assert [w["speech"] for w in windows] == [True] * 5 + [False] * 2
    assert [w["probabilities"] is None for w in windows] == [False] * 5 + [True] * 2
    assert (body["kind"], body["windows"], body["speech_windows"]) == ("file", 7, 5)
    mean = np.mean([list(w["probabilities"].values()) for w in windows[:5]], axis=0)
    np.testing.assert_allclose(list(body["probabilities"].values()), mean, atol=1e-5)
    silent = httpx.post(f"{url}/v1/predict", content=_wav_bytes(np.zeros(22050 * 5, np.float32)))
    body = silent.json()
    assert silent.status_code == 200, body
    assert (body["speech"], body["emotion"], body["probabilities"]) == (False, None, None)
    assert body["window_rows"] and not any(w["speech"] for w in body["window_rows"])


@pytest.mark.parametrize("name,content,content_type,status,message", [
    ("empty", b"", "audio/wav", 422, "empty upload"),
    ("text", b"hello, this is not audio\n", "text/plain", 415, "unsupported content type"),
    ("text as octet-stream", b"hello, this is not audio\n", "application/octet-stream", 415,
     "not a recognized audio file"),
    ("zip", None, "application/zip", 415, "unsupported content type"),
    ("zip as audio", None, "audio/wav", 415, "not a recognized audio file"),
    ("truncated", None, "audio/wav", 422, "cannot decode"),
    ("huge", b"RIFF" + bytes(MAX_UPLOAD), "audio/wav", 413, "the limit is 2000000 bytes"),
    ("too long", None, "audio/wav", 413, "the limit is 30 s"),
])
def test_bad_uploads(served, name, content, content_type, status, message):
    url, _, files, *_ = served
    _wait_ready(url)
    if name.startswith("zip"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("clip.wav", files[0].read_bytes())
        content = buffer.getvalue()
    elif name == "truncated":
        content = files[0].read_bytes()[:30]
    elif name == "too long":
        content = _wav_bytes(np.zeros(int(22050 * (MAX_SECONDS + 1)), np.float32))
    for response in (
            httpx.post(f"{url}/v1/predict", content=content,
                       headers={"content-type": content_type}),
            httpx.post(f"{url}/v1/predict", files={"file": ("upload", content, content_type)})):
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["error"]
    assert httpx.get(f"{url}/healthz").status_code == 200  # the worker survived


def test_too_many_channels(served):
    """Channels and rate are bounded before decoding (a well-compressed upload stays small)."""
    url, *_ = served
    _wait_ready(url)
    response = httpx.post(f"{url}/v1/predict",
                          content=_wav_bytes(np.zeros((22050, 9), np.float32)))
    assert response.status_code == 422 and "9 channels" in response.json()["error"]


def test_no_path_is_read(served):
    """A path sent as the body is not audio: nothing on the server is opened."""
    url, *_ = served
    _wait_ready(url)
    for body in (b"/etc/passwd", str(REPO / "README.md").encode()):
        response = httpx.post(f"{url}/v1/predict", content=body,
                              headers={"content-type": "application/octet-stream"})
        assert response.status_code == 415
    form = httpx.post(f"{url}/v1/predict", data={"path": "/etc/passwd"})  # url-encoded form
    assert form.status_code == 415
    multipart = httpx.post(f"{url}/v1/predict", data={"file": "/etc/passwd"},
                           files={"other": ("x.txt", b"x", "text/plain")})
    assert multipart.status_code == 422 and "'file' part" in multipart.json()["error"]


def test_model_info(served):
    url, bundle_dir, *_ , features = served
    info = httpx.get(f"{url}/v1/model").json()
    assert info["labels"] == bundle.load(bundle_dir).labels
    assert info["config"]["model"]["filters"] == 8
    result = json.loads((bundle_dir.parent / "train_result.json").read_text())
    assert info["training_metrics"] == result
    assert len(info["code_version"]["git_commit"] or "x" * 40) == 40


async def _post_all(url: str, payloads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/predict", content=p,
                                                  headers={"content-type": "audio/wav"})
                                      for p in payloads))


def test_concurrent_answers_equal_sequential_ones(served):
    url, _, files, *_ = served
    _wait_ready(url)
    payloads = [f.read_bytes() for f in files[:MAX_PENDING]]
    one_by_one = [httpx.post(f"{url}/v1/predict", content=p).json() for p in payloads]
    calls_before = httpx.get(f"{url}/readyz").json()["model_calls"]
    together = asyncio.run(_post_all(url, payloads))
    assert all(r.status_code == 200 for r in together)
    for got, want in zip(together, one_by_one, strict=True):
        assert got.json()["emotion"] == want["emotion"]
        np.testing.assert_allclose(list(got.json()["probabilities"].values()),
                                   list(want["probabilities"].values()), atol=1e-5)
    # gathered: fewer model calls than requests
    assert httpx.get(f"{url}/readyz").json()["model_calls"] - calls_before < len(payloads)


def test_full_queue_answers_503(served):
    url, _, files, *_ = served
    _wait_ready(url)
    long_clip = _wav_bytes(np.tile(sf.read(files[0], dtype="float32")[0], 6)[: 22050 * 20])
    responses = asyncio.run(_post_all(url, [long_clip] * (4 * MAX_PENDING)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "server busy" in busy.json()["error"]
    assert httpx.get(f"{url}/readyz").json()["pending"] == 0


def test_openapi_conformance(served):
    """schemathesis: generated requests for every operation of /openapi.json (a bounded number
    each) never get a 5xx, and every response matches the declared status codes and schemas."""
    url, *_ = served
    _wait_ready(url)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/healthz", "/readyz", "/v1/model", "/v1/predict"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # Random bytes fit the binary body's schema yet are no audio: a 415/422 answer is
            # the right one, so schemathesis' "schema-valid data is accepted" check is off.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


def test_nothing_compiled_while_serving(served):
    """Runs last: every request above was served by the programs compiled at warm-up."""
    url, *_ = served
    ready = _wait_ready(url)
    assert ready["model_calls"] > 0
    assert ready["compiles"] == ready["compiles_after_warm_up"], ready

