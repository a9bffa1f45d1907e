"""Adversarial resume: every way a run dir can be damaged between a kill and `--resume`, without a model.

The real `Experiment._resume` runs against a run dir built on disk, with a stand-in trainer that records
what it was given. Two families: a damaged checkpoint dir (the resume must continue from the newest complete
checkpoint, moving broken ones aside, and never start over while one exists) and damaged logs (only the
unusable line goes; every valid row up to the checkpoint stays, byte for byte).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from esft.errors import EsftError
from esft.report.load import read_jsonl_tolerant
from esft.run.experiment import Experiment, config_fingerprint
from esft.storage.checkpoint import checkpoint_dirs, find_resumable, latest_checkpoint, save_checkpoint
from esft.storage.rundir import METRICS_FILE, RUN_INFO_FILE, read_jsonl, repair_jsonl, write_json_atomic

D = 8
CFG = {"seed": 0, "steps": 12}


class FakeTrainer:
    num_parameters = D

    def __init__(self) -> None:
        self.loaded: tuple[torch.Tensor, int] | None = None

    def load_state_dict(self, tensors: dict[str, torch.Tensor], stage: int) -> None:
        self.loaded = (tensors["master"].clone(), stage)


def _experiment(run: Path) -> Experiment:
    exp = Experiment(CFG, run)
    exp.trainer = FakeTrainer()
    return exp


def _run_dir(tmp_path: Path, steps: tuple[int, ...] = (10, 12), logged: int = 14) -> Path:
    """A run dir as a killed run leaves it: checkpoints at `steps`, log rows up to step `logged`."""
    run = tmp_path / "run"
    for step in steps:
        save_checkpoint(run / "checkpoints", step, {"master": torch.full((D,), float(step))}, {"stage": 0})
    write_json_atomic(run / RUN_INFO_FILE, {"config_fingerprint": config_fingerprint(CFG)})
    rows = "".join(json.dumps({"step": s, "stage": 0, "reward_mean": s / 10}) + "\n" for s in range(1, logged + 1))
    (run / METRICS_FILE).write_text(rows)
    return run


def _resume(run: Path, caplog) -> tuple[int, Experiment, list[str]]:
    caplog.clear()
    exp = _experiment(run)
    with caplog.at_level(logging.WARNING, logger="esft"):
        step = exp._resume()
    return step, exp, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _metric_steps(run: Path) -> list[int]:
    return [row["step"] for row in read_jsonl(run / METRICS_FILE)]


# -- damaged checkpoints: each damages step_0000012 (or the pointer); step_0000010 is complete -------------------

def _truncate(path: Path) -> None:
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _state(text: str | bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        target = path / "state.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
    return damage


def _flip_last_byte(path: Path) -> None:
    """Damage the last byte of tensor data: the file still parses and has every byte, only a value changed."""
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


def _weights(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    return lambda path: save_file(tensors, str(path / "weights.safetensors"))


CORRUPT_NEWEST: dict[str, Callable[[Path], None]] = {
    "truncated weights": _truncate,
    "empty weights file": lambda p: (p / "weights.safetensors").write_bytes(b""),
    "garbage weights": lambda p: (p / "weights.safetensors").write_bytes(b"\x00\xffnot a safetensors file" * 50),
    "header only weights": lambda p: (p / "weights.safetensors").write_bytes(
        (p / "weights.safetensors").read_bytes()[:8 + int.from_bytes((p / "weights.safetensors").read_bytes()[:8],
                                                                       "little")]),
    "missing weights": lambda p: (p / "weights.safetensors").unlink(),
    "missing state.json": lambda p: (p / "state.json").unlink(),
    "garbage state.json": _state("{\"step\": 12, \"sta"),
    "binary state.json": _state(b"\xff\xfe\x00junk"),
    "state.json not an object": _state("[12, 0]"),
    "state.json without step": _state('{"stage": 0}'),
    "state.json step is a string": _state('{"step": "12", "stage": 0}'),
    "state.json step of another dir": _state('{"step": 11, "stage": 0}'),
    "state.json negative stage": _state('{"step": 12, "stage": -1}'),
    "state.json step NaN": _state('{"step": NaN, "stage": 0}'),
    "missing master tensor": _weights({"anchor": torch.zeros(D)}),
    "master is a matrix": _weights({"master": torch.zeros(2, D // 2)}),
    "empty checkpoint dir": lambda p: [f.unlink() for f in list(p.iterdir())],
    "a flipped bit in the tensor data": _flip_last_byte,
    "state.json checksum of another file": _state('{"step": 12, "stage": 0, "weights_sha256": "' + "0" * 64 + '"}'),
    "state.json checksum not a string": _state('{"step": 12, "stage": 0, "weights_sha256": 12}'),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_NEWEST))
def test_corrupt_newest_checkpoint_falls_back_to_the_newest_complete_one(tmp_path, caplog, case):
    run = _run_dir(tmp_path)
    CORRUPT_NEWEST[case](run / "checkpoints" / "step_0000012")
    step, exp, warnings = _resume(run, caplog)
    assert step == 10
    assert torch.equal(exp.trainer.loaded[0], torch.full((D,), 10.0))
    assert _metric_steps(run) == list(range(1, 11))  # rows 11..14 follow the checkpoint: written again
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step_0000010"]
    moved = [p.name for p in (run / "checkpoints").glob("step_0000012.corrupt-*")]
    assert len(moved) == 1
    assert len(warnings) == 1 and "step_0000010" in warnings[0] and "step_0000012" in warnings[0]
    assert moved[0] in warnings[0]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000010"
    step, _, warnings = _resume(run, caplog)  # a second resume finds nothing left to repair
    assert step == 10 and warnings == []


POINTERS: dict[str, Callable[[Path], None]] = {
    "dangling latest": lambda root: (root / "latest").write_text("step_0000099\n"),
    "latest names a staging dir": lambda root: (root / "latest").write_text(".step_0000012.abc123\n"),
    "latest escapes the dir": lambda root: (root / "latest").write_text("../../etc/step_0000012\n"),
    "garbage latest": lambda root: (root / "latest").write_bytes(b"\xff\x00\x01garbage"),
    "empty latest": lambda root: (root / "latest").write_text(""),
    "latest is a directory": lambda root: ((root / "latest").unlink(), (root / "latest").mkdir()),
}


@pytest.mark.parametrize("case", sorted(POINTERS))
def test_a_bad_latest_pointer_is_ignored_and_rewritten(tmp_path, caplog, case):
    run = _run_dir(tmp_path)
    POINTERS[case](run / "checkpoints")
    step, _, warnings = _resume(run, caplog)
    assert step == 12 and _metric_steps(run) == list(range(1, 13))
    assert len(warnings) == 1 and "latest" in warnings[0] and "step_0000012" in warnings[0]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000012"


def test_deleted_latest_does_not_restart_from_scratch(tmp_path, caplog):
    """The issue's sequence: the pointer deleted by hand must not make the resume start over at step 0."""
    run = _run_dir(tmp_path)
    (run / "checkpoints" / "latest").unlink()
    step, _, warnings = _resume(run, caplog)
    assert step == 12 and _metric_steps(run) == list(range(1, 13)) and warnings == []


