"""Fixtures of the tracker tests: no network, and one tiny run logged to every tracker at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tracking_helpers import ALL_TRACKERS, KL, run_tiny


@pytest.fixture(autouse=True)
def _no_tracker_network(monkeypatch):
    """No test may reach a server: W&B offline and quiet, MLflow to its local default store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the tests read the local store with MLflow's client


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory) -> Path:
    """One finished tiny run logged to TensorBoard, W&B and MLflow at once, with the off-task KL enabled."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_tiny(run_dir, ALL_TRACKERS, *KL)
    return run_dir
