"""`esft train` end to end in a subprocess, as a user runs it: run-dir files, a -m sweep, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esft.storage.rundir import read_jsonl

# A fast tiny curriculum: short warm-up (its own cache key), few steps, small evals.
FAST = ["model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64", "prior.steps=3", "steps=4",
        "eval.every=2", "eval.size=64", "es.population_size=4", "es.prompts_per_step=32", "checkpoint.every=2"]


def esft(args: list[str], tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "ESFT_CACHE": str(tmp_path.parent / "esft-cache"), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "esft", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"esft {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
def test_train_writes_the_whole_run_dir(tmp_path):
    run = tmp_path / "run"
    esft(["train", *FAST, f"hydra.run.dir={run}"], tmp_path)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert (run / ".hydra" / "config.yaml").exists()
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 8))
    assert [m["task"] for m in metrics] == ["add"] * 3 + ["reverse"] * 4
    assert [m["stage"] for m in metrics] == [0] * 3 + [1] * 4
    evals = read_jsonl(run / "evals.jsonl")
    checkpoints = sorted({(e["step"], e["stage"], e["event"]) for e in evals})
    assert checkpoints == [(0, 0, "stage_start"), (2, 0, "periodic"), (3, 0, "stage_end"), (3, 1, "stage_start"),
                           (4, 1, "periodic"), (6, 1, "periodic"), (7, 1, "stage_end")]
    for point in checkpoints:  # every task scored at every checkpoint
        tasks = {e["task"]: e["role"] for e in evals if (e["step"], e["stage"], e["event"]) == point}
        assert tasks == {"add": "curriculum", "reverse": "curriculum", "subtract": "eval_only"}
    assert all(0 <= e["accuracy"] <= 1 and e["n"] == 64 for e in evals)
    replay = read_jsonl(run / "es_updates.jsonl")
    assert [r["step"] for r in replay] == list(range(1, 8)) and len(replay[0]["seeds"]) == 2
    info = json.loads((run / "run.json").read_text())
    assert [s["task"] for s in info["stages"]] == ["add", "reverse"] and info["stages"][1]["first_step"] == 4
    assert (run / "checkpoints" / "latest").exists()
    model = AutoModelForCausalLM.from_pretrained(run / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(run / "final_model")
    assert tokenizer("12+34=")["input_ids"] and sum(p.numel() for p in model.parameters()) == info["num_parameters"]
    master = _latest_master(run)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(flat, master), "final_model must hold the fp32 master weights"


def _latest_master(run: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "weights.safetensors"))["master"]


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_dir_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    esft(["train", "-m", *FAST, "awd.lambda=0,1", "steps=2", "prior=none", f"hydra.sweep.dir={sweep}"], tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and (sweep / "multirun.yaml").exists()
    lambdas = set()
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["state"] == "done"
        assert len(read_jsonl(job / "metrics.jsonl")) == 2
        lambdas.add(read_jsonl(job / "es_updates.jsonl")[0]["awd_lambda"])
    assert lambdas == {0.0, 1.0}
    report = esft(["drift-report", str(sweep), "--out", str(tmp_path / "report")], tmp_path)
    assert "awd.lambda=0" in report.stdout and "awd.lambda=1" in report.stdout
    for name in ("summary.json", "summary.csv", "report.md", "report.html", "prior_accuracy.png",
                 "new_task_accuracy.png", "theta_drift.png", "drop_vs_cost.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert len(summary["runs"]) == 2


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    result = esft(["train", "task=nonsense", f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "esft: error: unknown task 'nonsense'; available: add, reverse, subtract" or \
        result.stderr.strip().startswith("esft: error: unknown task 'nonsense'; available:")
    assert not (tmp_path / "bad").exists(), "refused before Hydra made a run dir"
    for override, message in [("awd.lambda=1000", "alpha*lambda < 1"), ("foo=1", "unknown config key 'foo'"),
                              ("es.population_size=7", "even")]:
        result = esft(["train", override], tmp_path, check=False)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cfg_job_prints_the_config_without_training(tmp_path):
    result = esft(["train", "--cfg", "job", "awd.lambda=0"], tmp_path)
    assert "population_size: 16" in result.stdout and "lambda: 0" in result.stdout
    assert not (tmp_path / "outputs").exists()