def test_checkpoint_newer_than_the_pointer_is_used(tmp_path, caplog):
    """Killed between renaming step_12 into place and rewriting `latest`: step_12 is complete, so use it."""
    run = _run_dir(tmp_path)
    (run / "checkpoints" / "latest").write_text("step_0000010\n")
    step, _, warnings = _resume(run, caplog)
    assert step == 12 and warnings == []
    assert latest_checkpoint(run / "checkpoints").name == "step_0000012"


def test_several_corrupt_checkpoints_fall_back_past_all_of_them(tmp_path, caplog):
    run = _run_dir(tmp_path, steps=(6, 9, 12))
    _truncate(run / "checkpoints" / "step_0000012")
    (run / "checkpoints" / "step_0000009" / "state.json").write_text("garbage")
    (run / "checkpoints" / "latest").write_text("nonsense")
    step, _, warnings = _resume(run, caplog)
    assert step == 6 and _metric_steps(run) == list(range(1, 7))
    assert len(warnings) == 1 and all(n in warnings[0] for n in ("step_0000006", "step_0000009", "step_0000012"))


def test_all_checkpoints_corrupt_starts_over_with_a_warning(tmp_path, caplog):
    run = _run_dir(tmp_path)
    for name in ("step_0000010", "step_0000012"):
        _truncate(run / "checkpoints" / name)
    step, exp, warnings = _resume(run, caplog)
    assert step == 0 and exp.trainer.loaded is None and _metric_steps(run) == []
    assert len(warnings) == 1 and "starts over from step 0" in warnings[0]
    assert checkpoint_dirs(run / "checkpoints") == [] and not (run / "checkpoints" / "latest").exists()
    assert len(list((run / "checkpoints").glob("*.corrupt-*"))) == 2


