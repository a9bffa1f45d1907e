"""One MetricLogger that the experiment talks to: the JSONL record first, then every tracker.

The JSONL logger's errors propagate (it is the record; the experiment turns a full disk into its message).
A tracker that raises, when it opens or at any later call (disk, server gone, a library bug), is logged
once as a warning and dropped; the run goes on. Only the main process opens trackers: torchrun followers
(esft/distributed/torchrun.py) compute the same steps and must not log them again.

On open, each tracker is given the run dir's existing rows (none for a new run; the rows up to the
checkpoint for a resumed one) in the order they were written; trackers send only what they do not already
hold (esft/tracking/scalar.py), so a resumed run continues its tracker runs without gaps or repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any, Callable

from esft.storage.rundir import DIAGNOSTICS_FILE, EVALS_FILE, METRICS_FILE, RunDir
from esft.tracking.base import MetricLogger
from esft.tracking.context import JobInfo, TrackerState
from esft.tracking.registry import check_trackers, logger_settings, tracker_class

log = logging.getLogger("esft")


class MetricFanOut:
    """The record (never dropped) plus the trackers (dropped on their first error)."""

    name = "fanout"

    def __init__(self, record: MetricLogger, trackers: Sequence[MetricLogger] = ()) -> None:
        self.record = record
        self.trackers = list(trackers)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.record.log_config(config)
        self._each(lambda t: t.log_config(config))

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        self.record.log_metrics(row)
        self._each(lambda t: t.log_metrics(row))

    def log_evals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.record.log_evals(rows)
        self._each(lambda t: t.log_evals(rows))

    def log_diagnostics(self, row: Mapping[str, Any]) -> None:
        self.record.log_diagnostics(row)
        self._each(lambda t: t.log_diagnostics(row))

    def flush(self) -> None:
        self.record.flush()
        self._each(lambda t: t.flush())

    def close(self, status: str) -> None:
        self.record.close(status)
        self._each(lambda t: t.close(status))
        self.trackers = []

    def _each(self, call: Callable[[MetricLogger], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - any tracker failure: warn once, drop, keep training
                self.trackers.remove(tracker)
                _warn(tracker.name, exc)


def _warn(name: str, exc: BaseException) -> None:
    log.warning("tracker %s failed (%s: %s); it is dropped for the rest of the run, the JSONL files in the run "
                "dir stay the record", name, type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc) else "")


def recorded_rows(run: RunDir) -> list[tuple[str, Any]]:
    """The run dir's rows as ('metrics', row) / ('evals', [rows]) / ('diagnostics', row), in the order the
    run wrote them: by step; at one step the metrics row, then each evaluation (its eval rows, then its
    diagnostics row) in stage order (a stage's `stage_end` before the next stage's `stage_start`)."""
    items: list[tuple[tuple, str, Any]] = []
    for row in run.rows(METRICS_FILE):
        items.append(((row["step"], 0, 0, 0, 0), "metrics", row))
    evaluations: dict[tuple, int] = {}  # (step, stage, event) -> position in the file
    evals = run.rows(EVALS_FILE)
    for index, (key, rows) in enumerate(groupby(evals, key=lambda r: (r["step"], r["stage"], r["event"]))):
        evaluations[key] = index
        items.append(((key[0], 1, key[1], index, 0), "evals", list(rows)))
    for row in run.rows(DIAGNOSTICS_FILE):
        index = evaluations.get((row["step"], row["stage"], row["event"]), len(evaluations))
        items.append(((row["step"], 1, row["stage"], index, 1), "diagnostics", row))
    items.sort(key=lambda item: item[0])
    return [(kind, payload) for _, kind, payload in items]


def replay(tracker: MetricLogger, rows: Sequence[tuple[str, Any]]) -> None:
    for kind, payload in rows:
        getattr(tracker, f"log_{kind}")(payload)


def open_loggers(cfg: Mapping[str, Any], run: RunDir, record: MetricLogger, job: JobInfo | None = None,
                 main_process: bool = True) -> MetricFanOut:
    """The fan-out for one run: `record` (the JSONL logger) plus the configured trackers, opened, given the
    config as hyperparameters and brought up to date with the run dir's rows."""
    names = check_trackers(cfg)
    fanout = MetricFanOut(record)
    if not names or not main_process:
        return fanout
    job = job or JobInfo.standalone(run.root)
    state = TrackerState(run.root)
    settings = logger_settings(cfg)
    history = recorded_rows(run)
    for name in names:
        try:
            tracker = tracker_class(name)(dict(settings.get(name) or {}), job, state)
            tracker.start()
            tracker.log_config(cfg)
            replay(tracker, history)
        except Exception as exc:  # noqa: BLE001 - a tracker that cannot start must not stop the run
            _warn(name, exc)
            continue
        fanout.trackers.append(tracker)
    return fanout
