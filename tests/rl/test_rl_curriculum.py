"""GRPO and PPO through the real curriculum runner: same steps, metrics rows, evals and run-dir files as ES;
GRPO resumes a killed run through TRL's own checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esft.resources import conf_dir
from esft.run.experiment import Experiment, StageSchedule
from esft.storage.rundir import read_jsonl
from tests.conftest import micro_policy

# add (3 steps) -> reverse (4 steps), eval every 2 steps, the eval-only subtract task, small evals.
FAST = ["prior.steps=3", "steps=4", "eval.every=2", "eval.size=16", "checkpoint.every=2", "checkpoint.keep=2"]
METHOD = {"grpo": ["method.num_generations=4", "method.prompts_per_step=2", "method.learning_rate=0.01"],
          "ppo": ["method.num_generations=2", "method.prompts_per_step=4", "method.epochs=2",
                  "method.learning_rate=0.01"]}
CHECKPOINTS = [(0, 0, "stage_start"), (2, 0, "periodic"), (3, 0, "stage_end"), (3, 1, "stage_start"),
               (4, 1, "periodic"), (6, 1, "periodic"), (7, 1, "stage_end")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The micro model saved like a hub model, so `model.name=<dir>` loads it without the tiny warm-up."""
    path = tmp_path_factory.mktemp("micro")
    policy = micro_policy()
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


def config(model_dir: Path, method: str, *extra: str) -> dict:
    if method == "grpo":
        pytest.importorskip("trl")
    overrides = [f"method={method}", f"model.name={model_dir}", *FAST, *METHOD[method], *extra]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)


def check_run_dir(run: Path) -> None:
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 8))
    assert [m["task"] for m in metrics] == ["add"] * 3 + ["reverse"] * 4
    assert all(m["forward_tokens"] > 0 and m["backward_tokens"] > 0 and m["peak_rss_mb"] > 0 for m in metrics)
    evals = read_jsonl(run / "evals.jsonl")
    assert sorted({(e["step"], e["stage"], e["event"]) for e in evals}) == CHECKPOINTS
    for point in CHECKPOINTS:  # every task scored at every checkpoint
        tasks = {e["task"] for e in evals if (e["step"], e["stage"], e["event"]) == point}
        assert tasks == {"add", "reverse", "subtract"}
    assert len(read_jsonl(run / "diagnostics.jsonl")) == len(CHECKPOINTS)
    assert (run / "final_model" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_curriculum_end_to_end(model_dir, tmp_path, method):
    run = tmp_path / "run"
    kl = ["eval.kl.enabled=true", "eval.kl.samples=4", "eval.kl.max_new_tokens=4"]  # theta0 swapped in and out
    Experiment(config(model_dir, method, *kl), run).run_all()
    check_run_dir(run)
    diagnostics = read_jsonl(run / "diagnostics.jsonl")
    assert all("subtract" in str(d["kl_to_base"]) for d in diagnostics)
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == method and [s["task"] for s in info["stages"]] == ["add", "reverse"]
    if method == "grpo":  # TRL's checkpoints of finished stages are dropped once the run is done
        assert not list((run / "checkpoints" / "grpo").glob("stage_*/checkpoint-*"))


@pytest.mark.slow
def test_grpo_resumes_a_killed_run_through_trl_checkpoints(model_dir, tmp_path, monkeypatch):
    cfg = config(model_dir, "grpo")
    straight = tmp_path / "straight"
    Experiment(cfg, straight).run_all()

    killed = tmp_path / "killed"
    original = StageSchedule.step_done

    def die_at_step_6(self, step, metrics):
        if step == 6:
            raise KeyboardInterrupt
        original(self, step, metrics)

    monkeypatch.setattr(StageSchedule, "step_done", die_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        Experiment(cfg, killed).run_all()
    assert (killed / "checkpoints" / "grpo" / "stage_1" / "checkpoint-1").is_dir()  # global step 4 = stage-local 1
    monkeypatch.setattr(StageSchedule, "step_done", original)
    Experiment(cfg, killed).run_all()
    check_run_dir(killed)
    rows = {name: read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("straight", "killed")}
    assert [r["reward_mean"] for r in rows["killed"]] == [r["reward_mean"] for r in rows["straight"]]
    assert [r["theta_dist"] for r in rows["killed"]] == pytest.approx([r["theta_dist"] for r in rows["straight"]])
