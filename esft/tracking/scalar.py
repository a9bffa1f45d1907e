"""What TensorBoard, W&B and MLflow share: run-dir rows -> scalar tags, each (tag, step) sent exactly once.

A subclass only says how to write scalars, hyperparameters and the final status, and which (tag, step)
pairs its tracker run already holds. That last part makes resuming safe for every tracker alike: the
fan-out replays the run dir's JSONL rows (the record) into a reopened tracker, and a pair is sent only if
its step is above the tracker's high-water mark for that tag. So rows the tracker lost (an unflushed
buffer at a kill) are filled in, rows it holds are not repeated, and the re-run steps after the
checkpoint carry on where the tracker stopped. The same rule keeps one point per step when two
evaluations share a step (a stage's `stage_end` and the next stage's `stage_start` score the same weights).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from esft.tracking.base import DriftTracker, diagnostics_scalars, eval_scalars, metrics_scalars


class ScalarTracker(abc.ABC):
    """A MetricLogger over a scalar tracker (tag, step, value)."""

    name = "scalar"

    def __init__(self) -> None:
        self._marks: dict[str, int] = {}
        self._drift = DriftTracker()

    def start(self) -> None:
        """Open the tracker run (new or resumed) and load its high-water marks."""
        self._open()
        self._marks = dict(self._held_marks())

    # -- what a tracker implements ---------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _held_marks(self) -> Mapping[str, int]:
        """tag -> the highest step the (resumed) tracker run already holds; empty for a new run."""

    @abc.abstractmethod
    def _write(self, scalars: Mapping[str, float], step: int) -> None: ...

    @abc.abstractmethod
    def log_config(self, config: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def close(self, status: str) -> None: ...

    # -- the MetricLogger rows -------------------------------------------------------------------------
    def log_metrics(self, row: Mapping[str, Any]) -> None:
        self._send(metrics_scalars(row), int(row["step"]))

    def log_evals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        scalars: dict[str, float] = {}
        for row in rows:
            scalars.update(eval_scalars(row))
            scalars.update(self._drift.scalars(row))
        self._send(scalars, int(rows[0]["step"]))

    def log_diagnostics(self, row: Mapping[str, Any]) -> None:
        self._send(diagnostics_scalars(row), int(row["step"]))

    def _send(self, scalars: Mapping[str, float], step: int) -> None:
        fresh = {tag: value for tag, value in scalars.items() if step > self._marks.get(tag, -1)}
        if not fresh:
            return
        self._write(fresh, step)
        self._marks.update(dict.fromkeys(fresh, step))
