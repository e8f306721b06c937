"""Atomic folders: a writer killed mid-way leaves nothing that outlives the next write."""

import subprocess
import sys
import time

from ser_jax.core.files import atomic_directory, remove_abandoned_staging

WRITER = """
import os, signal, sys, time
from ser_jax.core.files import atomic_directory
with atomic_directory(sys.argv[1]) as staging:
    (staging / "half.bin").write_bytes(b"x" * 1000)
    print("staged", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""


def start_writer(target, how: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), how],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "staged"
    return process


def test_staging_of_a_killed_writer_is_removed_and_a_live_writers_kept(tmp_path):
    target = tmp_path / "features"
    live = start_writer(target, "sleep")
    killed = start_writer(target, "die")  # started second: the first write's sweep missed it
    killed.wait(timeout=30)
    try:
        staged = sorted(tmp_path.glob(".features.tmp-*"))
        assert len(staged) == 2
        with atomic_directory(target) as staging:
            (staging / "done.txt").write_text("ok")
        left = sorted(tmp_path.glob(".features.tmp-*"))
        assert len(left) == 1 and f"-{live.pid}-" in left[0].name  # the live writer's only
        assert (target / "done.txt").read_text() == "ok"
    finally:
        live.kill()
        live.wait()
    time.sleep(0.1)
    assert remove_abandoned_staging(target) == left
    assert not list(tmp_path.glob(".features.*"))


def test_other_hosts_and_foreign_names_are_left_alone(tmp_path):
    target = tmp_path / "bundle"
    foreign = [tmp_path / ".bundle.tmp-otherhost-1-abc", tmp_path / ".bundle.tmp-abc",
               tmp_path / ".bundlex.tmp-x"]
    for folder in foreign:
        folder.mkdir()
    with atomic_directory(target) as staging:
        (staging / "a").write_text("a")
    assert all(folder.is_dir() for folder in foreign)
