"""Fault injection for the crash-safety tests: `ESFT_FAULT=POINT@STEP` kills the process with SIGKILL when
the run reaches that point at that step, exactly as `kill -9` would at an unlucky moment. Points:
`step_done` (the step's weights and replay row exist, its metrics row does not) and `checkpoint` (the
checkpoint's weights are written in the staging directory, not yet renamed into place). Unset in real runs."""

from __future__ import annotations

import os
import signal


def fault_point(name: str, step: int) -> None:
    if os.environ.get("ESFT_FAULT") == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
