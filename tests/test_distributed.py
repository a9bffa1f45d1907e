"""torchrun population sharding: 2 gloo processes reproduce a single-process run bit for bit.

Only rewards cross processes and every rank rebuilds the update from the counter-based noise streams, so the
final weights and every log row (timing aside) must equal the single-process run with the same seed and
population; rank 0 alone writes the run dir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from esft.distributed.sharding import ShardedPopulation
from esft.errors import EsftError
from esft.es.strategy import ESSettings
from esft.storage.rundir import read_jsonl

# 400 warm-up steps leave the tiny model able to score a little, so every ES step really updates the weights
FAST = ["model.tiny.warmup.steps=400", "model.tiny.warmup.batch_size=64", "prior.steps=3", "steps=3",
        "eval.every=2", "eval.size=64", "es.population_size=8", "es.prompts_per_step=32", "checkpoint.every=2",
        "es.sigma=0.05", "es.alpha=0.05", "distributed.checksum_every=2"]
TIMING = {"seconds", "wall_time", "peak_rss_mb"}
LOGS = ("evals.jsonl", "metrics.jsonl", "es_updates.jsonl", "diagnostics.jsonl")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "ESFT_CACHE": str(tmp_path.parent / "esft-cache"), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def _train(launcher: list[str], run: Path, tmp_path: Path, extra: tuple[str, ...] = ()) -> None:
    result = subprocess.run([sys.executable, *launcher, "-m", "esft", "train", *FAST, *extra,
                             f"hydra.run.dir={run}"], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _rows(run: Path, name: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_jsonl(run / name)]


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _train([], single, tmp_path)
    _train(TORCHRUN, sharded, tmp_path)
    assert not all(row["skipped"] for row in read_jsonl(single / "metrics.jsonl")), "the run must really step"
    for name in LOGS:
        assert _rows(sharded, name) == _rows(single, name), name
    want = load_file(str(single / "final_model" / "model.safetensors"))
    got = load_file(str(sharded / "final_model" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in single.iterdir())
    assert not list(tmp_path.glob("outputs")), "no rank may make a run dir of its own"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, results) -> None:
    """Worker of the in-process gloo tests: owned slots, string broadcast, and a divergence check."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from esft.distributed import process_group as distributed

    gathered = distributed.gather_owned([float(rank), -0.0, float("nan")], owners=[1, 0, 1])
    said = distributed.broadcast_string("from rank 0" if rank == 0 else None)
    distributed.check_identical(torch.arange(5.0), "same")
    try:
        distributed.check_identical(torch.full((3,), float(rank)), "the master weights")
        diverged = ""
    except EsftError as exc:
        diverged = str(exc)
    results.put((rank, repr(gathered), said, diverged))
    dist.destroy_process_group()


def test_collectives_on_two_gloo_processes():
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_rank_main, args=(_free_port(), results), nprocs=2, start_method="spawn")
    rows = sorted(results.get() for _ in range(2))
    for rank, gathered, said, diverged in rows:
        assert gathered == repr([1.0, -0.0, float("nan")])  # each slot from its owner, bit for bit
        assert said == "from rank 0"
        assert "the master weights diverged across ranks" in diverged


def test_draws_are_owned_round_robin_with_pairs_together():
    sharded = ShardedPopulation.__new__(ShardedPopulation)
    sharded.settings, sharded.world = ESSettings(8, 0.1, 0.1, antithetic=True), 2
    assert [sharded.owner(m) for m in range(8)] == [0, 0, 1, 1, 0, 0, 1, 1]
    sharded.settings = ESSettings(5, 0.1, 0.1, antithetic=False)
    assert [sharded.owner(m) for m in range(5)] == [0, 1, 0, 1, 0]


def test_a_ranks_partial_noise_cache_updates_like_a_full_one():
    """A rank keeps only the draws it evaluated; apply_step regenerates the others, bit for bit."""
    from esft.es.lowrank import LowRankNoise
    from esft.es.noise import NoiseGenerator
    from esft.es.update import apply_step

    settings, seeds, coefficients = ESSettings(4, 0.1, 0.1), [11, 12], [0.5, -1.5]
    for noise in (NoiseGenerator([6, 4], [(2, 3), (4,)], "iid"), LowRankNoise([(2, 3), (4,)], 1, False)):
        keep = noise.flat if isinstance(noise, NoiseGenerator) else noise.draw
        full, partial, none = (torch.zeros(10) for _ in range(3))
        apply_step(full, torch.zeros(10), noise, seeds, coefficients, settings, "l2", 1.0,
                   {0: keep(11), 1: keep(12)})
        apply_step(partial, torch.zeros(10), noise, seeds, coefficients, settings, "l2", 1.0, {1: keep(12)})
        apply_step(none, torch.zeros(10), noise, seeds, coefficients, settings, "l2", 1.0)
        assert torch.equal(partial, full) and torch.equal(none, full) and full.abs().sum() > 0
