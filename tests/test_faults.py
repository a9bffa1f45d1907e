"""A full disk or an unwritable run dir ends a run with one line and a status that says so, whatever library
raised it; an unrelated error keeps its traceback. Also the run-dir lock of Experiment.run_all."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from esft.errors import EsftError
from esft.run.experiment import Experiment
from esft.storage.checkpoint import save_checkpoint
from esft.storage.faults import fault_point, write_failure

SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_ENOSPC = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file: "
                "No space left on device")


@pytest.mark.parametrize(("exc", "want"), [
    (OSError(errno.ENOSPC, "No space left on device", "/run/metrics.jsonl"), ("disk_full", "/run/metrics.jsonl")),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), ("disk_full", None)),
    (SafetensorError(SAFETENSORS_ENOSPC), ("disk_full", None)),
    (RuntimeError(TORCH_ENOSPC), ("disk_full", None)),
    (OSError(errno.EROFS, "Read-only file system", "/run/status.json"), ("not_writable", "/run/status.json")),
    (PermissionError(errno.EACCES, "Permission denied"), ("not_writable", None)),
    (SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)"),
     ("not_writable", None)),
    (ValueError("step 28 is bad"), None),
    (RuntimeError("os error 280 is not a thing"), None),
    (OSError(errno.EIO, "Input/output error"), None),
    (FileNotFoundError(errno.ENOENT, "No such file"), None),
])
def test_write_failure_recognises_the_fault_not_the_type(exc, want):
    assert write_failure(exc) == want


def test_write_failure_follows_the_cause_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert write_failure(outer) == ("disk_full", None)


def test_fault_point_raises_the_injected_error(monkeypatch):
    monkeypatch.setenv("ESFT_FAULT", "checkpoint@3:enospc")
    fault_point("checkpoint", 2)
    fault_point("step_done", 3)
    with pytest.raises(SafetensorError, match="No space left on device"):
        fault_point("checkpoint", 3)
    monkeypatch.setenv("ESFT_FAULT", "checkpoint@3:erofs")
    with pytest.raises(OSError) as info:
        fault_point("checkpoint", 3)
    assert info.value.errno == errno.EROFS
    monkeypatch.setenv("ESFT_FAULT", "checkpoint@3:bogus")
    with pytest.raises(ValueError, match="unknown fault kind"):
        fault_point("checkpoint", 3)


def test_fault_point_kill_is_a_real_sigkill(tmp_path):
    code = "from esft.storage.faults import fault_point; fault_point('step_done', 1); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], env={"ESFT_FAULT": "step_done@1", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9 and "survived" not in done.stdout


class Scripted(Experiment):
    """An Experiment whose stages are replaced by one action, to drive run_all's fault handling directly."""

    def __init__(self, run_dir: Path, action) -> None:
        super().__init__({"seed": 0}, run_dir)
        self.action = action

    def setup(self) -> None:
        save_checkpoint(self.run.checkpoints, 3, {"master": torch.ones(2)}, {"stage": 0})

    def train(self) -> None:
        self.action(self)

    def finish(self) -> None:
        self.run.set_status("done", message="")


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _raise(exc: BaseException):
    def action(_):
        raise exc
    return action


def test_disk_full_from_safetensors_ends_with_the_documented_line(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(EsftError) as info:
        Scripted(run, _raise(SafetensorError(SAFETENSORS_ENOSPC))).run_all()
    message = str(info.value)
    assert message.startswith("disk full while writing the run dir; the last complete checkpoint is step_0000003")
    assert message.endswith(f"free space, then `esft train --resume {run}`") and "\n" not in message
    assert _status(run)["state"] == "failed" and _status(run)["message"] == message


def test_read_only_run_dir_ends_with_one_line_and_a_failed_status(tmp_path):
    run = tmp_path / "run"
    error = OSError(errno.EROFS, "Read-only file system", str(run / "checkpoints" / ".step_0000004.x"))
    with pytest.raises(EsftError, match=r"^cannot write .*step_0000004.x \(Read-only file system\); the last "
                                        r"complete checkpoint is step_0000003; make the run dir writable"):
        Scripted(run, _raise(error)).run_all()
    assert _status(run)["state"] == "failed" and "Read-only" in _status(run)["message"]


def test_when_status_cannot_be_written_the_line_says_so(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def lose_the_disk(exp):
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(run / "status.json"))
        monkeypatch.setattr(exp.run, "set_status", refuse)
        raise OSError(errno.EROFS, "Read-only file system", str(run / "metrics.jsonl"))

    with pytest.raises(EsftError, match=r"make the run dir writable.*\(status.json could not be updated either\)$"):
        Scripted(run, lose_the_disk).run_all()
    assert _status(run)["state"] == "running"  # the last status that could be written


def test_an_unrelated_error_keeps_its_traceback_and_marks_failed(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        Scripted(run, _raise(ZeroDivisionError("bug"))).run_all()
    assert _status(run) == {**_status(run), "state": "failed", "message": "ZeroDivisionError: bug"}


def test_a_second_run_on_a_locked_run_dir_refuses_without_touching_it(tmp_path):
    run = tmp_path / "run"
    seen: list[str] = []

    def start_a_second_one(exp):
        before = (run / "status.json").read_bytes()
        with pytest.raises(EsftError, match=r"is in use by pid \d+ .*another `esft train` on the same dir"):
            Scripted(run, lambda _: None).run_all()
        assert (run / "status.json").read_bytes() == before
        seen.append("refused")

    Scripted(run, start_a_second_one).run_all()
    assert seen == ["refused"] and _status(run)["state"] == "done"
    Scripted(run, lambda _: None).run_all()  # released at the end: the next run may take it


def test_an_unwritable_file_outside_the_run_dir_is_named_as_such(tmp_path):
    error = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "hf-cache" / "model.lock"))
    with pytest.raises(EsftError, match=r"cannot write .*model.lock \(Permission denied\); .*make it writable"):
        Scripted(tmp_path / "run", _raise(error)).run_all()


def test_fault_hold_pauses_while_the_gate_file_exists(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("ESFT_FAULT", "step_done@2:hold")
    monkeypatch.setenv("ESFT_FAULT_HOLD", str(gate))
    fault_point("step_done", 2)  # no gate file: passes straight through
    assert (tmp_path / "gate.reached").exists()
    monkeypatch.delenv("ESFT_FAULT_HOLD")
    with pytest.raises(ValueError, match="needs ESFT_FAULT_HOLD"):
        fault_point("step_done", 2)
