"""Bad input and bad luck mid-run: one clear EsftError, status.json says failed, nothing written is lost."""

from __future__ import annotations

import errno
import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import esft.run.experiment as experiment_module
from esft.errors import EsftError
from esft.resources import conf_dir
from esft.run.experiment import Experiment
from esft.storage.checkpoint import latest_checkpoint

FAST = ["model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64", "prior.steps=2", "steps=3",
        "eval.every=2", "eval.size=32", "es.population_size=4", "es.prompts_per_step=16", "checkpoint.every=2"]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, f"model.cache_dir={tmp_path.parent / 'esft-cache'}",
                                                      *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def _status(run):
    return json.loads((run / "status.json").read_text())


@pytest.mark.slow
def test_disk_full_stops_cleanly_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    real_save = experiment_module.save_checkpoint
    calls = []

    def save_then_fill_disk(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", "weights.safetensors")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(experiment_module, "save_checkpoint", save_then_fill_disk)
    run = tmp_path / "run"
    with pytest.raises(EsftError, match="disk full .*last complete checkpoint is step_0000002.*--resume"):
        Experiment(_cfg(tmp_path), run).run_all()
    assert _status(run)["state"] == "failed" and "disk full" in _status(run)["message"]
    assert latest_checkpoint(run / "checkpoints").name == "step_0000002"
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 2


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_falls_back_to_the_previous_one(tmp_path, caplog):
    run = tmp_path / "run"
    Experiment(_cfg(tmp_path), run).run_all()
    (run / "status.json").write_text(json.dumps({"state": "running"}))  # as if killed after the last checkpoint
    newest = latest_checkpoint(run / "checkpoints")
    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    Experiment(_cfg(tmp_path), run).run_all()  # more in tests/test_resume_hardening.py
    assert _status(run)["state"] == "done" and f"{newest.name} is corrupt" in caplog.text
    assert latest_checkpoint(run / "checkpoints").name == newest.name  # trained again from the one before


@pytest.mark.slow
def test_resume_with_a_different_config_is_refused(tmp_path):
    run = tmp_path / "run"
    Experiment(_cfg(tmp_path), run).run_all()
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(EsftError, match="different config"):
        Experiment(_cfg(tmp_path, "es.sigma=0.5"), run).run_all()


@pytest.mark.slow
def test_missing_data_file_is_one_line(tmp_path):
    with pytest.raises(EsftError, match="gsm8k"):
        Experiment(_cfg(tmp_path, "task=gsm8k", f"data_dir={tmp_path / 'nowhere'}"), tmp_path / "run").run_all()
    assert _status(tmp_path / "run")["state"] == "failed"
