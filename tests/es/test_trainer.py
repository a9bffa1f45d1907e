"""The ES trainer: live updates equal replayed updates bit for bit; AWD bounds the drift."""

from __future__ import annotations

import torch

from esft.es.trainer import ESTrainer
from esft.es.update import replay

ES = {"population_size": 4, "sigma": 0.3, "alpha": 0.05, "antithetic": True, "shaping": "zscore",
      "evaluator": "inplace", "prompts_per_step": 8, "cache_noise": True, "noise": "iid"}


def _train(policy, task, steps, es=ES, awd=None, stages=(0,)):
    rows = []
    trainer = ESTrainer(policy, es, awd or {"kind": "l2", "lambda": 1.0, "anchor": "start"}, seed=3,
                        replay_log=rows.append, batch_size=64)
    metrics = []
    step = 0
    for stage in stages:
        trainer.set_stage(stage, task)
        for _ in range(steps):
            step += 1
            metrics.append(trainer.step(step))
    return trainer, rows, metrics


def test_replay_rebuilds_live_weights_bit_for_bit(policy, digit_task):
    trainer, rows, metrics = _train(policy, digit_task, 4)
    assert any(not m["skipped"] for m in metrics), "the toy task must give ES some signal"
    rebuilt = replay(trainer.params.theta0, rows, trainer.noise)
    assert torch.equal(rebuilt, trainer.params.master)
    partial = replay(trainer.params.theta0, rows, trainer.noise, until_step=2)
    assert not torch.equal(partial, trainer.params.master)


def test_replay_with_stage_anchor_and_regenerated_noise(policy, digit_task):
    es = {**ES, "cache_noise": False, "antithetic": False, "population_size": 3}
    trainer, rows, _ = _train(policy, digit_task, 2, es=es, awd={"kind": "l1", "lambda": 0.5, "anchor": "stage"},
                              stages=(0, 1))
    assert torch.equal(replay(trainer.params.theta0, rows, trainer.noise), trainer.params.master)


def test_model_restored_exactly_after_population(policy, digit_task):
    trainer, _, _ = _train(policy, digit_task, 1)
    for (_, param), (_, part) in zip(trainer.params.named, trainer.params.slices()):
        assert torch.equal(param.detach().reshape(-1), trainer.params.master[part])


def test_metrics_rows_carry_the_contract_keys(policy, digit_task):
    _, rows, metrics = _train(policy, digit_task, 1)
    for key in ("step", "stage", "task", "reward_mean", "reward_std", "reward_min", "reward_max", "theta_dist",
                "skipped", "seconds", "population_evals", "forward_tokens"):
        assert key in metrics[0]
    assert metrics[0]["forward_tokens"] > 0
    assert set(rows[0]) >= {"step", "seeds", "coefficients", "alpha", "sigma", "awd_kind", "awd_lambda"}


def test_update_magnitude_matches_reference_form(policy, digit_task):
    """Without AWD one step moves theta by alpha/N * |sum_k c_k eps_k| (no 1/sigma)."""
    trainer, rows, _ = _train(policy, digit_task, 1, awd={"kind": "l2", "lambda": 0.0, "anchor": "start"})
    row = rows[0]
    if row["coefficients"] is None:
        return
    direction = sum(c * trainer.noise.flat(s) for c, s in zip(row["coefficients"], row["seeds"]))
    expected = trainer.params.theta0 + ES["alpha"] / ES["population_size"] * direction
    assert torch.allclose(trainer.params.master, expected, atol=1e-6)


def test_prefetching_the_next_draw_changes_nothing_but_when_noise_is_made(digit_task):
    """The GPU-host path (next draw generated on a worker thread while a member is evaluated), forced on the
    CPU: same rewards, same cached noise, same weights after the step, with and without a noise cache."""
    from esft.es.population import InplaceEvaluator
    from tests.conftest import micro_policy

    for cache_noise in (True, False):
        results = []
        for prefetch in (False, True):
            es = {**ES, "population_size": 6, "cache_noise": cache_noise}
            trainer = ESTrainer(micro_policy(), es, {"kind": "l2", "lambda": 1.0, "anchor": "start"}, seed=3,
                                replay_log=lambda row: None, batch_size=64)
            trainer.population = InplaceEvaluator(trainer.params, trainer.noise, trainer.settings, cache_noise,
                                                  prefetch=prefetch)
            trainer.set_stage(0, digit_task)
            rewards = [trainer.step(step)["reward_mean"] for step in (1, 2)]
            results.append((rewards, trainer.params.master.clone()))
        assert results[0][0] == results[1][0]
        assert torch.equal(results[0][1], results[1][1])
    assert len(trainer.population._buffers) == 2, "two alternating buffers when prefetching without a cache"


