"""Weight checkpoints inside a run dir: checkpoints/step_XXXXXXX/{weights.safetensors, state.json}.

A checkpoint directory is assembled under a temporary name and renamed into place, and `checkpoints/latest`
is replaced atomically afterwards, so a run killed at any moment leaves the previous checkpoint intact and
`latest` never names a half-written one. Weights load only through safetensors (never pickle).

Resuming trusts nothing on disk: `find_resumable` reads and verifies the newest checkpoint and, if it is
corrupt (a disk error, a copy cut short, a hand edit), moves it aside and falls back to the next older one,
so a run never restarts from step 0 while a complete checkpoint exists. state.json records the sha256 of the
weights file as written (`weights_sha256`): safetensors only checks that the header's offsets fit the file,
so a flipped bit inside the tensor data (a disk, a copy, an rsync onto a changed file) would otherwise resume
silently from wrong weights and break the run's bit-identical replay without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.storage.faults import fault_point
from esft.storage.rundir import write_json_atomic

WEIGHTS = "weights.safetensors"
STATE = "state.json"
LATEST = "latest"
CHECKSUM = "weights_sha256"  # state.json key: sha256 of weights.safetensors as saved


def file_sha256(path: Path) -> str:
    """Streaming sha256 of a file (a SmolLM2 checkpoint is ~1 GB: never read whole into memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / WEIGHTS))
        write_json_atomic(staging / STATE, {**state, "step": step, CHECKSUM: file_sha256(staging / WEIGHTS)})
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
    found = checkpoint_dirs(root)  # moved-aside `.corrupt-` dirs are not checkpoints and never count
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


_STEP_DIR = re.compile(r"step_(\d{7,})")
_ORPHAN_PREFIXES = (".step_", f".{LATEST}.")  # staging dirs and pointer temp files of a killed save


class CorruptCheckpoint(EsftError):
    """A checkpoint that cannot be what a save wrote: unreadable weights, a missing tensor, a bad state.json."""


