"""The paper's tasks through the whole pipeline on the tiny model: countdown trained for 2 steps from the
paper's own data (../shared/data where it is beside the repository, else the rows in tests/data), gsm8k and
arc_challenge scored as eval-only tasks at every checkpoint."""

from __future__ import annotations

import json
import time

import pytest
from support import TASK_DATA
from test_train_e2e import esft  # the subprocess runner of the e2e tests

from esft.storage.rundir import read_jsonl


@pytest.mark.slow
def test_countdown_two_steps_with_gsm8k_and_arc_evals(tmp_path):
    run = tmp_path / "run"
    args = ["train", "task=countdown", "prior=none", "steps=2", f"data_dir={TASK_DATA}",
            "model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64",
            "task.max_new_tokens=8", "es.population_size=4", "es.prompts_per_step=8", "eval.size=8",
            "eval.tasks=[{name: gsm8k, max_new_tokens: 8}, {name: arc_challenge, max_new_tokens: 8}]",
            f"hydra.run.dir={run}"]
    started = time.perf_counter()
    esft(args, tmp_path)
    seconds = time.perf_counter() - started
    print(f"\n2-step countdown run on the tiny model: {seconds:.1f} s (subprocess, warm-up cached)")
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    evals = read_jsonl(run / "evals.jsonl")
    assert {e["task"] for e in evals} == {"countdown", "gsm8k", "arc_challenge"}
    for event in ("stage_start", "stage_end"):
        assert {e["task"] for e in evals if e["event"] == event} == {"countdown", "gsm8k", "arc_challenge"}
    assert all(e["n"] == 8 for e in evals)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 2 and all(m["generated_tokens"] > 0 for m in metrics)
