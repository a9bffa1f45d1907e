"""EGGROLL low-rank ES: the batched forward equals the dense forward with the noise materialised, the update is
built from the factors (high-rank, antithetic pairs cancel), and live training equals the replay bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from esft.es.lowrank import LowRankNoise, apply_lowrank_step, perturb_members
from esft.es.noise import member_seed
from esft.es.params import FlatParams
from esft.es.population import LowRankEvaluator, StepFitness, build_noise
from esft.es.strategy import ESSettings, tell
from esft.es.trainer import ESTrainer
from esft.es.update import apply_step, replay
from tests.conftest import micro_policy

SIGMA = 0.05


def _dense_member(model, params: FlatParams, noise, seed: int, sign: float):
    """A copy of the model holding master + sign * sigma * eps(seed), materialised (the reference)."""
    dense = copy.deepcopy(model)
    vector = params.master + sign * SIGMA * noise.flat(seed)
    for (name, _), (_, part) in zip(params.named, params.slices()):
        dense.get_parameter(name).data = vector[part].view(params.shapes[params.names.index(name)]).clone()
    return dense


def _members(count: int) -> list[tuple[int, float]]:
    settings = ESSettings(count, SIGMA, 0.1, antithetic=True)
    return [settings.member(i) for i in range(count)]


@pytest.mark.parametrize("rank,freeze", [(1, False), (3, False), (2, True)])
def test_batched_forward_equals_dense_materialised(rank, freeze):
    policy = micro_policy(1)
    params = FlatParams(policy.model)
    noise = LowRankNoise(params.shapes, rank, freeze)
    seeds = [member_seed(5, 1, k) for k in range(2)]
    draws = [noise.draw(s) for s in seeds]
    members = _members(4)
    ids = torch.randint(0, 256, (3, 7))
    with torch.no_grad():
        base = policy.model(input_ids=ids).logits
        with perturb_members(policy.model, [p for _, p in params.named], noise, draws, members, SIGMA):
            stacked = policy.model(input_ids=ids.repeat(len(members), 1)).logits.view(len(members), 3, 7, -1)
        for i, (draw, sign) in enumerate(members):
            dense = _dense_member(policy.model, params, noise, seeds[draw], sign)(input_ids=ids).logits
            assert not torch.allclose(dense, base, atol=1e-3), "the perturbation must change the logits"
            assert torch.allclose(stacked[i], dense, atol=2e-5, rtol=1e-4)
    assert torch.equal(policy.model(input_ids=ids).logits, base), "hooks must be gone after the block"


def test_stacked_greedy_generation_with_kv_cache_matches_each_member():
    policy = micro_policy(2)
    params = FlatParams(policy.model)
    noise = LowRankNoise(params.shapes, 1)
    seeds = [member_seed(9, 2, k) for k in range(2)]
    draws = [noise.draw(s) for s in seeds]
    members = _members(4)
    prompts = ["12+34=", "7|>", "hello", "99-1="]
    with perturb_members(policy.model, [p for _, p in params.named], noise, draws, members, SIGMA):
        stacked = policy.generate(prompts * len(members), max_new_tokens=6, batch_size=len(prompts) * len(members))
    for i, (draw, sign) in enumerate(members):
        policy_i = copy.copy(policy)
        policy_i.model = _dense_member(policy.model, params, noise, seeds[draw], sign)
        assert stacked[i * len(prompts):(i + 1) * len(prompts)] == policy_i.generate(prompts, max_new_tokens=6)


def test_noise_regenerates_identically_with_unit_variance():
    noise = LowRankNoise([(64, 32), (32,), (16, 48)], rank=2)
    seeds = [member_seed(0, 3, k) for k in range(3)]
    first = [noise.flat(s) for s in seeds]
    again = [noise.flat(s) for s in reversed(seeds)][::-1]
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert torch.equal(noise.tensor(seeds[1], 2), first[1][64 * 32 + 32:])
    many = torch.cat([LowRankNoise([(200, 200)], 1).flat(member_seed(1, 1, k)) for k in range(4)])
    assert abs(float(many.std()) - 1) < 0.05 and abs(float(many.mean())) < 0.05
    frozen = LowRankNoise([(4, 4), (4,)], 1, freeze_nonmatrix=True).flat(seeds[0])
    assert torch.equal(frozen[16:], torch.zeros(4))


def test_each_member_is_rank_r_and_the_summed_update_is_high_rank():
    noise = LowRankNoise([(64, 48)], rank=2)
    seeds = [member_seed(0, 1, k) for k in range(8)]
    draws = [noise.draw(s) for s in seeds]
    assert torch.linalg.matrix_rank(noise.flat(seeds[0]).view(64, 48)) == 2
    coefficients = torch.randn(8).tolist()
    update = noise.direction(0, slice(0, 64), coefficients, draws).view(64, 48)
    assert torch.linalg.matrix_rank(update) == 16  # min(K r, m, n)
    dense = sum(c * noise.flat(s) for c, s in zip(coefficients, seeds)).view(64, 48)
    assert torch.allclose(update, dense, atol=1e-5)


def test_update_from_factors_matches_dense_and_antithetic_pairs_cancel():
    shapes = [(40, 24), (24,), (24, 40)]
    noise = LowRankNoise(shapes, 1)
    theta0 = torch.randn(noise.numel)
    seeds = [member_seed(2, 4, k) for k in range(3)]
    settings = ESSettings(6, SIGMA, 0.1, antithetic=True)
    told = tell([1.0, 1.0, 0.3, 0.9, 0.2, 0.2], settings)  # pairs 0 and 2 score equally: they must cancel
    assert told.coefficients[0] == 0.0 and told.coefficients[2] == 0.0
    theta = theta0.clone()
    norm = apply_step(theta, theta0, noise, seeds, told.coefficients, settings, "l2", 0.0)
    expected = theta0 + settings.alpha / 6 * told.coefficients[1] * noise.flat(seeds[1])
    assert torch.allclose(theta, expected, atol=1e-6)
    assert norm == pytest.approx(float((theta - theta0).norm()), rel=1e-5)
    only = theta0.clone()
    apply_lowrank_step(only, theta0, noise, seeds[1:2], told.coefficients[1:2], settings.alpha / 6, "l2", 0.0)
    assert torch.equal(only, theta)


def test_lowrank_evaluator_shares_master_and_scores_members_like_dense(digit_task):
    policy = micro_policy(3)
    params = FlatParams(policy.model, share_master=True)
    settings = ESSettings(4, SIGMA, 0.1, antithetic=True)
    noise = build_noise("lowrank", "iid", params, rank=1, freeze_nonmatrix=False)
    evaluator = LowRankEvaluator(params, noise, settings)
    weight = next(policy.model.parameters())
    assert weight.untyped_storage().data_ptr() == params.master.untyped_storage().data_ptr()
    seeds = [member_seed(0, 1, k) for k in range(2)]
    examples = digit_task.train_examples()
    rewards, cache = evaluator.evaluate(seeds, StepFitness(policy, digit_task, examples))
    assert sorted(cache) == [0, 1]
    one_per_call = LowRankEvaluator(params, noise, settings, member_chunk=1)
    assert one_per_call.evaluate(seeds, StepFitness(policy, digit_task, examples))[0] == pytest.approx(rewards)
    for member, reward in enumerate(rewards):
        draw, sign = settings.member(member)
        dense = copy.copy(policy)
        dense.model = _dense_member(policy.model, params, noise, seeds[draw], sign)
        assert reward == pytest.approx(StepFitness(dense, digit_task, examples)())


ES = {"population_size": 4, "sigma": 0.3, "alpha": 0.05, "antithetic": True, "shaping": "zscore",
      "evaluator": "lowrank", "rank": 2, "freeze_nonmatrix": False, "prompts_per_step": 8, "cache_noise": True,
      "noise": "iid"}


@pytest.mark.parametrize("es,awd", [
    (ES, {"kind": "l2", "lambda": 1.0, "anchor": "start"}),
    ({**ES, "cache_noise": False, "freeze_nonmatrix": True, "rank": 1},
     {"kind": "l1", "lambda": 0.5, "anchor": "stage"}),
    ({**ES, "evaluator": "inplace"}, {"kind": "l2", "lambda": 1.0, "anchor": "start"}),
])
def test_training_replays_bit_for_bit_from_the_log_alone(digit_task, es, awd):
    """The replay log names its noise (noise, rank, freeze_nonmatrix): the parameter shapes suffice to replay."""
    rows: list[dict] = []
    trainer = ESTrainer(micro_policy(), es, awd, seed=3, replay_log=rows.append, batch_size=64)
    step, moved = 0, False
    for stage in (0, 1):
        trainer.set_stage(stage, digit_task)
        for _ in range(2):
            step += 1
            moved |= not trainer.step(step)["skipped"]
    assert moved, "the toy task must give ES some signal"
    rebuilt = replay(trainer.params.theta0, rows, shapes=trainer.params.shapes)
    assert torch.equal(rebuilt, trainer.params.master)
    assert not torch.equal(rebuilt, trainer.params.theta0)
    if es["evaluator"] == "lowrank":
        assert rows[0]["noise"] == "lowrank" and rows[0]["rank"] == es["rank"]
        with pytest.raises(Exception, match="lowrank noise"):
            replay(trainer.params.theta0, rows, build_noise("inplace", "iid", trainer.params))
    else:
        assert rows[0]["noise"] == "iid"


def test_rank_must_be_positive():
    with pytest.raises(Exception, match="es.rank"):
        LowRankNoise([(2, 2)], rank=0)


def test_other_modules_are_perturbed_exactly_per_member():
    """LayerNorm (weight and bias) takes the generic per-member path; the result still equals the dense model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 5))
    parameters = list(model.parameters())
    noise = LowRankNoise([tuple(p.shape) for p in parameters], rank=2)
    seeds = [member_seed(1, 1, k) for k in range(2)]
    members = _members(4)
    ids = torch.randint(0, 11, (3, 4))
    with torch.no_grad(), perturb_members(model, parameters, noise, [noise.draw(s) for s in seeds], members, SIGMA):
        stacked = model(ids.repeat(len(members), 1)).view(len(members), 3, 4, 5)
    for i, (draw, sign) in enumerate(members):
        dense = copy.deepcopy(model)
        vector = torch.cat([p.detach().reshape(-1) for p in parameters]) + sign * SIGMA * noise.flat(seeds[draw])
        torch.nn.utils.vector_to_parameters(vector, dense.parameters())
        assert torch.allclose(stacked[i], dense(ids).detach(), atol=1e-5)
