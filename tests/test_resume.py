"""Crash safety: kill -9 at several points, resume, and get bit-identical weights and identical log rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from esft.rundir import read_jsonl

FAST = ["model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64", "prior.steps=4", "steps=4",
        "eval.every=2", "eval.size=64", "es.population_size=4", "es.prompts_per_step=32", "checkpoint.every=3",
        "es.sigma=0.05", "es.alpha=0.05"]
TIMING = {"seconds", "wall_time", "peak_rss_mb"}


def _env(tmp_path: Path, fault: str | None = None) -> dict:
    env = {**os.environ, "ESFT_CACHE": str(tmp_path.parent / "esft-cache")}
    env.pop("ESFT_FAULT", None)
    if fault:
        env["ESFT_FAULT"] = fault
    return env


def _train(run: Path, tmp_path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esft", "train", *FAST, f"hydra.run.dir={run}"], cwd=tmp_path,
                          env=_env(tmp_path, fault), capture_output=True, text=True, timeout=600)


def _resume(run: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esft", "train", "--resume", str(run)], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)


def _logged_steps(run: Path) -> int:
    return len(read_jsonl(run / "metrics.jsonl")) if (run / "metrics.jsonl").exists() else 0


def _rows(run: Path, name: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_jsonl(run / name)]


def _final(run: Path):
    return load_file(str(run / "final_model" / "model.safetensors"))


def _assert_same_run(run: Path, reference: Path) -> None:
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    for name in ("metrics.jsonl", "evals.jsonl", "es_updates.jsonl", "diagnostics.jsonl"):
        assert _rows(run, name) == _rows(reference, name), name
    got, want = _final(run), _final(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert (got[key] == want[key]).all(), f"{key} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("reference")
    result = _train(tmp_path / "run", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["step_done@2", "step_done@5", "checkpoint@3", "checkpoint@4"])
def test_kill_and_resume_is_bit_identical(reference, tmp_path, fault):
    run = tmp_path / "run"
    killed = _train(run, tmp_path, fault)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run / "status.json").read_text())["state"] == "running"
    resumed = _resume(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_external_sigkill_then_resume(reference, tmp_path):
    """A real kill -9 from outside at whatever moment the run is in, after it has logged two steps."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "esft", "train", *FAST, f"hydra.run.dir={run}"],
                               cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and _logged_steps(run) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _resume(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_finished_run_is_not_rerun(reference, tmp_path):
    before = (reference / "metrics.jsonl").read_text()
    again = _resume(reference, tmp_path)
    assert again.returncode == 0 and "already done" in again.stderr + again.stdout
    assert (reference / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_replay_command_rebuilds_checkpoints_and_final_weights(reference, tmp_path):
    out = tmp_path / "replayed"
    done = subprocess.run([sys.executable, "-m", "esft", "replay", str(reference), "--step", "8", "--out", str(out)],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bit-identical to step_0000008" in done.stdout
    got, want = load_file(str(out / "model.safetensors")), _final(reference)
    assert all((got[k] == want[k]).all() for k in want)
    bad = subprocess.run([sys.executable, "-m", "esft", "replay", str(reference), "--step", "99", "--out", str(out)],
                         cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "not in the replay log" in bad.stderr