def test_orphaned_staging_dirs_are_removed_at_resume(tmp_path, caplog):
    run = _run_dir(tmp_path)
    root = run / "checkpoints"
    (root / ".step_0000014.x1y2z3").mkdir()
    (root / ".step_0000014.x1y2z3" / "weights.safetensors").write_bytes(b"half")
    (root / ".latest.abcd").write_text("step_0000014\n")
    step, _, warnings = _resume(run, caplog)
    assert step == 12 and warnings == []
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000010", "step_0000012"]


def test_a_checkpoint_of_another_model_is_refused_not_moved(tmp_path, caplog):
    run = _run_dir(tmp_path)
    save_checkpoint(run / "checkpoints", 14, {"master": torch.zeros(D + 1)}, {"stage": 0})
    with pytest.raises(EsftError, match="another model"):
        _resume(run, caplog)
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")][-1] == "step_0000014"


def test_followers_choose_the_same_checkpoint_without_touching_the_dir(tmp_path):
    root = _run_dir(tmp_path) / "checkpoints"
    _truncate(root / "step_0000012")
    (root / ".step_0000014.zz").mkdir()
    before = sorted(p.name for p in root.iterdir())
    found = find_resumable(root, D, repair=False, warn=lambda m: None)
    assert found is not None and found.step == 10
    assert sorted(p.name for p in root.iterdir()) == before


def test_pruning_never_counts_moved_aside_checkpoints(tmp_path, caplog):
    run = _run_dir(tmp_path)
    _truncate(run / "checkpoints" / "step_0000012")
    _resume(run, caplog)
    for step in (11, 12, 13):
        save_checkpoint(run / "checkpoints", step, {"master": torch.zeros(D)}, {"stage": 0}, keep=2)
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step_0000012", "step_0000013"]


# -- damaged logs: checkpoint at step 12; each case damages metrics.jsonl around valid rows 1..14 ----------------

def _rows(*steps: int) -> list[bytes]:
    return [json.dumps({"step": s, "stage": 0, "reward_mean": s / 10}).encode() for s in steps]


def _log_case(lines: list[bytes], tail_newline: bool = True) -> bytes:
    return b"\n".join(lines) + (b"\n" if tail_newline else b"")


