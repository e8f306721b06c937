"""Atomic file writes: write a temporary file beside the target, then rename it into place."""

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_bytes_atomic(path: str | Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, record: object) -> None:
    """Writes ``record`` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(record, indent=2) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yields an empty staging folder beside ``target``; on success it replaces ``target``.

    Readers see the old folder or the whole new one; on error the staging folder is removed.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(target)
    owner = f"{socket.gethostname()}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{owner}"))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(dir=target.parent,
                                            prefix=f".{target.name}.old-{owner}"))
            os.replace(target, retired / "old")
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_abandoned_staging(target: Path) -> list[Path]:
    """Removes the staging and retired folders that :func:`atomic_directory` left beside
    ``target`` in a process that was killed (named for this host and a process no longer alive).

    Folders of live processes, or of other hosts sharing the filesystem, are left alone.
    Returns the folders removed.
    """
    host = socket.gethostname()
    removed = []
    for kind in ("tmp", "old"):
        for folder in target.parent.glob(f".{glob.escape(target.name)}.{kind}-{host}-*"):
            pid = folder.name[len(f".{target.name}.{kind}-{host}-"):].split("-", 1)[0]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
