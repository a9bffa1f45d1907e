"""Resume on the real-model path: a Llama-architecture tiny model with a log-likelihood-scored eval task, killed
after a checkpoint and resumed, ends bit-identical to an uninterrupted run (metrics, evals, ES updates, final
weights). The SmolLM2 architecture without SmolLM2's minutes per step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_resume import FAST, _assert_same_run, _env

LLAMA = [*FAST, "model.tiny.architecture=llama", "eval.tasks=[{name: caps, jsonl: caps.jsonl, reward_kind: choice,"
         " scoring: loglik}]"]


def _esft(args: list[str], tmp_path: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esft", *args], cwd=tmp_path, env=_env(tmp_path, fault),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_llama_run_with_loglik_eval_resumes_bit_identical(tmp_path):
    (tmp_path / "caps.jsonl").write_text("".join(
        json.dumps({"prompt": f"{a}+{b}=", "answer": 0, "choices": [str(a + b), str(a + b + 1)]}) + "\n"
        for a, b in [(12, 30), (7, 8), (40, 41), (3, 99)]))
    reference = _esft(["train", *LLAMA, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    config = json.loads((tmp_path / "reference" / "final_model" / "config.json").read_text())
    assert config["model_type"] == "llama"
    evals = [json.loads(line) for line in (tmp_path / "reference" / "evals.jsonl").read_text().splitlines()]
    assert {e["scoring"] for e in evals if e["task"] == "caps"} == {"loglik_acc_norm"}
    run = tmp_path / "run"
    killed = _esft(["train", *LLAMA, f"hydra.run.dir={run}"], tmp_path, fault="checkpoint@3")
    assert killed.returncode != 0
    resumed = _esft(["train", "--resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(run, tmp_path / "reference")
