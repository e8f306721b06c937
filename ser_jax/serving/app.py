"""The FastAPI app: POST /v1/predict, GET /healthz, /readyz, /v1/model.

The bundle loads once when the app starts; a background thread compiles every batch shape and
/readyz answers 200 only after that. Uploads are read with a byte cap, decoded in a thread pool,
and their windows go through the micro-batcher. No endpoint takes a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ser_jax.core.compiles import compile_count
from ser_jax.inference import bundle as bundle_lib
from ser_jax.serving.batcher import MicroBatcher, QueueFull
from ser_jax.serving.engine import Engine, InputError, check_media_type, decode
from ser_jax.training.reference import REFERENCE_FILE


@dataclasses.dataclass
class Settings:
    """Serving limits and batching knobs (the serve command's flags)."""

    bundle_dir: str
    max_upload_bytes: int = 20 * 1024 * 1024
    max_seconds: float = 60.0
    buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_wait_ms: float = 5.0
    max_pending: int = 64
    batching: bool = True
    decode_threads: int = 2
    retry_after_s: int = 1


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _code_version() -> dict:
    """The package version and, in a git checkout, the commit."""
    from importlib import metadata
    try:
        version = metadata.version("ser-jax")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": version, "git_commit": commit}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_info(bundle_dir: Path, model: bundle_lib.Bundle) -> dict:
    """Labels, config, training metrics (train_result.json inside or beside the bundle), the
    data fingerprint (the bundle's monitor reference, else the features manifest beside it)."""
    result = _read_json(bundle_dir / "train_result.json") or _read_json(
        bundle_dir.parent / "train_result.json")
    reference = _read_json(bundle_dir / REFERENCE_FILE) or {}
    fingerprint = reference.get("data_fingerprint") or (
        _read_json(bundle_dir.parent / "features" / "manifest.json") or {}).get("fingerprint")
    return {"labels": model.labels, "config": model.config.to_dict(),
            "training_metrics": result, "data_fingerprint": fingerprint,
            "code_version": _code_version()}


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        }},
}
_ERROR_SCHEMA = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
_PREDICT_RESPONSES = {
    413: {"description": "Upload or audio too long", **_ERROR_SCHEMA},
    415: {"description": "Not an audio type", **_ERROR_SCHEMA},
    422: {"description": "Empty or undecodable audio", **_ERROR_SCHEMA},
    503: {"description": "Queue full or not ready; retry after Retry-After s", **_ERROR_SCHEMA},
}


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, or InputError(413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InputError(413, f"upload of {int(declared)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"upload over {limit} bytes; the limit is {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """(audio bytes, declared type) from a multipart ``file`` field or the raw body."""
    content_type = request.headers.get("content-type", "")
    body = await _read_capped(request, limit)
    if not content_type.lower().startswith("multipart/form-data"):
        check_media_type(content_type)
        return body, content_type or None

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=4)
    except Exception as e:  # malformed multipart
        raise InputError(422, f"malformed multipart body: {e}") from e
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InputError(422, "multipart body without a 'file' part; send the audio as 'file'")
    check_media_type(upload.content_type)
    return await upload.read(), upload.content_type


def create_app(settings: Settings) -> FastAPI:
    """The app for one bundle; the bundle loads and compiles when the app starts."""
    state: dict = {"ready": False, "error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        bundle_dir = Path(settings.bundle_dir)
        model = bundle_lib.load(bundle_dir)
        engine = Engine(model, settings.buckets)
        batcher = MicroBatcher(engine.probabilities, engine.max_rows,
                               settings.max_wait_ms / 1000, settings.max_pending,
                               settings.batching)
        state.update(engine=engine, batcher=batcher, info=model_info(bundle_dir, model),
                     decoder=ThreadPoolExecutor(settings.decode_threads,
                                                thread_name_prefix="decode"))

        def warm_up() -> None:
            try:
                engine.warm_up()
                state["compiles_after_warm_up"] = compile_count()
                state["ready"] = True
            except Exception as e:  # reported by /readyz
                state["error"] = f"warm-up failed: {e}"

        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        batcher.start()
        yield
        await batcher.stop()
        state["decoder"].shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ser-jax", version="1", lifespan=lifespan,
                  description="Speech emotion recognition: upload audio, get the emotion.")

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is up (the model may still be compiling)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Still compiling", **_ERROR_SCHEMA}})
    async def readyz():
        """200 once every batch shape is compiled; 503 until then."""
        if not state["ready"]:
            return _error(503, state["error"] or "compiling the model's batch shapes",
                          {"Retry-After": "1"})
        batcher = state["batcher"]
        return {"status": "ready", "buckets": list(state["engine"].buckets),
                "batching": batcher.enabled, "compiles": compile_count(),
                "compiles_after_warm_up": state["compiles_after_warm_up"],
                "model_calls": batcher.calls, "rows_served": batcher.rows_served,
                "pending": batcher.pending}

    @app.get("/v1/model")
    async def model() -> dict:
        """Labels, config, training metrics, data fingerprint, code version."""
        return state["info"]

    @app.post("/v1/predict", openapi_extra=_PREDICT_BODY, responses=_PREDICT_RESPONSES)
    async def predict(request: Request):
        """The emotion and class probabilities of an uploaded audio file (multipart field
        ``file`` or the raw body), with a row per window, as the predict command gives."""
        if not state["ready"]:
            return _error(503, "the model is still compiling", {"Retry-After": "1"})
        batcher: MicroBatcher = state["batcher"]
        engine: Engine = state["engine"]
        try:
            batcher.admit()
        except QueueFull as e:
            return _error(503, f"server busy: {e}",
                          {"Retry-After": str(settings.retry_after_s)})
        try:
            data, _ = await _upload(request, settings.max_upload_bytes)
            loop = asyncio.get_running_loop()
            cut = await loop.run_in_executor(
                state["decoder"], lambda: engine.cut(
                    decode(data, engine.sample_rate, settings.max_seconds)))
            # no speech window: nothing to classify
            probabilities = await batcher.submit(cut.rows) if len(cut.rows) else cut.rows[:, :0]
            return JSONResponse(engine.answer(cut, np.asarray(probabilities)))
        except InputError as e:
            return _error(e.status, e.message)
        except ClientDisconnect:
            return _error(400, "client disconnected")
        finally:
            batcher.release()

    return app
