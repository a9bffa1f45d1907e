"""The fan-out: tracker selection, the missing-extra error, a tracker failing mid-run, resume without repeats."""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter

import pytest
from omegaconf import OmegaConf
from tracking_helpers import MemoryTracker, expected_points, run_tiny, tiny_config

import esft.run.experiment
import esft.tracking.fanout as fanout
from esft.errors import EsftError
from esft.resources import conf_dir
from esft.run.experiment import Experiment
from esft.storage.rundir import METRICS_FILE, RunDir
from esft.tracking import registry
from esft.tracking.context import JobInfo, job_from_hydra, sweep_name
from esft.tracking.registry import TrackerSpec, check_trackers, selected_trackers

TIMING = {"train/seconds", "train/wall_time", "train/peak_rss_mb"}  # differ between a run and its re-run


@pytest.mark.parametrize("overrides, names", [
    ([], []),
    (["logger=tensorboard"], ["tensorboard"]),
    (["logger=[tensorboard,wandb]"], ["tensorboard", "wandb"]),
    (["logger.extra=[mlflow,wandb]"], ["mlflow", "wandb"]),
    (["logger=mlflow", "logger.extra=[tensorboard,jsonl]"], ["tensorboard", "mlflow"]),
])
def test_logger_selection(overrides, names):
    assert selected_trackers(tiny_config(*overrides)) == names


