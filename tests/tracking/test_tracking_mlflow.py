"""MLflow: the run's local file store, read with MLflow's own client, holds exactly the JSONL rows."""

from __future__ import annotations

import json

import pytest
from tracking_helpers import expected_points


def _client_and_run(run_dir):
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == (run_dir / "mlruns").resolve().as_uri()  # under the run dir, no server
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def test_metric_history_equals_the_jsonl_rows(tracked_run):
    client, run = _client_and_run(tracked_run)
    want = expected_points(tracked_run)
    assert set(run.data.metrics) == set(want)
    for tag, points in want.items():
        history = client.get_metric_history(run.info.run_id, tag)
        steps = [m.step for m in history]
        assert sorted(steps) == sorted(points), tag  # each step once
        for metric in history:
            assert metric.value == pytest.approx(points[metric.step], rel=1e-12, abs=1e-12), (tag, metric.step)


def test_params_and_final_status(tracked_run):
    _, run = _client_and_run(tracked_run)
    assert run.data.params["es.population_size"] == "4"
    assert run.data.params["awd.lambda"] == "1.0"
    assert run.data.params["logger.extra"] == '["tensorboard", "wandb", "mlflow"]'
    assert run.info.status == "FINISHED" and run.data.tags["esft.status"] == "done"
