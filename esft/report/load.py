"""Find run dirs under paths, sweep roots or globs, and load them tolerantly.

The report must work on whatever a run left behind: a finished run, one still running, one that failed, one
killed mid-write. So nothing here raises for a damaged file. A corrupt JSONL line becomes a warning that names
the file and the line, and the valid rows around it are still used; an unreadable config or status file
becomes a warning and an empty value. The only things a caller has to handle are the returned messages.

A *run dir* is any directory holding `.hydra/config.yaml`, `metrics.jsonl`, `evals.jsonl`, `run.json` or
`status.json` (see esft/storage/rundir.py). A Hydra multirun root holds `multirun.yaml` and one run dir per job; we
simply walk below every given path and collect the run dirs, without descending into a run dir.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from esft.storage.rundir import (
    CHECKPOINTS_DIR,
    DIAGNOSTICS_FILE,
    EVALS_FILE,
    FINAL_MODEL_DIR,
    HYDRA_CONFIG,
    METRICS_FILE,
    RUN_INFO_FILE,
    STATUS_FILE,
    read_json,
)

#: files whose presence makes a directory a run dir
RUN_MARKERS = (HYDRA_CONFIG, METRICS_FILE, EVALS_FILE, RUN_INFO_FILE, STATUS_FILE)
#: directories never searched for runs
_SKIP_DIRS = {CHECKPOINTS_DIR, FINAL_MODEL_DIR, ".hydra", ".git", "__pycache__", ".venv", "node_modules"}
#: status.json states; a run without one is "partial" (killed before writing it, or written by an old version)
STATES = ("done", "running", "failed", "partial")


@dataclass
class Run:
    """Everything one run dir holds that the report uses. `warnings` lists what could not be read."""

    path: Path
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    info: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """done | running | failed | partial (no status.json, or an unknown state)."""
        state = (self.status or {}).get("state")
        return state if state in STATES else "partial"


@dataclass
class Loaded:
    """The runs found, in a stable order, and one message per problem met on the way."""

    runs: list[Run]
    messages: list[str]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders `2_x` before `10_x` (Hydra job dirs are numbered)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def is_report_dir(path: Path) -> bool:
    """A directory written by drift-report itself (never a run)."""
    return (path / "summary.json").is_file() and (path / "report.md").is_file() and not is_run_dir(path)


def find_run_dirs(root: Path) -> list[Path]:
    """Run dirs at or below `root` (a run dir, a multirun root, or any folder of runs), naturally sorted."""
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if here != root and is_run_dir(here):
            found.append(here)
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
    return sorted(found, key=lambda p: natural_key(str(p)))


def expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Expand globs; a pattern or path that matches nothing yields a message instead of a path."""
    out: list[Path] = []
    messages: list[str] = []
    for raw in paths:
        if glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True), key=natural_key)
            if not matches:
                messages.append(f"{raw}: the pattern matches no path")
            out.extend(Path(m) for m in matches)
        elif Path(raw).exists():
            out.append(Path(raw))
        else:
            messages.append(f"{raw}: no such file or directory")
    return out, messages


def discover(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Run dirs under `paths` (dirs, sweep roots, globs), each once, with a message per path holding none."""
    roots, messages = expand(paths)
    seen: set[Path] = set()
    found: list[Path] = []
    for root in roots:
        if is_report_dir(root):
            continue  # a glob like outputs/* also matches the report written beside the runs
        runs = find_run_dirs(root) if root.is_dir() else []
        if not runs:
            messages.append(
                f"{root}: no runs found (a run dir holds {HYDRA_CONFIG}, {METRICS_FILE} or {EVALS_FILE})"
            )
        for run in runs:
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                found.append(run)
    return found, messages


#: row keys that place a row (global step, curriculum stage): a row without a usable one cannot be placed
POSITION_KEYS = ("step", "stage")
#: values the report computes with (esft/storage/rundir.py documents the rows): anything but a finite number there is
#: dropped as a value, so one hand-edited cell costs that cell, not the run
NUMERIC_KEYS = frozenset({
    "accuracy", "reward", "n", "theta_dist", "update_norm", "reward_mean", "reward_std", "reward_min",
    "reward_max", "population_evals", "forward_tokens", "backward_tokens", "generated_tokens", "seconds",
    "wall_time",
})
#: at most this many line numbers are listed in one warning about non-finite values
_LISTED_LINES = 5


def _not_finite(value: Any, numeric: bool = False) -> bool:
    """NaN or infinity anywhere; for a NUMERIC_KEYS value also anything that is not a number (a string, a bool)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return numeric and value is not None and (isinstance(value, bool) or not isinstance(value, int))


def _bad_position(row: dict[str, Any]) -> str | None:
    """Why the row's step or stage cannot place it (a non-finite, fractional or non-numeric value), or None."""
    for key in POSITION_KEYS:
        value = row.get(key)
        if value is None or isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            row[key] = int(value)
            continue
        return f"{key} is {value!r}, not an integer"
    return None


def _drop_non_finite(row: dict[str, Any]) -> list[str]:
    """Null every top-level NaN/infinity, and any non-number under a NUMERIC_KEYS key, in place (Python's json
    reads NaN and 1e999; esft never writes them, see esft.storage.rundir.dumps, so they come from a hand edit or a
    foreign writer); returns the keys nulled."""
    keys = [key for key, value in row.items() if _not_finite(value, key in NUMERIC_KEYS)]
    for key in keys:
        row[key] = None
    return keys


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_LISTED_LINES])
    more = f" and {len(numbers) - _LISTED_LINES} more" if len(numbers) > _LISTED_LINES else ""
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{more}"


