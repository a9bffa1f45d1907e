"""Noise streams: deterministic, independent across (step, member, tensor), reproducible in any order."""

import torch

from esft.es.noise import NoiseGenerator, member_seed


def test_same_seed_same_noise_any_order():
    gen = NoiseGenerator([10, 20, 5])
    seeds = [member_seed(0, 3, k) for k in range(4)]
    forward = [gen.flat(s) for s in seeds]
    backward = [gen.flat(s) for s in reversed(seeds)][::-1]
    for a, b in zip(forward, backward):
        assert torch.equal(a, b)
    assert torch.equal(gen.tensor(seeds[1], 2), forward[1][30:])


def test_member_seeds_differ_across_steps_members_and_runs():
    seeds = {member_seed(run, step, k) for run in range(3) for step in range(5) for k in range(8)}
    assert len(seeds) == 3 * 5 * 8


def test_iid_tensors_are_independent_even_with_equal_shapes():
    gen = NoiseGenerator([4096, 4096], [(64, 64), (64, 64)], mode="iid")
    eps = gen.flat(member_seed(0, 1, 0))
    a, b = eps[:4096], eps[4096:]
    assert not torch.equal(a, b)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05


def test_members_are_independent():
    gen = NoiseGenerator([20000])
    a, b = gen.flat(member_seed(0, 1, 0)), gen.flat(member_seed(0, 1, 1))
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05


def test_correlated_mode_reproduces_the_reference_quirk():
    gen = NoiseGenerator([6, 6], [(2, 3), (2, 3)], mode="correlated")
    eps = gen.flat(1234)
    assert torch.equal(eps[:6], eps[6:])  # same seed for every tensor: equal shapes, equal noise
    expected = torch.randn((2, 3), generator=torch.Generator().manual_seed(1234)).reshape(-1)
    assert torch.equal(eps[:6], expected)
