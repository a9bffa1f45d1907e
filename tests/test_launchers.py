"""Many jobs through Hydra launchers: a failed job is recorded and its siblings still run; the submitit
launcher (its `submitit_local` flavour, the SLURM one's local twin) runs a sweep, and re-launching the same
sweep dir (what a requeued SLURM array does) finds the finished jobs and leaves them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAST = ["model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64", "prior.steps=2", "steps=2",
        "eval.every=2", "eval.size=32", "es.population_size=4", "es.prompts_per_step=16", "checkpoint.every=2"]


def _sweep(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ESFT_CACHE": str(tmp_path.parent / "esft-cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "esft", "train", "-m", *FAST, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _states(sweep: Path) -> dict[str, str]:
    """Job number -> status.json state, for every job dir of a sweep."""
    return {p.name.split("_")[0]: json.loads((p / "status.json").read_text())["state"]
            for p in sweep.iterdir() if (p / "status.json").exists()}


_CRASHING_TASK = """
from esft.tasks.arithmetic import Add


class Crashy(Add):
    def __init__(self, crash: bool = False, **options):
        super().__init__(**options)
        self.crash = crash

    def eval_examples(self):
        if self.crash:
            raise ValueError("a bug inside one job")
        return super().eval_examples()
"""


@pytest.mark.slow
def test_a_crashing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A user task (`_target_`, importable from the working directory) that raises a plain ValueError inside
    job 0 only: every value passes the pre-check (esft/run/settings.py refuses every bad value up front)."""
    (tmp_path / "crashy.py").write_text(_CRASHING_TASK)
    sweep = tmp_path / "sweep"
    result = _sweep(["prior=none", "task=add", "+task._target_=crashy.Crashy", "+task.crash=true,false",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep finished, and says a job failed
    assert "1 sweep job(s) failed" in result.stderr
    assert _states(sweep) == {"0": "failed", "1": "done"}
    failed = next(sweep.glob("0_*"))
    assert "ValueError" in json.loads((failed / "status.json").read_text())["message"]
    assert "ValueError" in result.stderr


@pytest.mark.slow
def test_submitit_local_sweep_and_relaunch(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = ["seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"]
    first = _sweep(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _states(sweep) == {"0": "done", "1": "done"}
    assert (sweep / "multirun.yaml").exists()
    metrics = {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")}
    again = _sweep(args, tmp_path)  # a requeued array task re-runs the same job in the same dir
    assert again.returncode == 0, again.stderr[-3000:]
    assert _states(sweep) == {"0": "done", "1": "done"}
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.jsonl")} == metrics, "finished jobs must be kept"
