"""The run-dir contract between training and reporting.

Everything a run knows ends up here; `esft drift-report` reads nothing else. File names and the keys marked
(pinned) are interfaces other tools rely on (README, "The run directory").

    .hydra/config.yaml     the composed config (written by Hydra)
    status.json            (pinned) {"state": "running"|"done"|"failed", "step", "stage", "message", ...}
    run.json               static facts: stages (task, first_step, last_step), eval tasks, parameter count D
    metrics.jsonl          (pinned) one row per training step: step, stage, task (the task trained),
                           reward_mean/std/min/max, theta_dist, update_norm, skipped, seconds, and the compute
                           counters forward_tokens, backward_tokens, generated_tokens, population_evals, peak_rss_mb
    evals.jsonl            (pinned) one row per checkpoint and task: step, stage, task, accuracy, reward, n,
                           event (stage_start | periodic | stage_end), role (curriculum | eval_only);
                           also scoring, and `correct` (each item's 0/1 outcome in eval order, when every item
                           scored 0 or 1: drift-report's paired margins)
    diagnostics.jsonl      one row per checkpoint: step, stage, theta_dist, per-layer distances
    es_updates.jsonl       the ES replay log: per step the member seeds, coefficients, alpha, sigma, AWD settings
    checkpoints/step_XXXXXXX/   master weights (safetensors) + trainer state; `checkpoints/latest` names the newest
    final_model/           save_pretrained (safetensors) + tokenizer, loadable with AutoModelForCausalLM
    run.lock               held (fcntl) by the training process while it runs, so a second one refuses

JSONL files are append-only and flushed per row, so a killed run loses at most the row being written; a torn
last line is dropped on resume (`repair_jsonl`, which keeps every other valid row). Small JSON files are written
atomically (temp file + rename).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
EVALS_FILE = "evals.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
REPLAY_FILE = "es_updates.jsonl"
CHECKPOINTS_DIR = "checkpoints"
FINAL_MODEL_DIR = "final_model"
HYDRA_CONFIG = ".hydra/config.yaml"
LOCK_FILE = "run.lock"

_log = logging.getLogger("esft")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finite_or_null(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN, and readers must not choke on one bad number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(finite_or_null(row), default=_json_default, separators=(",", ":"))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via a temp file in the same directory and `os.replace`, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_bytes(path, json.dumps(finite_or_null(data), default=_json_default, indent=2).encode())


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


class JsonlWriter:
    """Append-only JSONL file, one flushed line per row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = open(path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(dumps(row) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; raises ValueError naming the line for a corrupt row."""
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path)) if path.exists() else []


_WARN_LINES = 5  # per file: a file of junk gets five line-level warnings and a count, not thousands


def _parse_row(raw: bytes) -> dict[str, Any] | None:
    """The row on one line, or None when the line is not a UTF-8 JSON object (binary junk, a torn write)."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


def repair_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool] | None = None,
                 warn: Callable[[str], None] | None = None) -> int:
    """Keep every valid row for which keep(row) is true; skip only what cannot be a row. Returns rows kept.

    Used on resume so every step appears exactly once: rows written after the checkpoint we resume from are
    removed (they will be written again). Everything else that parses survives: a complete last row that lost
    only its newline to a kill is kept (the newline is added), a torn last line is dropped, and a corrupt line
    in the middle (a disk error, a hand edit) costs that line alone, never the valid rows after it. Each
    skipped line gets a warning naming the file and line; `keep` raising TypeError/ValueError marks a row
    without a usable position (e.g. "step": 1e999), which is skipped the same way. Kept rows are copied byte
    for byte, so a resumed run's logs equal an uninterrupted run's. The file is rewritten (atomically) only
    when something changed.
    """
    if not path.exists():
        return 0
    warn = warn or _log.warning
    data = path.read_bytes()
    lines = data.split(b"\n")
    kept: list[bytes] = []
    skipped = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        torn_tail = number == len(lines)  # the last piece has no newline after it
        row = _parse_row(raw)
        why = "is cut short (the row being written when the run stopped)" if torn_tail else "is not a JSON object"
        if row is not None:
            try:
                if keep is not None and not keep(row):
                    continue
            except (TypeError, ValueError) as exc:
                row, why = None, f"has no usable position ({exc})"
        if row is None:
            skipped += 1
            if skipped <= _WARN_LINES:
                warn(f"{path}: line {number} {why}; skipped that line, kept the rest")
            continue
        kept.append(raw + b"\n")
    if skipped > _WARN_LINES:
        warn(f"{path}: {skipped} unusable lines skipped in all")
    repaired = b"".join(kept)
    if repaired != data:
        _replace_bytes(path, repaired)
    return len(kept)


def _replace_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def writer(self, name: str) -> JsonlWriter:
        return JsonlWriter(self.root / name)

    def set_status(self, state: str, **fields: Any) -> None:
        previous = self.status() or {}
        data = {**previous, **fields, "state": state, "updated": time.time()}
        data.setdefault("started", data["updated"])
        write_json_atomic(self.root / STATUS_FILE, data)

    def status(self) -> dict[str, Any] | None:
        path = self.root / STATUS_FILE
        if not path.exists():
            return None
        try:
            return read_json(path)
        except (OSError, json.JSONDecodeError):
            return None

    def rows(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.root / name)


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSONL file at once (tests and tools that fabricate run dirs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")


class _NullWriter(JsonlWriter):
    """A writer that keeps nothing: a torchrun follower's rows are the leader's rows."""

    def __init__(self) -> None:  # no file
        pass

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class ReadOnlyRunDir(RunDir):
    """The run dir as a torchrun follower sees it: readable (status, checkpoints), never written."""

    def writer(self, name: str) -> JsonlWriter:
        return _NullWriter()

    def set_status(self, state: str, **fields: Any) -> None:
        pass


def remove_stale_temporaries(final: Path, older_than_s: float = 3600.0) -> None:
    """Delete the temp dirs (`.<name>.tmp-*`) of a cache entry that a process killed while saving left behind.
    Only old ones: a young one may belong to a concurrent process that is saving right now."""
    now = time.time()
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > older_than_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue
