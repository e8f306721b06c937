"""Publishing: a versioned ``models/<run>/`` folder, then the ``models/current`` pointer, last.

``models/<run>/`` holds ``bundle/``, ``config.json``, ``metrics.json`` (the evaluation report)
and ``metadata.json`` (run, metrics, test speakers, data fingerprint, code version), written
last inside the folder: a folder without it is unfinished. ``models/current`` is a small JSON
file naming the run; readers follow it and so never see a half-published model.

Local roots: the version folder is staged beside its final name and renamed into place, the
pointer written to a temporary file and renamed. ``gs://`` roots (fsspec/gcsfs): the version
folder's object names are written once per run, and the pointer is one object, replaced whole.
Publishing a run that is already complete and current does nothing.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import fsspec

METADATA = "metadata.json"
POINTER = "current"


def _fs(root: str) -> fsspec.AbstractFileSystem:
    fs, _ = fsspec.core.url_to_fs(root)
    return fs


def is_local(root: str) -> bool:
    return "://" not in root


def _join(*parts: str) -> str:
    return posixpath.join(*(p.rstrip("/") for p in parts[:-1]), parts[-1])


def read_json(url: str) -> dict | None:
    """The JSON object at ``url`` (a path or gs:// URL), or None when it does not exist."""
    fs = _fs(url)
    if not fs.exists(url):
        return None
    return json.loads(fs.cat_file(url))


def scored_speakers(run_workdir: str) -> list[str]:
    """The speakers of the rows the evaluate stage scored (evaluation/predictions.csv)."""
    url = _join(run_workdir, "evaluation", "predictions.csv")
    fs = _fs(url)
    if not fs.exists(url):
        raise FileNotFoundError(f"{url} is missing: run the evaluate stage first")
    rows = csv.DictReader(io.StringIO(fs.cat_file(url).decode()))
    return sorted({row["speaker"] for row in rows})


def current(root: str) -> dict | None:
    """The published model's metadata (models/current -> models/<run>/metadata.json), or None."""
    pointer = read_json(_join(root, "models", POINTER))
    if pointer is None:
        return None
    return read_json(_join(root, "models", pointer["run"], METADATA))


def publish(root: str, run: str, run_workdir: str, code_version: str,
            decision: dict | None = None) -> dict:
    """Copies the run's bundle, config and metrics into ``models/<run>/``, writes its metadata,
    then points ``models/current`` at it. Returns the metadata; idempotent per run."""
    models = _join(root, "models")
    target = _join(models, run)
    metadata = read_json(_join(target, METADATA))
    if metadata is None:
        metadata = _build_metadata(run, run_workdir, code_version, decision)
        sources = _sources(run_workdir)
        if is_local(root):
            _publish_folder_local(Path(target), sources, metadata)
        else:
            _publish_folder_remote(target, sources, metadata)
    pointer = read_json(_join(models, POINTER))
    if pointer is None or pointer.get("run") != run:
        _write_pointer(root, {"run": run, "path": target,
                              "published": _now()})
    return metadata


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _build_metadata(run: str, run_workdir: str, code_version: str,
                    decision: dict | None) -> dict:
    metrics = read_json(_join(run_workdir, "evaluation", "metrics.json"))
    if metrics is None:
        raise FileNotFoundError(f"{run_workdir}/evaluation/metrics.json is missing: run the "
                                "evaluate stage first")
    manifest = read_json(_join(run_workdir, "features", "manifest.json"))
    if manifest is None or "fingerprint" not in manifest:
        raise FileNotFoundError(f"{run_workdir}/features/manifest.json (with a fingerprint) is "
                                "missing: run the features stage first")
    summary = {k: metrics[k] for k in ("split", "rows", "accuracy", "balanced_accuracy",
                                        "macro_f1") if k in metrics}
    return {"run": run, "source": run_workdir, "metrics": summary,
            "test_speakers": scored_speakers(run_workdir),
            "data_fingerprint": manifest["fingerprint"], "code_version": code_version,
            "gate": decision, "published": _now()}


def _sources(run_workdir: str) -> list[tuple[str, str]]:
    """(source URL, path inside the version folder) for every file to publish."""
    fs = _fs(run_workdir)
    bundle = _join(run_workdir, "bundle")
    if not fs.isdir(bundle):
        raise FileNotFoundError(f"{bundle} is missing: run the train stage first")
    pairs = []
    for path in sorted(fs.find(bundle)):
        relative = posixpath.relpath(path, fs._strip_protocol(bundle))
        pairs.append((fs.unstrip_protocol(path) if not is_local(run_workdir) else path,
                      f"bundle/{relative}"))
    pairs.append((_join(run_workdir, "config.json"), "config.json"))
    pairs.append((_join(run_workdir, "evaluation", "metrics.json"), "metrics.json"))
    return pairs


def _copy(source: str, destination: str) -> None:
    with fsspec.open(source, "rb") as src, fsspec.open(destination, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _publish_folder_local(target: Path, sources: list[tuple[str, str]], metadata: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    try:
        for source, relative in sources:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            _copy(source, str(staging / relative))
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        staging.chmod(0o755)
        if target.exists():  # an unfinished folder (no metadata) from an interrupted publish
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish_folder_remote(target: str, sources: list[tuple[str, str]], metadata: dict) -> None:
    for source, relative in sources:
        _copy(source, _join(target, relative))
    _fs(target).pipe_file(_join(target, METADATA), (json.dumps(metadata, indent=2) + "\n").encode())


def _write_pointer(root: str, pointer: dict) -> None:
    payload = (json.dumps(pointer, indent=2) + "\n").encode()
    url = _join(root, "models", POINTER)
    if not is_local(root):
        _fs(url).pipe_file(url, payload)  # one object, replaced whole
        return
    path = Path(url)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{POINTER}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
