"""A real Hydra multirun with trackers: the sweep is the group, each run is named by its swept values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tracking_helpers import TINY

from esft.tracking.context import sweep_name
from esft.tracking.wandb_records import run_files, run_summary


@pytest.mark.slow
def test_multirun_groups_runs_by_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "esft", "train", "-m", "awd.lambda=0,1", *TINY,
                           "logger=[wandb,mlflow]", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    states = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/trackers.json"))]
    assert [s["wandb"]["name"] for s in states] == ["awd.lambda=0", "awd.lambda=1"]
    assert {s["wandb"]["group"] for s in states} == {sweep_name(sweep)} == {"2026-01-02/03-04-05"}
    for job, state in zip(sorted(p.parent for p in sweep.glob("*/trackers.json")), states):
        (log,) = run_files(job / "wandb", state["wandb"]["id"])
        info = run_summary(log)
        assert (info["group"], info["name"]) == (state["wandb"]["group"], state["wandb"]["name"])

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads a file store only when asked
    assert {s["mlflow"]["tracking_uri"] for s in states} == {(sweep / "mlruns").as_uri()}  # one store per sweep
    client = MlflowClient(tracking_uri=(sweep / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("2026-01-02/03-04-05")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["awd.lambda=0", "awd.lambda=1"]
    assert {r.data.params["awd.lambda"] for r in runs} == {"0", "1"}