def test_a_bf16_model_keeps_theta0_in_bf16_with_bit_identical_training(digit_task, monkeypatch):
    """theta0 of a bf16 model is stored in bf16 (exact: those are the initial weights), half the memory of an
    fp32 copy; AWD, distances and replay promote it, so the run is bit-identical to one with an fp32 theta0."""
    import torch

    from esft.es.params import FlatParams
    from tests.conftest import micro_policy

    def run():
        policy = micro_policy()
        policy.model.to(torch.bfloat16)
        return _train(policy, digit_task, 3, awd={"kind": "l1", "lambda": 2.0, "anchor": "start"})

    trainer, rows, metrics = run()
    assert trainer.params.theta0.dtype == torch.bfloat16
    assert torch.equal(replay(trainer.params.theta0, rows, trainer.noise), trainer.params.master)
    monkeypatch.setattr(FlatParams, "_initial_weights", lambda self: self.master.clone())
    fp32_anchor, _, fp32_metrics = run()
    assert fp32_anchor.params.theta0.dtype == torch.float32
    assert torch.equal(trainer.params.master, fp32_anchor.params.master)
    assert [m["theta_dist"] for m in metrics] == [m["theta_dist"] for m in fp32_metrics]


def test_noise_held_elsewhere_is_loaded_tensor_by_tensor_with_the_same_sums():
    """With the weights on a GPU and an uncached draw on the CPU, load_perturbed moves the noise one tensor
    at a time instead of a whole D-sized copy. Simulated here with the device `cpu:0`, which differs from
    `cpu` as a device but computes on the same CPU: both model layouts give the fused path's exact sums."""
    import torch

    from esft.es.noise import NoiseGenerator, member_seed
    from esft.es.params import FlatParams
    from tests.conftest import micro_policy

    for dtype in (torch.float32, torch.bfloat16):  # aliased fp32 model, and a per-tensor bf16 copy
        params = FlatParams(micro_policy().model.to(dtype))
        eps = NoiseGenerator(params.sizes).flat(member_seed(0, 1, 0))
        params.load_perturbed(eps, 0.3)
        fused = [p.detach().clone() for _, p in params.named]
        params.restore()
        params.device = torch.device("cpu", 0)
        params.load_perturbed(eps, 0.3)
        assert all(torch.equal(p.detach(), q) for (_, p), q in zip(params.named, fused))


def test_reference_weights_never_overwrite_the_trained_weights(digit_task):
    """The off-task KL loads theta0 for a moment (`reference_weights`). With lowrank the fp32 model computes
    straight from `master`; loading theta0 used to be written into it, silently resetting training to theta0
    at every KL checkpoint. Both evaluators: theta0 inside the block, the trained weights after it."""
    import torch

    from tests.conftest import micro_policy

    for evaluator in ("inplace", "lowrank"):
        es = {**ES, "evaluator": evaluator, "rank": 1, "freeze_nonmatrix": False}
        trainer, _, _ = _train(micro_policy(), digit_task, 3, es=es)
        trained = trainer.params.master.clone()
        assert not torch.equal(trained, trainer.params.theta0)
        model_weights = lambda: torch.cat([p.detach().reshape(-1) for _, p in trainer.params.named])  # noqa: E731
        with trainer.reference_weights():
            assert torch.equal(model_weights(), trainer.params.theta0), evaluator
        assert torch.equal(trainer.params.master, trained), evaluator
        assert torch.equal(model_weights(), trained), evaluator
        assert (trainer.params.work is trainer.params.master) == (evaluator == "lowrank")


def test_gathering_an_fp32_model_into_the_flat_buffer_keeps_its_values_and_ties():
    import torch

    from esft.es.params import FlatParams
    from tests.conftest import micro_policy

    model = micro_policy().model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    params = FlatParams(model, share_master=True)
    assert all(torch.equal(p.detach(), before[name]) for name, p in model.named_parameters())
    embedding = model.get_input_embeddings().weight
    assert embedding.untyped_storage().data_ptr() == params.master.untyped_storage().data_ptr()
    if model.config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is embedding
    assert torch.equal(params.theta0, params.master) and params.theta0.data_ptr() != params.master.data_ptr()
    import pytest

    with pytest.raises(RuntimeError, match="overwrite master"):  # the inplace path needs its working copy
        params.load_perturbed(torch.zeros(params.numel), 1.0)