def test_unknown_tracker_is_one_line():
    with pytest.raises(EsftError, match=r"^unknown logger 'comet' in logger.extra; available: jsonl"):
        selected_trackers({"logger": {"extra": ["comet"]}})


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_missing_extra_names_the_extra(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if the package were not installed
    with pytest.raises(EsftError) as info:
        check_trackers({"logger": {"extra": [name]}})
    assert str(info.value) == f"logger {name} needs the {name} package: pip install 'esft[{name}]'"


def test_missing_extra_is_refused_before_the_run_starts(monkeypatch, tmp_path):
    from esft.commands.preflight import check_train_args

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(EsftError, match=r"pip install 'esft\[wandb\]'"):
        check_train_args(["logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"], conf_dir())
    assert not (tmp_path / "run").exists()


class FlakyTracker(MemoryTracker):
    """Fails like a full disk or a vanished server at its third scalar write."""

    name = "flaky"

    def __init__(self, *args) -> None:
        super().__init__()
        self.writes = 0

    def _write(self, scalars, step: int) -> None:
        self.writes += 1
        if self.writes == 3:
            raise OSError(28, "No space left on device")
        super()._write(scalars, step)


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(registry.TRACKERS, "flaky", TrackerSpec("flaky", "FlakyTracker", "json", "flaky"))
    real = fanout.tracker_class
    monkeypatch.setattr(fanout, "tracker_class", lambda name: FlakyTracker if name == "flaky" else real(name))
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="esft"):
        run_tiny(run_dir, "logger.extra=[flaky,tensorboard]")
    assert RunDir(run_dir).status()["state"] == "done"
    warnings = [r.getMessage() for r in caplog.records if "tracker flaky failed" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "JSONL" in warnings[0]
    assert [r["step"] for r in RunDir(run_dir).rows(METRICS_FILE)] == list(range(1, 9))
    from esft.tracking.tensorboard import read_scalars

    assert read_scalars(run_dir / "tensorboard").keys() == expected_points(run_dir).keys()  # the others go on


def test_fanout_keeps_the_record_when_a_tracker_fails():
    record, broken = MemoryTracker(), MemoryTracker()
    broken._write = lambda scalars, step: (_ for _ in ()).throw(ConnectionError("server gone"))
    out = fanout.MetricFanOut(record, [broken])
    out.log_metrics({"step": 1, "stage": 0, "task": "add", "reward_mean": 0.5})
    out.log_metrics({"step": 2, "stage": 0, "task": "add", "reward_mean": 0.7})
    assert out.trackers == [] and record.points["train/reward_mean"] == {1: 0.5, 2: 0.7}


def test_stage_boundary_evaluation_is_sent_once_with_live_drift():
    tracker = MemoryTracker()
    rows = lambda step, stage, event, accuracy: [  # noqa: E731
        {"step": step, "stage": stage, "stage_task": ["add", "reverse"][stage], "event": event, "task": "add",
         "role": "curriculum", "accuracy": accuracy, "reward": accuracy, "n": 8}]
    tracker.log_evals(rows(4, 0, "stage_end", 0.5))
    tracker.log_evals(rows(4, 1, "stage_start", 0.5))  # the same weights, scored again at the same step
    tracker.log_evals(rows(6, 1, "periodic", 0.25))
    assert tracker.points["eval/curriculum/add/accuracy"] == {4: 0.5, 6: 0.25}
    assert tracker.points["drift/add"] == {4: 0.0, 6: 0.25}  # accuracy lost since the stage started


def _fail_at_step(step: int):
    def fault(name: str, at: int) -> None:
        if name == "step_done" and at == step:
            raise RuntimeError(f"injected failure at step {step}")
    return fault


def test_resume_continues_the_same_tracker_runs_without_repeats(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    trackers = "logger.extra=[tensorboard,wandb,mlflow]"
    monkeypatch.setattr(esft.run.experiment, "fault_point", _fail_at_step(6))
    with pytest.raises(RuntimeError, match="injected failure"):
        run_tiny(run_dir, trackers)
    first = json.loads((run_dir / "trackers.json").read_text())
    assert RunDir(run_dir).status()["state"] == "failed"
    monkeypatch.setattr(esft.run.experiment, "fault_point", lambda name, step: None)
    Experiment(tiny_config(trackers), run_dir).run_all()  # resumes from the step-4 checkpoint
    assert RunDir(run_dir).status()["state"] == "done"
    assert json.loads((run_dir / "trackers.json").read_text()) == first  # same tracker runs, same ids

    want = expected_points(run_dir)
    from esft.tracking.tensorboard import read_scalar_steps, read_scalars

    assert max(Counter(read_scalar_steps(run_dir / "tensorboard")).values()) == 1
    _assert_same(read_scalars(run_dir / "tensorboard"), want, rel=1e-6)

    from esft.tracking.wandb_records import history_rows, run_files

    sessions = run_files(run_dir / "wandb", first["wandb"]["id"])
    assert len(sessions) == 2  # the resumed session of the same W&B run (`wandb sync` merges them)
    logged: dict[str, list[tuple[int, float]]] = {}
    for path in sessions:
        for row in history_rows(path):
            for key, value in row.items():
                if not key.startswith("_"):
                    logged.setdefault(key, []).append((row["_step"], value))
    _assert_same(logged, want, rel=1e-12)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=first["mlflow"]["tracking_uri"])
    run_id = first["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    mlflow_points = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in want}
    _assert_same(mlflow_points, want, rel=1e-12)


def _assert_same(got: dict[str, list[tuple[int, float]]], want: dict[str, dict[int, float]], rel: float) -> None:
    """Every (tag, step) exactly once, with the JSONL value (timings may differ: the re-run step's timing
    was measured again, the tracker keeps the first)."""
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [step for step, _ in got[tag]]
        assert sorted(steps) == sorted(points) and len(set(steps)) == len(steps), tag
        if tag not in TIMING:
            for step, value in got[tag]:
                assert value == pytest.approx(points[step], rel=rel, abs=rel), (tag, step)


def test_sweep_job_names_group_and_run():
    from hydra.types import RunMode

    hydra_cfg = OmegaConf.create({
        "mode": RunMode.MULTIRUN, "runtime": {"output_dir": "outputs/multirun/2026-01-02/03-04-05/1_x"},
        "sweep": {"dir": "outputs/multirun/2026-01-02/03-04-05"},
        "job": {"override_dirname": "awd.lambda=0,es.population_size=64,steps=5"},
        "overrides": {"task": ["awd.lambda=0", "steps=5", "es.population_size=64"]}})
    argv = ["-m", "awd.lambda=0,1", "steps=5", "es.population_size=16,64"]
    job = job_from_hydra(hydra_cfg, argv)
    assert (job.group, job.name) == ("2026-01-02/03-04-05", "awd.lambda=0,es.population_size=64")  # swept keys
    assert job_from_hydra(hydra_cfg, ["-m"]).name == "awd.lambda=0,es.population_size=64,steps=5"  # no sweep seen
    assert str(job.sweep_dir) == "outputs/multirun/2026-01-02/03-04-05"
    hydra_cfg.mode, hydra_cfg.job.override_dirname = RunMode.RUN, ""
    single = job_from_hydra(hydra_cfg)
    assert single.group is None and single.name == "1_x" and single.sweep_dir is None
    assert sweep_name(tmp := JobInfo.standalone("sweeps/lambda").run_dir) == "sweeps/lambda" and tmp.name == "lambda"


def test_trackers_can_change_when_resuming():
    """The logger group does not change what a run computes: `esft train --resume DIR logger=wandb` is allowed."""
    from esft.run.experiment import config_fingerprint

    assert config_fingerprint(tiny_config()) == config_fingerprint(tiny_config("logger=[tensorboard,mlflow]"))
    assert config_fingerprint(tiny_config()) != config_fingerprint(tiny_config("awd.lambda=0"))
