"""The run-dir contract between training and reporting.

Everything a run knows ends up here; `esft drift-report` reads nothing else. File names and the keys marked
(pinned) are interfaces other tools rely on (DESIGN.md section 4a).

    .hydra/config.yaml     the composed config (written by Hydra)
    status.json            (pinned) {"state": "running"|"done"|"failed", "step", "stage", "message", ...}
    run.json               static facts: stages (task, first_step, last_step), eval tasks, parameter count D
    metrics.jsonl          (pinned) one row per training step: step, stage, task (the task trained),
                           reward_mean/std/min/max, theta_dist, update_norm, skipped, seconds, and the compute
                           counters forward_tokens, backward_tokens, generated_tokens, population_evals, peak_rss_mb
    evals.jsonl            (pinned) one row per checkpoint and task: step, stage, task, accuracy, reward, n,
                           event (stage_start | periodic | stage_end), role (curriculum | eval_only)
    diagnostics.jsonl      one row per checkpoint: step, stage, theta_dist, per-layer distances
    es_updates.jsonl       the ES replay log: per step the member seeds, coefficients, alpha, sigma, AWD settings
    checkpoints/step_XXXXXXX/   master weights (safetensors) + trainer state; `checkpoints/latest` names the newest
    final_model/           save_pretrained (safetensors) + tokenizer, loadable with AutoModelForCausalLM

JSONL files are append-only and flushed per row, so a killed run loses at most the row being written; a torn
last line is dropped on resume (`repair_jsonl`). Small JSON files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
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


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN, and readers must not choke on one bad number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(_clean(row), default=_json_default, separators=(",", ":"))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via a temp file in the same directory and `os.replace`, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_clean(data), handle, default=_json_default, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def repair_jsonl(path: Path, keep: Any = None) -> int:
    """Drop a torn (unterminated or unparsable) tail and, if `keep` is given, rows for which keep(row) is False.

    Used on resume so every step appears exactly once: rows written after the checkpoint we resume from are
    removed and will be written again. Returns the number of rows kept.
    """
    if not path.exists():
        return 0
    kept: list[str] = []
    with open(path) as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # torn last line
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if keep is None or keep(row):
                kept.append(line)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return len(kept)


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
