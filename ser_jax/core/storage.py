"""Paths that may be local or ``gs://`` URIs: reading and writing bytes, JSON and parquet.

Local paths keep the write-temp-then-rename atomicity of core/files.py. On Cloud Storage a
single object upload is already atomic (readers see the old object or the whole new one) but a
rename is a copy and a delete, so nothing is renamed: JSON is uploaded in one request with a
generation precondition (``if_generation_match``: 0 = only if absent, else only if unchanged
since it was read), which turns concurrent writers into a clear error instead of a lost update.
Folders of several files are made consistent by writing a pointer object last.

Works against the real service (application default credentials) and against a local emulator
(fake-gcs-server): ``STORAGE_EMULATOR_HOST`` set means anonymous access to that endpoint.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from ser_jax.core import files

GCS_PREFIX = "gs://"


class PreconditionFailed(RuntimeError):
    """A conditional write lost a race: the object changed since it was read."""


def is_gcs(path: str | Path) -> bool:
    return str(path).startswith(GCS_PREFIX)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base / parts`` for a local path, ``base/parts`` for a gs:// URI."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = str(uri)[len(GCS_PREFIX):].partition("/")
    if not bucket or not name:
        raise ValueError(f"{uri}: expected gs://BUCKET/OBJECT")
    return bucket, name


def _client():
    from google.cloud import storage  # imported on first use: local runs never need it

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project="test", credentials=AnonymousCredentials())
    return storage.Client()


def gcsfs():
    """An fsspec filesystem for gs:// (anonymous against an emulator)."""
    import gcsfs as gcsfs_module

    token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
    return gcsfs_module.GCSFileSystem(token=token)


def exists(path: str | Path) -> bool:
    if is_gcs(path):
        bucket, name = _split(path)
        return _client().bucket(bucket).blob(name).exists()
    return Path(path).exists()


def read_bytes(path: str | Path) -> bytes:
    if is_gcs(path):
        bucket, name = _split(path)
        return _client().bucket(bucket).blob(name).download_as_bytes()
    return Path(path).read_bytes()


def generation(path: str | Path) -> int:
    """The object's generation (0 when absent): the precondition for replacing it."""
    bucket, name = _split(path)
    blob = _client().bucket(bucket).get_blob(name)
    return 0 if blob is None else int(blob.generation)


def write_bytes(path: str | Path, payload: bytes, if_generation: int | None = None) -> None:
    """Writes ``payload`` whole. On GCS with ``if_generation`` (0: only if absent) the write
    happens only if the object is still at that generation, else PreconditionFailed."""
    if not is_gcs(path):
        files.write_bytes_atomic(path, payload)
        return
    from google.api_core import exceptions

    bucket, name = _split(path)
    blob = _client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(payload, if_generation_match=if_generation)
    except exceptions.PreconditionFailed as e:
        raise PreconditionFailed(
            f"{path} changed since it was read (expected generation {if_generation}); another "
            "process wrote it: rerun, or give each process its own output path") from e


def write_json(path: str | Path, record: object, if_generation: int | None = None) -> None:
    """Writes indented JSON atomically (see write_bytes for the GCS precondition)."""
    write_bytes(path, (json.dumps(record, indent=2) + "\n").encode(), if_generation)


def read_json(path: str | Path) -> object:
    return json.loads(read_bytes(path))


def write_parquet(table_or_frame, path: str | Path) -> None:
    """Writes a pandas DataFrame (no index) or a pyarrow Table as one parquet object."""
    buffer = io.BytesIO()
    if hasattr(table_or_frame, "to_parquet"):
        table_or_frame.to_parquet(buffer, index=False)
    else:
        pq.write_table(table_or_frame, buffer)
    write_bytes(path, buffer.getvalue())


def read_parquet(path: str | Path, columns: list[str] | None = None):
    """Reads a parquet file or object as a pyarrow Table (gs:// through gcsfs)."""
    if is_gcs(path):
        return pq.read_table(str(path)[len(GCS_PREFIX):], columns=columns, filesystem=gcsfs())
    return pq.read_table(path, columns=columns)
