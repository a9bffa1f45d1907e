"""Faults: injecting them (for the crash-safety tests) and recognising the environmental ones a run can meet.

Injection. `ESFT_FAULT=POINT@STEP` kills the process with SIGKILL when the run reaches that point at that
step, exactly as `kill -9` would at an unlucky moment. `ESFT_FAULT=POINT@STEP:KIND` raises instead the error
the real fault produces there, with the real library's type and wording: `enospc` (the disk is full: the
SafetensorError safetensors raises while serialising, since that is what a full disk looks like during a
checkpoint save), `erofs` (the run dir became read-only) and `eacces` (permission was taken away); `hold`
pauses there while the file named by ESFT_FAULT_HOLD exists (to act on a run that is certainly alive). Points:
`step_done` (the step's weights and replay row exist, its metrics row does not), `checkpoint` (the
checkpoint's weights are written in the staging directory, not yet renamed into place) and `resume_repair`
(a resume has repaired the first of its logs, not the others). Unset in real runs.

Recognition. `write_failure` tells a full disk or an unwritable run dir apart from a bug, whatever type the
library that hit it raises: OSError with ENOSPC/EDQUOT or EROFS/EACCES/EPERM, but also safetensors'
SafetensorError ("... No space left on device (os error 28)"), which is not an OSError, and the RuntimeError
torch's writer raises; both carry the OS error only in their text.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (?:28|122)\b|StorageFull")
_NOT_WRITABLE_TEXT = re.compile(r"Read-only file system|Permission denied|os error (?:30|13|1)\b|ReadOnlyFilesystem")


def _injected(kind: str, name: str, step: int) -> BaseException:
    where = f"(injected fault {name}@{step})"
    if kind == "enospc":
        from safetensors import SafetensorError

        return SafetensorError(f"Error while serializing: I/O error: No space left on device (os error 28) {where}")
    if kind == "erofs":
        return OSError(errno.EROFS, f"Read-only file system {where}")
    if kind == "eacces":
        return PermissionError(errno.EACCES, f"Permission denied {where}")
    raise ValueError(f"ESFT_FAULT: unknown fault kind {kind!r} (kill, enospc, erofs, eacces)")


def fault_point(name: str, step: int) -> None:
    spec = os.environ.get("ESFT_FAULT")
    if not spec:
        return
    point, _, kind = spec.partition(":")
    if point != f"{name}@{step}":
        return
    if kind in ("", "kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hold":
        _hold(name, step)
        return
    raise _injected(kind, name, step)


def _hold(name: str, step: int, limit_s: float = 600.0) -> None:
    """Pause here while the file ESFT_FAULT_HOLD exists, after creating `<that file>.reached`: a test can
    then act on a run that is certainly alive at this point (e.g. start a second run on its dir)."""
    gate = Path(os.environ.get("ESFT_FAULT_HOLD", ""))
    if not gate.name:
        raise ValueError(f"ESFT_FAULT={name}@{step}:hold needs ESFT_FAULT_HOLD=<file> (paused while it exists)")
    gate.with_name(gate.name + ".reached").touch()
    deadline = time.monotonic() + limit_s
    while gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def write_failure(exc: BaseException) -> tuple[str, str | None] | None:
    """("disk_full" | "not_writable", the file named if any) when `exc` is that environmental fault, else None.

    Only OSErrors are judged by errno; another exception type counts only when its text carries the OS
    error's own wording (which is how safetensors and torch report it), so an unrelated error is never
    mistaken for a full disk.
    """
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno is not None:
            filename = str(item.filename) if item.filename else None
            if item.errno in _DISK_FULL:
                return "disk_full", filename
            if item.errno in _NOT_WRITABLE:
                return "not_writable", filename
            continue
        if isinstance(item, OSError):
            continue
        text = str(item)
        if _DISK_FULL_TEXT.search(text):
            return "disk_full", None
        if _NOT_WRITABLE_TEXT.search(text):
            return "not_writable", None
    return None
