"""Run-dir and warm-up locks: exclusive across processes, released by the kernel when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esft.errors import EsftError
from esft.storage.locks import FileLock, refuse_busy_run_dir, run_dir_busy

HOLD = """
import sys, time
from esft.storage.locks import FileLock
lock = FileLock(sys.argv[1])
assert lock.try_acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_holder_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    path = tmp_path / "run.lock"
    holder = _holder(path)
    try:
        lock = FileLock(path)
        assert not lock.try_acquire()
        assert lock.holder() == f"pid {holder.pid} on {os.uname().nodename}"
        assert run_dir_busy(tmp_path) == lock.holder()
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no cleanup code runs, the kernel drops the flock
        holder.wait()
    assert run_dir_busy(tmp_path) is None
    lock = FileLock(path)
    assert lock.try_acquire() and lock.held
    lock.release()
    assert not lock.held and path.exists()  # the file stays: deleting lock files races with waiters


def test_acquire_waits_and_says_so_once(tmp_path):
    path = tmp_path / "build.lock"
    holder = _holder(path)
    waited: list[str] = []
    try:
        lock = FileLock(path)
        started = time.monotonic()
        subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
        lock.acquire(on_wait=waited.append)
        assert time.monotonic() - started >= 0.5
        assert waited == [f"pid {holder.pid} on {os.uname().nodename}"]
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_same_process_reacquire_is_a_no_op_and_release_is_idempotent(tmp_path):
    with FileLock(tmp_path / "x.lock") as lock:
        assert lock.try_acquire()
    lock.release()


def test_refuse_busy_run_dir_probes_only_a_single_run_on_rank_0(tmp_path, monkeypatch):
    holder = _holder(tmp_path / "run.lock")
    try:
        with pytest.raises(EsftError, match=r"is in use by pid \d+ .*choose another hydra.run.dir"):
            refuse_busy_run_dir(["seed=1", f"hydra.run.dir={tmp_path}"])
        refuse_busy_run_dir(["-m", "seed=1,2", f"hydra.run.dir={tmp_path}"])  # a sweep: one dir per job
        refuse_busy_run_dir(["seed=1"])  # a fresh timestamped dir
        monkeypatch.setenv("RANK", "1")
        refuse_busy_run_dir([f"hydra.run.dir={tmp_path}"])  # a torchrun follower: rank 0 holds the lock
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("RANK")
    refuse_busy_run_dir([f"hydra.run.dir={tmp_path}"])
    refuse_busy_run_dir([f"hydra.run.dir={tmp_path / 'never-created'}"])
