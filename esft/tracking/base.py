"""The metric-logger protocol every tracker implements, and how run-dir rows become tracker scalars.

The shape is torchtune's / Lightning's `MetricLogger`: hyperparameters once, a dict of scalars at a step,
close with the final status. esft adds the two row kinds the run dir already has (evaluation rows and
diagnostics) so a tracker can tag them as it likes; `scalars_of` gives every tracker the same flat
`tag -> float` view, so TensorBoard, W&B and MLflow show identical names and values.

Tags (one namespace per run-dir file, so a tracker UI groups them the same way):

    train/<key>                       every numeric field of a metrics.jsonl row (reward_mean, theta_dist, ...)
    eval/<role>/<task>/<field>        accuracy and reward of an evals.jsonl row; role = curriculum | eval_only
    eval/stage                        the stage the evaluation belongs to
    drift/<task>                      live drift of a task that is not being trained: its accuracy at the
                                      current stage's start minus its accuracy now (positive = forgotten)
    diag/<key>[/<sub>]                every numeric field of a diagnostics.jsonl row (per-layer distances, KL)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

EVAL_FIELDS = ("accuracy", "reward")
_ROW_KEYS = ("step", "stage", "task", "event", "stage_task", "role")  # identify a row; not values to plot


@runtime_checkable
class MetricLogger(Protocol):
    """One tracker, fed the run dir's rows as they are written. Steps are global and non-decreasing across
    calls; several calls may share a step (a step's metrics row, then its evaluation and diagnostics)."""

    name: str

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The composed config, as hyperparameters."""

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        """One metrics.jsonl row (one training step)."""

    def log_evals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The evals.jsonl rows of one evaluation (one per task, same step, stage and event)."""

    def log_diagnostics(self, row: Mapping[str, Any]) -> None:
        """One diagnostics.jsonl row."""

    def flush(self) -> None:
        """Make everything logged so far visible to the tracker's reader/UI."""

    def close(self, status: str) -> None:
        """End the tracker run with the run's final state (done | failed | running)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def flatten_numbers(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    """(tag, value) for every finite number in a nested dict; strings and nulls are not scalars."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from flatten_numbers(f"{prefix}/{key}", sub)
        return
    number = _number(value)
    if number is not None:
        yield prefix, number


def metrics_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row: every numeric field (stage included, as a number) under train/."""
    out = dict(flatten_numbers("train", {k: v for k, v in row.items() if k not in ("step", "task")}))
    return out


def eval_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """An evals.jsonl row: accuracy and reward under eval/<role>/<task>/, plus the row's stage."""
    base = f"eval/{row.get('role', 'curriculum')}/{row['task']}"
    out = {f"{base}/{field}": v for field in EVAL_FIELDS if (v := _number(row.get(field))) is not None}
    if (stage := _number(row.get("stage"))) is not None:
        out["eval/stage"] = stage
    return out


def diagnostics_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    return dict(flatten_numbers("diag", {k: v for k, v in row.items() if k not in _ROW_KEYS}))


class DriftTracker:
    """Live drift: for every task other than the one the current stage trains, its accuracy at the stage's
    start minus its latest accuracy. The stage-start accuracy comes from the `stage_start` evaluation (the
    weights before the stage's first update), the same baseline `esft drift-report` uses for `max drop`."""

    def __init__(self) -> None:
        self._start: dict[tuple[int, str], float] = {}

    def scalars(self, row: Mapping[str, Any]) -> dict[str, float]:
        accuracy, stage, task = _number(row.get("accuracy")), row.get("stage"), row.get("task")
        if accuracy is None or stage is None or task is None:
            return {}
        if row.get("event") == "stage_start":
            self._start[(int(stage), str(task))] = accuracy
        start = self._start.get((int(stage), str(task)))
        if start is None or task == row.get("stage_task"):
            return {}
        return {f"drift/{task}": start - accuracy}