@dataclass
class Resumable:
    """The checkpoint a resume continues from, already read and verified."""

    path: Path
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def stage(self) -> int:
        return int(self.state["stage"])


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint dir is named after; None for anything else (staging dirs, moved-aside ones)."""
    match = _STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint dirs by step, oldest first (only exact `step_XXXXXXX` names, never a `.corrupt-` one)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def _pointer(root: Path) -> tuple[str | None, str | None]:
    """(name `latest` holds, problem with it); the name is None when the pointer is absent or unusable."""
    pointer = root / LATEST
    if not pointer.exists():
        return None, None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{LATEST} is unreadable ({type(exc).__name__})"
    if checkpoint_step(Path(name)) is None or "/" in name:
        return None, f"{LATEST} holds {name[:60]!r}, not a checkpoint name"
    if not (root / name).is_dir():
        return None, f"{LATEST} names {name}, which does not exist"
    return name, None


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint by name, without reading it: what `latest` names, else the newest step dir.

    Cheap and never raises, for messages (e.g. "the last complete checkpoint is ..."); a resume uses
    `find_resumable`, which verifies what it loads.
    """
    name, _ = _pointer(root)
    if name is not None:
        return root / name
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_checkpoint(path: Path, num_parameters: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and state of one checkpoint, verified; anything a save could not have written is CorruptCheckpoint.

    Checked: the safetensors file parses and every tensor's bytes are present (safetensors compares the header's
    offsets with the file size), a 1-D `master` tensor exists, state.json is an object whose integer `step` is
    the one in the dir name and whose `stage` is a non-negative integer, and the file's sha256 is the one the
    save recorded (when recorded). `num_parameters`, when given, must
    match `master`: a readable checkpoint of another size is a different model, not corruption, so that is a
    plain EsftError and the checkpoint is left alone.
    """
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpoint(f"corrupt checkpoint {path}: {WEIGHTS}: {_first_line(exc)}") from None
    try:
        with open(path / STATE, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CorruptCheckpoint(f"corrupt checkpoint {path}: {STATE}: {_first_line(exc)}") from None
    problem = _state_problem(path, state) or _tensor_problem(tensors) or _checksum_problem(path, state)
    if problem:
        raise CorruptCheckpoint(f"corrupt checkpoint {path}: {problem}")
    if num_parameters is not None and tensors["master"].numel() != num_parameters:
        raise EsftError(f"checkpoint {path} holds {tensors['master'].numel()} parameters but the model has "
                        f"{num_parameters}: this run dir was trained with another model; choose a new hydra.run.dir")
    return tensors, state


def _state_problem(path: Path, state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"{STATE} is not a JSON object"
    step, stage = state.get("step"), state.get("stage")
    if type(step) is not int or step < 0:
        return f"{STATE} has no valid step ({step!r})"
    if type(stage) is not int or stage < 0:
        return f"{STATE} has no valid stage ({stage!r})"
    named = checkpoint_step(path)
    if named is not None and named != step:
        return f"{STATE} says step {step} but the dir is {path.name}"
    return None


def _checksum_problem(path: Path, state: dict[str, Any]) -> str | None:
    """The weights file against the sha256 its save recorded; checkpoints written before it was recorded pass."""
    expected = state.get(CHECKSUM)
    if expected is None:
        return None
    if not isinstance(expected, str):
        return f"{STATE} has no valid {CHECKSUM} ({expected!r})"
    try:
        actual = file_sha256(path / WEIGHTS)
    except OSError as exc:
        return f"{WEIGHTS}: {_first_line(exc)}"
    if actual != expected:
        return f"{WEIGHTS} does not match the sha256 its save recorded (the file changed after it was written)"
    return None


def _tensor_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    master = tensors.get("master")
    if master is None:
        return f"{WEIGHTS} has no 'master' tensor"
    if master.dim() != 1 or master.numel() == 0:
        return f"{WEIGHTS}: 'master' has shape {tuple(master.shape)}, not a non-empty vector"
    return None


def remove_orphans(root: Path) -> list[str]:
    """Delete staging dirs and pointer temp files a killed save left behind; returns their names.

    Only call this while holding the run dir's lock: then no save is in flight, so every such entry is dead.
    """
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if not entry.name.startswith(_ORPHAN_PREFIXES):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def _move_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the way (kept for inspection, never loaded again)."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    suffix = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{suffix}")
        suffix += 1
    os.replace(path, target)
    return target


def find_resumable(root: Path, num_parameters: int | None = None, repair: bool = True,
                   warn: Callable[[str], None] = print) -> Resumable | None:
    """The newest complete checkpoint under `root`, read and verified; None only when there is none at all.

    Candidates are every `step_XXXXXXX` dir, newest first, whatever `latest` says: the pointer is written after
    the rename, so a kill in between leaves a complete checkpoint newer than the pointer, and a deleted,
    dangling or garbage pointer must not hide the complete checkpoints beside it (a silent restart from step
    0 would throw away the run). A corrupt candidate is moved aside as `step_XXXXXXX.corrupt-<time>` and the
    next older one is tried; one warning names what was set aside and what the resume continues from.
    With `repair` (the process that owns the run dir) orphaned staging dirs are removed, corrupt checkpoints
    moved and `latest` rewritten; without it (torchrun followers) the same choice is made read-only.
    """
    pointer_name, pointer_problem = _pointer(root)
    if repair:
        remove_orphans(root)
        if (root / LATEST).is_dir() and not (root / LATEST).is_symlink():
            shutil.rmtree(root / LATEST)  # a dir where the pointer belongs would block rewriting it
    bad: list[tuple[Path, str]] = []
    chosen: Resumable | None = None
    for path in reversed(checkpoint_dirs(root)):
        try:
            tensors, state = load_checkpoint(path, num_parameters)
        except CorruptCheckpoint as exc:
            bad.append((path, str(exc).split(f"{path}: ", 1)[-1]))
            continue
        chosen = Resumable(path, tensors, state)
        break
    notes = [f"{LATEST}: {pointer_problem}"] if pointer_problem else []
    for path, why in bad:
        moved = _move_aside(path) if repair else path
        notes.append(f"{path.name} is corrupt ({why})" + (f", moved to {moved.name}" if repair else ""))
    if repair and chosen is not None and pointer_name != chosen.path.name:
        _write_latest(root, chosen.path.name)
    elif repair and chosen is None and (root / LATEST).exists():
        (root / LATEST).unlink()
    if notes and chosen is not None:
        warn(f"resuming from {chosen.path.name}, the newest complete checkpoint in {root}: {'; '.join(notes)}")
    elif notes:
        warn(f"no complete checkpoint in {root}, so the run starts over from step 0: {'; '.join(notes)}")
    return chosen
