"""es.noise end to end: philox training is live = resumed = replayed bit for bit (inplace and lowrank), `auto`
resolves per device, and replay logs written before philox existed (iid, correlated) still replay."""

from __future__ import annotations

import hashlib

import pytest
import torch

from esft.errors import EsftError
from esft.es.noise import NOISE_SETTINGS, member_seed, resolve_noise_mode
from esft.es.trainer import ESTrainer
from esft.es.update import replay
from tests.conftest import micro_policy

ES = {"population_size": 4, "sigma": 0.3, "alpha": 0.05, "antithetic": True, "shaping": "zscore",
      "evaluator": "inplace", "prompts_per_step": 8, "cache_noise": True, "noise": "philox"}
AWD = {"kind": "l2", "lambda": 1.0, "anchor": "start"}


def _trainer(es: dict, rows: list, task) -> ESTrainer:
    trainer = ESTrainer(micro_policy(), es, AWD, seed=3, replay_log=rows.append, batch_size=64)
    trainer.set_stage(0, task)
    return trainer


@pytest.mark.parametrize("cache_noise", [True, False])
def test_philox_training_is_live_equal_resumed_equal_replayed(digit_task, cache_noise):
    es = {**ES, "cache_noise": cache_noise}
    rows: list[dict] = []
    live = _trainer(es, rows, digit_task)
    for step in range(1, 5):
        live.step(step)
    assert rows[0]["noise"] == "philox" and "chunk" not in rows[0]
    assert any(r["coefficients"] for r in rows), "the toy task must give ES some signal"

    first: list[dict] = []
    interrupted = _trainer(es, first, digit_task)
    for step in (1, 2):
        interrupted.step(step)
    state = {k: v.clone() for k, v in interrupted.state_dict().items()}
    resumed = _trainer(es, first, digit_task)
    resumed.load_state_dict(state, stage=0)
    for step in (3, 4):
        resumed.step(step)

    assert torch.equal(resumed.params.master, live.params.master)
    assert torch.equal(replay(live.params.theta0, rows, shapes=live.params.shapes), live.params.master)


def test_philox_lowrank_factors_are_drawn_by_philox_and_replay(digit_task):
    es = {**ES, "evaluator": "lowrank", "rank": 2, "freeze_nonmatrix": False}
    rows: list[dict] = []
    trainer = _trainer(es, rows, digit_task)
    for step in (1, 2, 3):
        trainer.step(step)
    assert rows[0]["noise"] == "lowrank" and rows[0]["factors"] == "philox"
    assert torch.equal(replay(trainer.params.theta0, rows, shapes=trainer.params.shapes), trainer.params.master)
    iid_rows = [{k: v for k, v in row.items() if k != "factors"} for row in rows if row["coefficients"]]
    if iid_rows:  # the same seeds through torch's sampler are other factors: the field matters
        assert not torch.equal(replay(trainer.params.theta0, iid_rows, shapes=trainer.params.shapes),
                               trainer.params.master)


def test_auto_resolves_per_device_and_settings_accept_it():
    assert "auto" in NOISE_SETTINGS
    assert resolve_noise_mode("auto", torch.device("cpu")) == "iid"
    assert resolve_noise_mode("auto", torch.device("cuda", 0)) == "philox"
    assert resolve_noise_mode("correlated", torch.device("cuda", 0)) == "correlated"


def test_unknown_noise_is_a_user_error(digit_task):
    with pytest.raises(EsftError, match="es.noise .gaussian.; use one of"):
        _trainer({**ES, "noise": "gaussian"}, [], digit_task)


# sha256 of the weights replayed from the rows below by the code before philox existed (commit 4b9d99e), on
# this CPU kind: torch's CPU sampler itself gives other bits on other vector paths (the reason for philox)
OLD_LOG_SHA256 = {"iid": "f49dc1215e59bc2de51079e93dbbf7f572f7914cf151f868124c834e2ba9bc9c",
                  "correlated": "4e5152077f779e4118fad0ef39da29fce996f5ecfbf94fd1fe019db737b449ab"}
OLD_LOG_CPU = "AVX512"


@pytest.mark.parametrize("mode", ["iid", "correlated"])
def test_logs_written_before_philox_still_replay(mode):
    from esft.es.noise import NoiseGenerator

    shapes = [(40, 30), (30,), (5, 40)]
    theta0 = torch.linspace(-1, 1, 1200 + 30 + 200)
    rows = []
    for step in (1, 2, 3):
        row = {"step": step, "stage": 0, "seeds": [member_seed(5, step, d) for d in range(2)],
               "coefficients": [0.5, -1.25] if step != 2 else None, "population_size": 4, "sigma": 0.01,
               "alpha": 0.1, "awd_kind": "l2", "awd_lambda": 0.5, "awd_anchor": "start", "noise": mode}
        if mode == "iid":
            row["chunk"] = 1 << 24
        rows.append(row)
    theta = replay(theta0, rows, shapes=shapes)
    if torch.backends.cpu.get_cpu_capability() == OLD_LOG_CPU:
        assert hashlib.sha256(theta.numpy().tobytes()).hexdigest() == OLD_LOG_SHA256[mode]
    # on any CPU: the update rule with the mode's own host noise
    noise = NoiseGenerator([1200, 30, 200], shapes, mode)
    expected = theta0.clone()
    for row in rows:
        if row["coefficients"]:
            direction = torch.zeros_like(expected)
            for c, seed in zip(row["coefficients"], row["seeds"]):
                direction.add_(noise.flat(seed), alpha=c)
            expected.add_(direction, alpha=0.1 / 4)
            expected.sub_(theta0).mul_(1 - 0.1 * 0.5).add_(theta0)
    assert torch.allclose(theta, expected, atol=1e-6)


def test_philox_bf16_model_with_stage_anchor_replays(digit_task):
    """A bf16 model (theta0 kept in bf16, members cast per tensor) with an l1 stage anchor over two stages."""
    rows: list[dict] = []
    policy = micro_policy()
    policy.model.to(torch.bfloat16)
    trainer = ESTrainer(policy, {**ES, "cache_noise": False, "antithetic": False, "population_size": 3},
                        {"kind": "l1", "lambda": 0.5, "anchor": "stage"}, seed=3, replay_log=rows.append,
                        batch_size=64)
    step = 0
    for stage in (0, 1):
        trainer.set_stage(stage, digit_task)
        for _ in range(2):
            step += 1
            trainer.step(step)
    assert trainer.params.theta0.dtype == torch.bfloat16
    assert torch.equal(replay(trainer.params.theta0, rows, shapes=trainer.params.shapes), trainer.params.master)
    dist = float(torch.linalg.vector_norm(trainer.params.master - trainer.params.theta0.float()))
    assert trainer.params.distance() == pytest.approx(dist, rel=1e-6)