def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSONL file, skipping (and reporting) every line that is not a usable JSON object.

    esft.storage.rundir.iter_jsonl stops at the first corrupt row; a report wants the rows after it too, so this
    reader goes on and returns one warning per bad line, worded like rundir's error. A line is skipped when it
    is not JSON, not an object, or its step/stage is not a finite integer (`"step": 1e999` parses as infinity).
    Any other NaN or infinity (`"accuracy": NaN`) becomes null, so the row still counts without that value;
    those are reported once per file and key, naming the lines.
    """
    if not path.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    nulled: dict[str, list[int]] = {}
    try:
        with open(path, errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                    warnings.append(f"{path}: line {number} is not valid JSON ({reason}); line skipped")
                    continue
                if not isinstance(row, dict):
                    warnings.append(f"{path}: line {number} is not a JSON object; line skipped")
                    continue
                problem = _bad_position(row)
                if problem:
                    warnings.append(f"{path}: line {number}: {problem}; line skipped")
                    continue
                for key in _drop_non_finite(row):
                    nulled.setdefault(key, []).append(number)
                rows.append(row)
    except OSError as exc:
        warnings.append(f"{path}: cannot be read ({exc.strerror or exc}); file skipped")
    for key, numbers in nulled.items():
        warnings.append(f"{path}: {_lines(numbers)}: {key} is not a finite number; that value ignored")
    return rows, warnings


def read_config(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The composed Hydra config as plain data ({} with a warning when missing or unreadable)."""
    if not path.exists():
        return {}, []
    try:
        conf = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - any YAML/OmegaConf problem is a warning here
        return {}, [f"{path}: cannot be parsed ({type(exc).__name__}); config ignored"]
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here (e.g. an env var)
        data = OmegaConf.to_container(conf, resolve=False)
    return (data if isinstance(data, dict) else {}), []


def read_json_tolerant(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    if not path.exists():
        return None, []
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        return None, [f"{path}: cannot be parsed ({type(exc).__name__}); file ignored"]
    if not isinstance(data, dict):
        return None, [f"{path}: is not a JSON object; file ignored"]
    return data, []


def load_run(path: Path, name: str | None = None) -> Run:
    """Read one run dir; problems end up in `run.warnings`, never as exceptions."""
    run = Run(path=path, name=name or path.name)
    run.config, warnings = read_config(path / HYDRA_CONFIG)
    run.warnings += warnings
    run.status, warnings = read_json_tolerant(path / STATUS_FILE)
    run.warnings += warnings
    run.info, warnings = read_json_tolerant(path / RUN_INFO_FILE)
    run.warnings += warnings
    for attr, filename in (("metrics", METRICS_FILE), ("evals", EVALS_FILE), ("diagnostics", DIAGNOSTICS_FILE)):
        rows, warnings = read_jsonl_tolerant(path / filename)
        setattr(run, attr, rows)
        run.warnings += warnings
    return run


_JOB_DIR = re.compile(r"^(\d+)_(.+)$")


def _drop_shared_overrides(names: list[str]) -> list[str]:
    """Hydra job dirs are `N_k=v,k=v,...` over every override; keep only the overrides that vary."""
    matches = [_JOB_DIR.match(Path(n).name) for n in names]
    if len(names) < 2 or not all(matches):
        return names
    items = [m.group(2).split(",") for m in matches if m]
    shared = set.intersection(*(set(i) for i in items))
    out = []
    for name, m, parts in zip(names, matches, items):
        kept = ",".join(p for p in parts if p not in shared)
        short = f"{m.group(1)}_{kept}" if kept and m else (m.group(1) if m else name)
        out.append(str(Path(name).parent / short) if Path(name).parent != Path(".") else short)
    return out


def run_names(paths: list[Path]) -> list[str]:
    """Short, unique display names: each path relative to the deepest folder all runs share, without the
    Hydra overrides that every job dir repeats."""
    if len(paths) <= 1:
        return [p.resolve().name for p in paths]
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    return _drop_shared_overrides([str(p.relative_to(common)) or p.name for p in resolved])


def load_runs(paths: list[str]) -> Loaded:
    """Discover and load every run under `paths`. Messages: paths without runs, then each run's warnings."""
    dirs, messages = discover(paths)
    runs = [load_run(path, name) for path, name in zip(dirs, run_names(dirs))]
    for run in runs:
        messages.extend(run.warnings)
    return Loaded(runs=runs, messages=messages)
