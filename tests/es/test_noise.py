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


def test_the_update_built_block_by_block_equals_the_whole_vector_update(monkeypatch):
    """apply_step builds theta += alpha/N sum c_k eps_k (and AWD) one block of tensors at a time to save two
    D-sized buffers; the result is the whole-vector formula, and cached and regenerated noise agree bit for bit."""
    import esft.es.update as replay
    from esft.es.strategy import ESSettings

    sizes = [5, 7, 300, 11, 64]
    gen = NoiseGenerator(sizes)
    seeds = [member_seed(1, 2, k) for k in range(3)]
    coefficients = [0.7, -1.2, 0.4]
    settings = ESSettings(6, 0.01, 0.05)
    theta0 = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(0))
    theta = theta0 + 0.1
    direction = sum(c * gen.flat(s) for c, s in zip(coefficients, seeds))
    expected = theta0 + (1 - 0.05 * 2.0) * (theta + 0.05 / 6 * direction - theta0)

    monkeypatch.setattr(replay, "_BLOCK", 16)  # several blocks, one of them a single large tensor
    assert [b[:2] for b in replay._tensor_blocks(sizes)] == [(0, 3), (3, 5)]
    cached, regenerated = theta.clone(), theta.clone()
    cache = {k: gen.flat(s) for k, s in enumerate(seeds)}
    norm = replay.apply_step(cached, theta0, gen, seeds, coefficients, settings, "l2", 2.0, cache)
    replay.apply_step(regenerated, theta0, gen, seeds, coefficients, settings, "l2", 2.0)
    assert torch.equal(cached, regenerated)
    partial = theta.clone()  # a torchrun rank's cache: its own draws only; the others regenerated per block
    replay.apply_step(partial, theta0, gen, seeds, coefficients, settings, "l2", 2.0, {1: cache[1]})
    assert torch.equal(partial, cached)
    torch.testing.assert_close(cached, expected, rtol=1e-6, atol=1e-6)
    assert abs(norm - float(torch.linalg.vector_norm(cached - theta))) < 1e-5


def test_cache_noise_auto_keeps_draws_only_while_they_fit():
    import pytest

    from esft.errors import EsftError
    from esft.es.population import CACHE_NOISE_BUDGET, resolve_cache_noise

    tiny, big = 558_720, 1_500_000_000
    assert resolve_cache_noise("auto", "inplace", 8, tiny) is True
    assert resolve_cache_noise("auto", "inplace", 8, big) is False, "8 draws of a 1.5B model would take 48 GB"
    assert resolve_cache_noise("auto", "inplace", 1, CACHE_NOISE_BUDGET // 4) is True
    assert resolve_cache_noise("auto", "inplace", 2, CACHE_NOISE_BUDGET // 4) is False
    assert resolve_cache_noise("auto", "lowrank", 8, big) is True, "low-rank draws are factors"
    assert resolve_cache_noise(True, "inplace", 8, big) is True
    assert resolve_cache_noise(False, "inplace", 8, tiny) is False
    with pytest.raises(EsftError, match="true, false or auto"):
        resolve_cache_noise("sometimes", "inplace", 8, tiny)


def test_large_draws_are_filled_by_several_threads_with_the_serial_values(monkeypatch):
    import esft.es.noise as noise_module
    from esft.es.lowrank import LowRankNoise

    for gen in (NoiseGenerator([300, 7, 1200, 64, 5]), NoiseGenerator([300, 7, 1200, 64, 5], mode="correlated"),
                LowRankNoise([(20, 15), (7,), (40, 30)], rank=2, freeze_nonmatrix=False)):
        seed = member_seed(0, 4, 1)
        serial = gen.flat(seed)
        monkeypatch.setattr(noise_module, "PARALLEL_MIN_NUMEL", 1)
        previous = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            threaded = gen.flat(seed)
            part = gen.fill(seed, range(1, 3), torch.empty(sum(gen.sizes[1:3])))
        finally:
            torch.set_num_threads(previous)
            monkeypatch.undo()
        assert torch.equal(threaded, serial)
        assert torch.equal(part, serial[gen.sizes[0]:sum(gen.sizes[:3])])


def test_large_tensors_are_drawn_in_chunks_with_streams_of_their_own(monkeypatch):
    import esft.es.noise as noise_module

    gen = NoiseGenerator([350, 60], chunk=100)
    seed = member_seed(2, 1, 0)
    eps = gen.flat(seed)
    # a tensor within one chunk is one stream, as before chunking existed
    generator = torch.Generator().manual_seed(noise_module._tensor_seed(seed, 1))
    assert torch.equal(eps[350:], torch.randn(60, generator=generator))
    # the large one: 4 chunks, each its own stream (no chunk repeats another's numbers)
    chunks = [eps[start:start + 100] for start in (0, 100, 200)]
    assert not any(torch.equal(a, b) for i, a in enumerate(chunks) for b in chunks[i + 1:])
    assert [n for n, _ in gen.pieces(seed, 0, torch.empty(350))] == [100, 100, 100, 50]
    assert torch.equal(gen.tensor(seed, 0), eps[:350])
    monkeypatch.setattr(noise_module, "PARALLEL_MIN_NUMEL", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(gen.flat(seed), eps), "threads drawing the chunks give the serial values"
    finally:
        torch.set_num_threads(previous)


def test_replay_rebuilds_the_chunking_each_row_logged():
    """Rows record `chunk`; rows from before chunking existed (no field) replay with one stream per tensor."""
    import pytest

    from esft.errors import EsftError
    from esft.es.update import apply_logged_step, noise_from_row, replay

    shapes = [(30, 10), (7,)]
    chunked = NoiseGenerator([300, 7], shapes, chunk=100)
    assert chunked.describe() == {"noise": "iid", "chunk": 100}
    row = {"step": 1, "seeds": [member_seed(0, 1, 0)], "coefficients": [1.0], "population_size": 2,
           "sigma": 0.1, "alpha": 0.5, "awd_kind": "l2", "awd_lambda": 0.0, "noise": "iid", "chunk": 100}
    legacy = {k: v for k, v in row.items() if k != "chunk"}
    assert noise_from_row(legacy, shapes).chunk is None and noise_from_row(row, shapes).chunk == 100
    theta0 = torch.zeros(307)
    assert torch.equal(replay(theta0, [row], shapes=shapes)[:300], 0.5 / 2 * chunked.flat(row["seeds"][0])[:300])
    unchunked = NoiseGenerator([300, 7], shapes, chunk=None).flat(row["seeds"][0])
    assert torch.equal(replay(theta0, [legacy], shapes=shapes), 0.25 * unchunked)
    with pytest.raises(EsftError, match="chunks of 100"):
        apply_logged_step(theta0.clone(), theta0, row, NoiseGenerator([300, 7], shapes, chunk=None))
