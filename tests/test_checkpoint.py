"""Checkpoints are atomic: a failed or killed write leaves the previous checkpoint and `latest` intact."""

from __future__ import annotations

import errno

import pytest
import torch

import esft.storage.checkpoint as checkpoint
from esft.errors import EsftError
from esft.storage.checkpoint import (
    CorruptCheckpoint,
    file_sha256,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def test_round_trip_and_pruning(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"master": torch.full((4,), float(step))}, {"stage": 0}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000002", "step_0000003"]
    tensors, state = load_checkpoint(latest_checkpoint(tmp_path))
    digest = file_sha256(latest_checkpoint(tmp_path) / "weights.safetensors")
    assert state == {"stage": 0, "step": 3, "weights_sha256": digest}
    assert torch.equal(tensors["master"], torch.full((4,), 3.0))


def test_disk_full_during_a_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"master": torch.ones(4)}, {"stage": 0})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"master": torch.zeros(4)}, {"stage": 0})
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging cleaned up
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))[0]["master"], torch.ones(4))


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"master": torch.ones(1000)}, {"stage": 0})
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptCheckpoint, match=r"corrupt checkpoint .*step_0000001: weights.safetensors: ") as info:
        load_checkpoint(path)
    assert isinstance(info.value, EsftError) and "\n" not in str(info.value)


def test_dangling_latest_pointer_falls_back_to_the_newest_step_dir(tmp_path):
    save_checkpoint(tmp_path, 1, {"master": torch.ones(2)}, {"stage": 0})
    (tmp_path / "latest").write_text("step_0000009\n")
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_disk_full_raised_by_safetensors_itself_is_recognised(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as its own SafetensorError (not an OSError); the save still cleans up and
    the run's handler still recognises a full disk from it."""
    from safetensors import SafetensorError

    from esft.storage.faults import write_failure

    save_checkpoint(tmp_path, 1, {"master": torch.ones(4)}, {"stage": 0})
    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(SafetensorError) as info:
        save_checkpoint(tmp_path, 2, {"master": torch.zeros(4)}, {"stage": 0})
    assert write_failure(info.value) == ("disk_full", None)
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_checkpoint_saved_before_checksums_were_recorded_still_loads(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"master": torch.ones(4)}, {"stage": 0})
    (path / "state.json").write_text('{"stage": 0, "step": 1}')  # what a save wrote before 2026-12-02
    assert torch.equal(load_checkpoint(path)[0]["master"], torch.ones(4))
