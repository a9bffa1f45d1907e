"""Where a run sits (its sweep, its name) and the tracker ids that must survive a resume.

A Hydra multirun names the group (W&B `group`, MLflow experiment) after the sweep dir and each run after its
overrides (`hydra.job.override_dirname`, e.g. `awd.lambda=0,es.population_size=64`), so a sweep's curves sit
side by side. Those names and each tracker's run id are saved in `trackers.json` in the run dir the first
time; a resumed run (`esft train --resume DIR` is a single run, not a multirun) reads them back and appends
to the same tracker run instead of starting a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esft.storage.rundir import read_json, write_json_atomic

STATE_FILE = "trackers.json"


@dataclass(frozen=True)
class JobInfo:
    run_dir: Path
    name: str
    group: str | None = None       # the sweep's name; None for a single run
    sweep_dir: Path | None = None  # the multirun root; None for a single run

    @classmethod
    def standalone(cls, run_dir: Path) -> "JobInfo":
        return cls(run_dir=Path(run_dir), name=Path(run_dir).name)


def sweep_name(sweep_dir: Path) -> str:
    """`outputs/multirun/2025-06-01/12-00-00` -> `2025-06-01/12-00-00`: Hydra's default sweep dir is a date and a
    time, and the time alone would not tell two days apart."""
    parent = sweep_dir.parent.name
    return f"{parent}/{sweep_dir.name}" if parent and parent not in (".", "multirun") else sweep_dir.name


def swept_keys(argv: list[str]) -> set[str]:
    """The keys a command line sweeps (`awd.lambda=0,1`, `range(...)`): they tell the sweep's runs apart."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from esft.resources import overrides_in

    try:
        parsed = OverridesParser.create().parse_overrides(overrides_in(argv))
    except Exception:  # noqa: BLE001 - an unparsable command line just means: name runs by all overrides
        return set()
    return {o.get_key_element() for o in parsed if o.is_sweep_override()}


def job_name(task_overrides: list[str], override_dirname: str, swept: set[str]) -> str:
    """`awd.lambda=0,es.population_size=64`: the job's values of the swept keys, else all its overrides."""
    chosen = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return ",".join(chosen) or override_dirname


def job_from_hydra(hydra_cfg: Any, argv: list[str] | None = None) -> JobInfo:
    """The JobInfo of the running Hydra job (`HydraConfig.get()`); `argv` (default sys.argv) names the swept
    keys. Under a launcher whose worker has another command line, the run is named by all its overrides."""
    import sys

    from hydra.types import RunMode

    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = str(hydra_cfg.job.get("override_dirname") or "")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        task = [str(o) for o in (hydra_cfg.get("overrides") or {}).get("task") or []]
        name = job_name(task, overrides, swept_keys(list(sys.argv[1:] if argv is None else argv)))
        sweep_dir = Path(hydra_cfg.sweep.dir)
        return JobInfo(run_dir=run_dir, name=name or run_dir.name, group=sweep_name(sweep_dir), sweep_dir=sweep_dir)
    return JobInfo(run_dir=run_dir, name=overrides or run_dir.name)


class TrackerState:
    """`trackers.json`: per tracker, what a resumed run needs to reopen the same tracker run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.data: dict[str, dict[str, Any]] = read_json(self.path) if self.path.exists() else {}

    def get(self, tracker: str) -> dict[str, Any]:
        return dict(self.data.get(tracker) or {})

    def put(self, tracker: str, values: dict[str, Any]) -> None:
        self.data[tracker] = {**self.data.get(tracker, {}), **values}
        write_json_atomic(self.path, self.data)
