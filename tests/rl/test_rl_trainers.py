"""The gradient baselines on a micro model built in memory: rewards rise on a learnable task, AWD bounds the
drift, metrics rows carry the contract's keys and compute counters, PPO resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from esft.resources import conf_dir
from esft.rl.ppo import PPOTrainer
from esft.run.curriculum import Stage
from tests.conftest import DigitTask, micro_policy

CONTRACT = ("step", "stage", "task", "reward_mean", "reward_std", "reward_min", "reward_max", "theta_dist",
            "update_norm", "skipped", "seconds", "forward_tokens", "backward_tokens", "generated_tokens", "peak_rss_mb")
def _method(name: str, **overrides) -> dict:
    """conf/method/NAME.yaml (the defaults' only home) with the test's small-scale overrides."""
    return {**OmegaConf.to_container(OmegaConf.load(conf_dir() / "method" / f"{name}.yaml"))["method"], **overrides}


PPO = _method("ppo", learning_rate=1e-2, prompts_per_step=8, num_generations=4, epochs=2, minibatches=1)
GRPO = _method("grpo", learning_rate=1e-2, num_generations=8, prompts_per_step=8, beta=0.0)
NO_AWD = {"kind": "l2", "lambda": 0.0, "anchor": "start"}


class Hooks:
    """The experiment's StageSchedule, recording instead of writing a run dir."""

    def __init__(self, stage: Stage, root: Path, start: int | None = None, checkpoint_every: int = 0) -> None:
        self.stage, self.every = stage, checkpoint_every
        self.steps = range(start or stage.first_step, stage.last_step + 1)
        self.checkpoint_dir = root / "checkpoints"
        self.rows: list[dict] = []
        self.checkpoints: list[int] = []

    def step_started(self, step: int) -> None:
        pass

    def step_done(self, step: int, metrics: dict) -> None:
        self.rows.append(metrics)

    def checkpoint_due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step != self.stage.last_step

    def checkpoint(self, step: int) -> None:
        self.checkpoints.append(step)


def run_ppo(steps: int, awd=NO_AWD, seed: int = 0, **overrides) -> tuple[PPOTrainer, list[dict]]:
    trainer = PPOTrainer(micro_policy(), {**PPO, **overrides}, awd, seed)
    trainer.set_stage(0, DigitTask())
    return trainer, [trainer.step(step) for step in range(1, steps + 1)]


def run_grpo(steps: int, root: Path, awd=NO_AWD, checkpoint_every: int = 0, **overrides):
    pytest.importorskip("trl")
    from esft.rl.grpo import GRPOTrainer

    trainer = GRPOTrainer(micro_policy(), {**GRPO, **overrides}, awd, seed=0)
    stage = Stage(0, DigitTask(), steps, 1)
    trainer.set_stage(0, stage.task)
    hooks = Hooks(stage, root, checkpoint_every=checkpoint_every)
    trainer.run_stage(stage, hooks)
    return trainer, hooks


def rises(rows: list[dict], by: float) -> bool:
    rewards = [r["reward_mean"] for r in rows]
    return float(np.mean(rewards[-5:])) > float(np.mean(rewards[:5])) + by


def test_ppo_reward_rises_and_rows_carry_the_contract(tmp_path):
    _, rows = run_ppo(20)
    assert rises(rows, 0.3), [round(r["reward_mean"], 3) for r in rows]
    for key in CONTRACT:
        assert key in rows[0], key
    row = rows[0]
    assert row["generated_tokens"] > 0 and row["backward_tokens"] > 0 and row["peak_rss_mb"] > 0
    # rollout (prompts + fed tokens), old log-probs, reference, and `epochs` training forwards (with backward)
    assert row["forward_tokens"] > 3 * row["backward_tokens"] / PPO["epochs"]
    assert row["rollouts"] == PPO["prompts_per_step"] * PPO["num_generations"]


def test_grpo_reward_rises_one_trl_step_per_esft_step(tmp_path):
    trainer, hooks = run_grpo(20, tmp_path, checkpoint_every=8)
    rows = hooks.rows
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert rises(rows, 0.3), [round(r["reward_mean"], 3) for r in rows]
    for key in CONTRACT:
        assert key in rows[0], key
    assert all(r["rollouts"] == GRPO["prompts_per_step"] * GRPO["num_generations"] for r in rows)
    assert all(r["backward_tokens"] > 0 and r["generated_tokens"] > 0 for r in rows)
    assert hooks.checkpoints == [8, 16]  # esft's checkpoint follows TRL's own, at the same steps
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "grpo" / "stage_0").glob("checkpoint-*")) == \
        ["checkpoint-16", "checkpoint-8"]
    assert not trainer.policy.model.training, "the model goes back to eval mode after TRL's loop"


def test_awd_reduces_drift_for_ppo():
    free, _ = run_ppo(6)
    pulled, _ = run_ppo(6, awd={"kind": "l2", "lambda": 20.0, "anchor": "start"})
    assert pulled.anchor.distance() < 0.8 * free.anchor.distance()


def test_awd_reduces_drift_for_grpo(tmp_path):
    free, _ = run_grpo(6, tmp_path / "free")
    pulled, _ = run_grpo(6, tmp_path / "pulled", awd={"kind": "l2", "lambda": 20.0, "anchor": "start"})
    assert pulled.anchor.distance() < 0.8 * free.anchor.distance()


def test_grpo_with_a_kl_reference_built_from_theta0(tmp_path):
    trainer, hooks = run_grpo(2, tmp_path, beta=0.01)
    assert (tmp_path / "checkpoints" / "grpo" / "reference" / "config.json").exists()
    first = hooks.rows[0]
    # the reference forward counts as compute: forward > generation + one training forward
    assert first["forward_tokens"] > 2 * first["backward_tokens"]


def test_reference_weights_load_theta0_and_restore_exactly():
    trainer, _ = run_ppo(1)
    before = trainer.anchor.flat()
    with trainer.reference_weights():
        assert trainer.anchor.distance() == 0.0
    assert np.array_equal(trainer.anchor.flat().numpy(), before.numpy()) and trainer.anchor.distance() > 0


def test_ppo_resumes_exactly_from_its_state_dict():
    straight, rows = run_ppo(4)
    first, _ = run_ppo(2)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = PPOTrainer(micro_policy(), PPO, NO_AWD, 0)
    resumed.load_state_dict(state, stage=0)
    resumed.set_stage(0, DigitTask())
    again = [resumed.step(step) for step in (3, 4)]
    assert [r["reward_mean"] for r in again] == [r["reward_mean"] for r in rows[2:]]
    assert np.array_equal(resumed.anchor.flat().numpy(), straight.anchor.flat().numpy())


@pytest.mark.parametrize("overrides,message", [
    ({"num_generations": 1}, "num_generations must be >= 2"), ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"prompts_per_step": 0}, "prompts_per_step"), ({"beta": -1}, "beta must be >= 0"),
])
def test_bad_grpo_settings_are_refused(overrides, message):
    from esft.errors import EsftError
    from esft.run.methods import validate_method_config

    cfg = {"method": {"name": "grpo", **GRPO, **overrides}, "awd": NO_AWD}
    with pytest.raises(EsftError, match=message):
        validate_method_config("grpo", cfg)


def test_missing_trl_is_one_clear_line(monkeypatch):
    import importlib.util

    from esft.errors import EsftError
    from esft.rl.grpo import require_trl

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(EsftError, match=r"pip install 'esft\[grpo\]'"):
        require_trl()
