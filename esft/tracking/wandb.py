"""Weights & Biases: offline by default, so a run never needs the network; `wandb sync` uploads it later.

Mode: `logger.wandb.mode`, else `$WANDB_MODE`, else `offline`. The run lives in `<run dir>/wandb/`; its id
is saved in trackers.json and a resumed run reopens it (`resume="allow"`), which in offline mode starts a
second local session of the same id (`wandb sync` merges them). Each row is logged with `step=` the global
step, so W&B's x-axis is esft's step; which steps a resumed run already holds is read back from the
sessions' transaction logs (esft/tracking/wandb_records.py). The composed config is the run config; the
final state is `summary.status`, and a failed run finishes with exit code 1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from esft.tracking.context import JobInfo, TrackerState
from esft.tracking.scalar import ScalarTracker
from esft.tracking.wandb_records import history_rows, run_files, wait_until_written

FINISH_WAIT_S = 30.0


class WandbTracker(ScalarTracker):
    name = "wandb"

    def __init__(self, settings: Mapping[str, Any], job: JobInfo, state: TrackerState) -> None:
        super().__init__()
        self.settings, self.job, self._state = dict(settings), job, state
        saved = state.get(self.name)
        self.mode = str(self.settings.get("mode") or os.environ.get("WANDB_MODE") or "offline")
        self.run_id = saved.get("id")
        self.group = saved.get("group", self.settings.get("group") or job.group)
        self.run_name = saved.get("name", self.settings.get("name") or job.name)
        self.project = saved.get("project", self.settings.get("project") or "esft")
        self.wandb_dir = job.run_dir / "wandb"

    def _open(self) -> None:
        import wandb

        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.run_id or uuid.uuid4().hex[:8]  # W&B ids: lowercase letters and digits
        self._state.put(self.name, {"id": self.run_id, "group": self.group, "name": self.run_name,
                                    "project": self.project})
        self._held = self._read_held()  # before this session starts writing its own log
        self._run = wandb.init(project=self.project, entity=self.settings.get("entity"), group=self.group,
                               name=self.run_name, id=self.run_id, resume="allow", mode=self.mode,
                               dir=str(self.job.run_dir), settings=wandb.Settings(console="off", silent=True),
                               reinit="create_new")

    def _read_held(self) -> dict[str, int]:
        marks: dict[str, int] = {}
        for path in run_files(self.wandb_dir, self.run_id):
            for row in history_rows(path):
                step = int(row.get("_step", -1))
                for key in row:
                    if not key.startswith("_"):
                        marks[key] = max(step, marks.get(key, -1))
        return marks

    def _held_marks(self) -> dict[str, int]:
        return self._held

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        self._run.log(dict(scalars), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._run.config.update(dict(config), allow_val_change=True)

    def flush(self) -> None:
        pass  # the wandb service writes the transaction log as rows arrive

    def close(self, status: str) -> None:
        """Finish the run and wait (at most FINISH_WAIT_S) until wandb's service has written the session's
        transaction log to its end: `finish()` returns before it has, and a run that says `done` should leave
        a complete log for `wandb sync` (and for the next resume's high-water marks)."""
        self._run.summary["status"] = status
        self._run.finish(exit_code=0 if status == "done" else 1)
        wait_until_written(self.wandb_dir, self.run_id, FINISH_WAIT_S)
