"""MLflow: a local file store under the run dir (the sweep dir for a multirun) unless a tracking URI is set.

Tracking URI: `logger.mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else `file:<dir>/mlruns`, where
<dir> is the sweep dir in a multirun (one store, one experiment per sweep: the runs sit side by side in
`mlflow ui --backend-store-uri <dir>/mlruns`) and the run dir otherwise. MLflow 3 keeps the file store in
maintenance mode behind `MLFLOW_ALLOW_FILE_STORE`; esft sets it only for its own local default, never for a
URI the user chose. The client API is used directly (no global active run), so parallel launcher jobs and
tests cannot mix runs up. Run id, store and experiment are saved in trackers.json; a resumed run logs into
the same run and reads the steps it already holds from the store's metric history.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from esft.tracking.context import JobInfo, TrackerState
from esft.tracking.params import flat_params
from esft.tracking.scalar import ScalarTracker

_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
_PARAM_VALUE_MAX = 6000
_END_STATES = {"done": "FINISHED", "failed": "FAILED"}


def default_tracking_uri(job: JobInfo) -> str:
    return (job.sweep_dir or job.run_dir).resolve().joinpath("mlruns").as_uri()


class MlflowTracker(ScalarTracker):
    name = "mlflow"

    def __init__(self, settings: Mapping[str, Any], job: JobInfo, state: TrackerState) -> None:
        super().__init__()
        saved = state.get(self.name)
        self._state = state
        self.run_id = saved.get("run_id")
        self.tracking_uri = saved.get("tracking_uri") or settings.get("tracking_uri") or os.environ.get(
            "MLFLOW_TRACKING_URI") or default_tracking_uri(job)
        self.local_default = self.tracking_uri == default_tracking_uri(job)
        self.experiment = saved.get("experiment") or settings.get("experiment") or job.group or "esft"
        self.run_name = saved.get("name") or job.name

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient

        if self.local_default:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else _create_experiment(self.client, self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
            self._state.put(self.name, {"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                                        "experiment": self.experiment, "name": self.run_name})
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _held_marks(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in keys}

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, float(value), now, step) for tag, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's limit of metrics per log_batch call
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000], synchronous=True)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Params are immutable in MLflow: a resumed run only adds the keys the run does not have yet (the
        keys that may differ on a resume, like checkpoint cadence, keep their first value)."""
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:_PARAM_VALUE_MAX]) for k, v in flat_params(config).items() if k not in held]
        for start in range(0, len(params), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + _PARAM_BATCH], synchronous=True)

    def flush(self) -> None:
        pass  # log_batch(synchronous=True) has written the store

    def close(self, status: str) -> None:
        self.client.set_tag(self.run_id, "esft.status", status)
        self.client.set_terminated(self.run_id, status=_END_STATES.get(status, "KILLED"))


def _create_experiment(client: Any, name: str) -> str:
    """Create the experiment; a parallel sweep job may have created it a moment ago."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
