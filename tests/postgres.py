"""A throwaway PostgreSQL server for the tests (session scope): initdb into a temp folder, then
pg_ctl start on 127.0.0.1 with its own socket folder; stopped and removed at teardown.

Needs PostgreSQL's server binaries (Debian: apt-get install postgresql-15; found on PATH or in
/usr/lib/postgresql/*/bin). As root, the server runs as the ``postgres`` user (it refuses root).
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres`` of a fresh server."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "apt-get install postgresql-15")
    pytest.importorskip("psycopg2", reason="psycopg2 is in the tuning extra: pip install "
                                           "'ser-jax[tuning]'")
    # Not under pytest's tmp folder: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="ser-jax-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    made = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
                          capture_output=True, text=True)
    if made.returncode:
        raise RuntimeError(f"initdb failed: {made.stdout}{made.stderr}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    started = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l",
                              str(root / "server.log"), "-w", "start"], capture_output=True,
                             text=True)
    if started.returncode:
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}"
                           f"{Path(root / 'server.log').read_text()}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
