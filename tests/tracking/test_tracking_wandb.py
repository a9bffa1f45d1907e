"""Weights & Biases, offline: the run's transaction log, read back, holds exactly the JSONL rows."""

from __future__ import annotations

import json

import pytest
from tracking_helpers import expected_points

from esft.tracking.wandb_records import history_rows, run_files, run_summary


def _logged(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over every session of the run; a repeated (tag, step) fails."""
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    files = run_files(run_dir / "wandb", run_id)
    assert files, "no offline transaction log"
    points: dict[str, dict[int, float]] = {}
    for path in files:
        for row in history_rows(path):
            for key, value in row.items():
                if key.startswith("_"):
                    continue
                assert row["_step"] not in points.setdefault(key, {}), f"{key} logged twice at {row['_step']}"
                points[key][row["_step"]] = value
    return points


def test_history_equals_the_jsonl_rows(tracked_run):
    want = expected_points(tracked_run)
    got = _logged(tracked_run)
    assert set(got) == set(want)
    for tag, points in want.items():
        assert got[tag].keys() == points.keys(), tag
        for step, value in points.items():
            assert got[tag][step] == pytest.approx(value, rel=1e-12, abs=1e-12), (tag, step)


def test_offline_run_has_config_group_and_status(tracked_run):
    state = json.loads((tracked_run / "trackers.json").read_text())["wandb"]
    assert state["project"] == "esft" and state["name"]
    (log,) = run_files(tracked_run / "wandb", state["id"])
    assert log.parent.name.startswith("offline-run-")  # no network: `wandb sync` uploads it later
    info = run_summary(log)
    assert info["name"] == state["name"]
    assert info["config"]["es"]["population_size"] == 4 and info["config"]["awd"]["lambda"] == 1.0
    assert info["summary"]["status"] == "done"
