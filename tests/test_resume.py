"""Crash safety: kill -9 at several points, resume, and get bit-identical weights and identical log rows."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from esft.storage.rundir import read_jsonl

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


def _resume(run: Path, tmp_path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esft", "train", "--resume", str(run)], cwd=tmp_path,
                          env=_env(tmp_path, fault), capture_output=True, text=True, timeout=600)


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
@pytest.mark.parametrize("fault", ["step_done@1", "step_done@2", "step_done@5", "checkpoint@3", "checkpoint@4",
                                   "checkpoint@8"])
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


@pytest.mark.slow
def test_killed_again_while_resuming_then_resumed(reference, tmp_path):
    """kill -9 during the resume's own log repair (first log repaired, the others not): resuming again is exact."""
    run = tmp_path / "run"
    assert _train(run, tmp_path, "step_done@6").returncode == -signal.SIGKILL
    assert _resume(run, tmp_path, "resume_repair@4").returncode == -signal.SIGKILL
    resumed = _resume(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(run, reference)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_and_damaged_logs_still_resume_exactly(reference, tmp_path):
    """After a kill: the newest checkpoint truncated, a garbage line amid the metrics, the last evals row torn
    and the replay log's last row without its newline. The resume falls back one checkpoint, keeps every
    valid row and ends bit-identical to the uninterrupted run."""
    run = tmp_path / "run"
    assert _train(run, tmp_path, "step_done@8").returncode == -signal.SIGKILL
    newest = run / "checkpoints" / "step_0000006"
    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    metrics = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(metrics[:2] + [b"\x00{garbage\n"] + metrics[2:]))
    with open(run / "evals.jsonl", "ab") as handle:
        handle.write(b'{"step": 8, "stage": 1, "acc')
    replay = run / "es_updates.jsonl"
    replay.write_bytes(replay.read_bytes().rstrip(b"\n"))
    (run / "checkpoints" / "latest").write_text("step_0000099\n")
    resumed = _resume(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    said = resumed.stderr + resumed.stdout
    assert "resuming from step_0000004" in said and "step_0000006 is corrupt" in said
    assert "metrics.jsonl: line 3 is not a JSON object" in said
    assert len(list((run / "checkpoints").glob("step_0000006.corrupt-*"))) == 1
    _assert_same_run(run, reference)


def _one_line_failure(result: subprocess.CompletedProcess, start: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("esft: error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"esft: error: {start}"), result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "start", "fix"), [
    ("checkpoint@6:enospc", "disk full while writing", "free space, then `esft train --resume"),
    ("checkpoint@3:erofs", "cannot write", "make the run dir writable, then `esft train --resume"),
])
def test_full_or_read_only_disk_ends_with_one_line_then_resumes(reference, tmp_path, fault, start, fix):
    run = tmp_path / "run"
    line = _one_line_failure(_train(run, tmp_path, fault), start)
    assert fix in line
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["message"] == line.removeprefix("esft: error: ")
    resumed = _resume(run, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(run, reference)


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` and mount rights for a small tmpfs")
def test_a_really_full_disk_during_a_checkpoint_save(reference, tmp_path):
    """No injection: the run dir is a 3 MB tmpfs, so the second checkpoint (2 x ~2.2 MB) meets ENOSPC inside
    safetensors, which raises its own SafetensorError. Then the tmpfs is grown and the run resumed."""
    mount, kept = tmp_path / "mnt", tmp_path / "copy"
    mount.mkdir()
    esft = f"{shlex.quote(sys.executable)} -m esft train"
    script = (f"mount -t tmpfs -o size=3m tmpfs {mount} && "
              f"{esft} {' '.join(FAST)} hydra.run.dir={mount}/run 2> {tmp_path}/first.err; "
              f"echo $? > {tmp_path}/first.rc; cp -a {mount}/run {tmp_path}/failed; "
              f"mount -o remount,size=64m {mount} && {esft} --resume {mount}/run 2> {tmp_path}/second.err; "
              f"echo $? > {tmp_path}/second.rc; cp -a {mount}/run {kept}")
    subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=_env(tmp_path), timeout=1200)
    first = subprocess.CompletedProcess([], int((tmp_path / "first.rc").read_text()), "",
                                        (tmp_path / "first.err").read_text())
    line = _one_line_failure(first, "disk full while writing")
    assert "free space, then `esft train --resume" in line
    assert json.loads((tmp_path / "failed" / "status.json").read_text())["state"] == "failed"
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-2000:]
    _assert_same_run(kept, reference)


@pytest.mark.slow
def test_a_second_train_on_a_running_run_dir_refuses(reference, tmp_path):
    """The first run is held alive at step 2 (ESFT_FAULT=...:hold) while a second `esft train` targets its dir:
    the second exits 2 with one line before touching anything, and the first ends exactly as if alone."""
    run, gate = tmp_path / "run", tmp_path / "hold"
    gate.touch()
    env = {**_env(tmp_path, "step_done@2:hold"), "ESFT_FAULT_HOLD": str(gate)}
    first = subprocess.Popen([sys.executable, "-m", "esft", "train", *FAST, f"hydra.run.dir={run}"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "hold.reached").exists() and first.poll() is None:
            time.sleep(0.05)
        assert (tmp_path / "hold.reached").exists(), "the first run never reached step 2"
        config, metrics = (run / ".hydra" / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
        second = _resume(run, tmp_path)
        line = _one_line_failure(second, f"run dir {run} is in use by pid {first.pid}")
        assert "choose another hydra.run.dir" in line
        assert (run / ".hydra" / "config.yaml").read_bytes() == config
        assert (run / "metrics.jsonl").read_bytes() == metrics
    finally:
        gate.unlink()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    _assert_same_run(run, reference)
