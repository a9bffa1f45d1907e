"""Advisory file locks (fcntl.flock) for state that two esft processes must not build or write at once.

Two users: the run dir (`run.lock`, held for a training run's whole life, so a second `esft train` on the same
dir refuses instead of interleaving rows into the first run's logs) and the tiny model's warm-up cache (two
first runs of a sweep build it once; the second waits and then loads the first one's copy).

flock locks belong to the open file description, so the kernel drops them when the holder exits in any way,
kill -9 included: a lock file left behind is never "stale", only unlocked. The file itself is therefore never
deleted (unlinking a lock file lets a waiter lock the old inode while a newcomer locks a new one).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path


class FileLock:
    """An exclusive flock on `path`; the holder's pid and host are written into the file for error messages."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False (without waiting) if another process does."""
        return self._acquire(blocking=False)

    def acquire(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting as long as needed; `on_wait(holder)` is called once if we have to wait."""
        if self._acquire(blocking=False):
            return
        if on_wait is not None:
            on_wait(self.holder())
        self._acquire(blocking=True)

    def _acquire(self, blocking: bool) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        try:  # best effort: the note only improves the message a refused process prints
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        return True

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ('another process' if unknown)."""
        try:
            note = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            note = ""
        return note or "another process"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_dir_busy(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s run lock, or None when it is free (or absent). Probes without keeping the lock."""
    from esft.storage.rundir import LOCK_FILE

    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    probe = FileLock(path)
    try:
        if probe.try_acquire():
            probe.release()
            return None
    except OSError:  # an unreadable run dir: the run itself reports that in one line
        return None
    return probe.holder()


def refuse_busy_run_dir(args: list[str]) -> None:
    """Refuse, before Hydra writes `.hydra/` and its log into it, a run dir another `esft train` is running in.

    The run's own lock (taken in Experiment.run_all) is what guarantees exclusion; this early probe only keeps
    a refused second process from touching the first one's files at all. Sweeps (one dir per job) and torchrun
    followers (rank 0 holds the lock for all ranks) are not probed.
    """
    from esft.errors import EsftError

    if "-m" in args or "--multirun" in args or os.environ.get("RANK", "0") not in ("", "0"):
        return
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if not given:
        return
    holder = run_dir_busy(Path(given[-1]).expanduser())
    if holder is not None:
        raise EsftError(f"run dir {given[-1]} is in use by {holder} (another `esft train` on the same dir); "
                        "wait for it to finish or choose another hydra.run.dir")
