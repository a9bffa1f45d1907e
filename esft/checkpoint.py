"""Weight checkpoints inside a run dir: checkpoints/step_XXXXXXX/{weights.safetensors, state.json}.

A checkpoint directory is assembled under a temporary name and renamed into place, and `checkpoints/latest`
is replaced atomically afterwards, so a run killed at any moment leaves the previous checkpoint intact and
`latest` never names a half-written one. Weights load only through safetensors (never pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.faults import fault_point
from esft.rundir import write_json_atomic

WEIGHTS = "weights.safetensors"
STATE = "state.json"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / WEIGHTS))
        write_json_atomic(staging / STATE, {**state, "step": step})
        fault_point("checkpoint", step)
        os.chmod(staging, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_latest(root, final.name)
    if keep > 0:
        _prune(root, keep)
    return final


def _write_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".latest.", dir=root)
    with os.fdopen(fd, "w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int) -> None:
    found = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise EsftError(f"corrupt checkpoint pointer {pointer}: '{path.name}' does not exist; "
                        "delete the pointer to restart from the newest complete checkpoint")
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and state of one checkpoint; a truncated or corrupt file is a one-line EsftError."""
    try:
        tensors = load_file(str(path / WEIGHTS))
        with open(path / STATE) as handle:
            state = json.load(handle)
    except (OSError, SafetensorError, json.JSONDecodeError, ValueError) as exc:
        raise EsftError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                        "delete it to resume from an earlier one") from None
    return tensors, state