VALID = _rows(*range(1, 15))
CORRUPT_LOGS: dict[str, tuple[bytes, list[int], int]] = {  # file -> (steps kept, warnings)
    "torn last line": (_log_case(VALID[:12] + [VALID[12][:9]], tail_newline=False), list(range(1, 13)), 1),
    "torn last line before the checkpoint": (_log_case(VALID[:11] + [VALID[11][:5]], False), list(range(1, 12)), 1),
    "complete last row without newline": (_log_case(VALID[:12], tail_newline=False), list(range(1, 13)), 0),
    "garbage middle line": (_log_case(VALID[:4] + [b"{garbage"] + VALID[4:]), list(range(1, 13)), 1),
    "middle row cut short": (_log_case(VALID[:4] + [VALID[4][:10]] + VALID[5:]), [1, 2, 3, 4] + list(range(6, 13)), 1),
    "two rows glued together": (_log_case(VALID[:4] + [VALID[4] + VALID[5]] + VALID[6:]),
                                [1, 2, 3, 4] + list(range(7, 13)), 1),
    "empty and blank lines": (_log_case(VALID[:3] + [b"", b"   ", b"\t"] + VALID[3:]), list(range(1, 13)), 0),
    "binary junk line": (_log_case(VALID[:6] + [b"\x00\xff\xfe\x80junk\x00"] + VALID[6:]), list(range(1, 13)), 1),
    "NUL-filled tail (a crash on some filesystems)": (_log_case(VALID[:13]) + b"\x00" * 64, list(range(1, 13)), 1),
    "not an object": (_log_case(VALID[:2] + [b"[1, 2]", b"7", b'"text"', b"null"] + VALID[2:]),
                      list(range(1, 13)), 4),
    "NaN and infinite values": (_log_case(VALID[:5] + [b'{"step": 6, "stage": 0, "reward_mean": NaN, "x": 1e999}']
                                          + VALID[6:]), list(range(1, 13)), 0),
    "infinite step": (_log_case(VALID[:5] + [b'{"step": 1e999, "stage": 0}'] + VALID[5:]), list(range(1, 13)), 1),
    "step null, missing or text": (_log_case(VALID[:5] + [b'{"step": null}', b'{"stage": 0}', b'{"step": "6"}']
                                             + VALID[5:]), list(range(1, 13)), 3),
    "negative or fractional step": (_log_case(VALID[:5] + [b'{"step": -1}', b'{"step": 2.5}'] + VALID[5:]),
                                    list(range(1, 13)), 2),
    "deeply nested line": (_log_case(VALID[:5] + [b"[" * 100_000] + VALID[5:]), list(range(1, 13)), 1),
    "CRLF line endings": (b"".join(r + b"\r\n" for r in VALID), list(range(1, 13)), 0),
    "many junk lines": (_log_case(VALID[:12] + [b"junk"] * 500), list(range(1, 13)), 6),
    "empty file": (b"", [], 0),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_LOGS))
def test_log_repair_keeps_every_valid_row(tmp_path, caplog, case):
    content, kept, warning_count = CORRUPT_LOGS[case]
    run = _run_dir(tmp_path)
    (run / METRICS_FILE).write_bytes(content)
    step, _, warnings = _resume(run, caplog)
    assert step == 12
    assert _metric_steps(run) == kept
    assert len(warnings) == warning_count, warnings
    assert all(str(run / METRICS_FILE) in w for w in warnings)
    valid_lines = {line.rstrip(b"\r") for line in content.split(b"\n")}
    for line in (run / METRICS_FILE).read_bytes().splitlines():  # kept rows are the original bytes
        assert line.rstrip(b"\r") in valid_lines


def test_a_warning_names_the_file_and_the_line(tmp_path, caplog):
    run = _run_dir(tmp_path)
    (run / METRICS_FILE).write_bytes(_log_case(VALID[:4] + [b"{garbage"] + VALID[4:]))
    _, _, warnings = _resume(run, caplog)
    assert warnings == [f"{run / METRICS_FILE}: line 5 is not a JSON object; skipped that line, kept the rest"]


def test_an_intact_log_is_not_rewritten(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_log_case(VALID[:5]))
    inode = path.stat().st_ino
    assert repair_jsonl(path, keep=lambda row: True) == 5
    assert path.stat().st_ino == inode


def test_the_drift_report_reader_skips_only_the_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_log_case(VALID[:4] + [b"{garbage", b"\x00\xff"] + VALID[4:]))
    rows, warnings = read_jsonl_tolerant(path)
    assert [r["step"] for r in rows] == list(range(1, 15)) and len(warnings) == 2
