"""Population sharding across torchrun ranks: a population evaluator that wraps inplace or lowrank.

Noise draw k (both members of an antithetic pair) belongs to rank k % world, so each rank generates only its
own draws' noise and evaluates only their members with the ordinary evaluator (inplace or lowrank). The
per-member rewards are then all-gathered, so every rank holds all N rewards in member order and `tell` shapes
exactly what a single process would. The update needs every draw's noise: apply_step uses the draws this rank
cached and regenerates the others from their seeds (counter-based streams), which is bit-identical
to the cached noise, so every rank applies the same update as a single process, bit for bit.

Each rank also adds the other ranks' forward/generated token counts to its policy's counters, so the metrics
rows (written by rank 0) count the whole population's compute, as in a single-process run. Every
`checksum_every` steps the ranks compare a sha256 of the master weights and fail loudly if they diverged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esft.distributed import process_group as distributed
from esft.es.params import FlatParams
from esft.es.strategy import ESSettings
from esft.policy import Policy


class ShardedPopulation:
    """Wraps an evaluator (InplaceEvaluator or LowRankEvaluator): same `evaluate(seeds, fitness)` seam."""

    def __init__(self, inner: Any, params: FlatParams, settings: ESSettings, policy: Policy,
                 checksum_every: int = 50) -> None:
        self.inner, self.params, self.settings, self.policy = inner, params, settings, policy
        self.name = f"sharded-{inner.name}"
        self.noise = inner.noise
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.checksum_every = int(checksum_every or 0)
        self.calls = 0

    def owner(self, member: int) -> int:
        """The rank that evaluates `member`: the owner of its noise draw (antithetic pairs stay together)."""
        draw, _ = self.settings.member(member)
        return draw % self.world

    def evaluate(self, seeds: Sequence[int], fitness: Any) -> tuple[list[float], dict[int, Any]]:
        self._maybe_check_weights()
        population = self.settings.population_size
        owners = [self.owner(m) for m in range(population)]
        mine = [m for m in range(population) if owners[m] == self.rank]
        counts_before = (self.policy.counts.forward, self.policy.counts.generated)
        local, cached = self.inner.evaluate(seeds, fitness, members=mine) if mine else ([], {})
        values = [0.0] * population
        for member, reward in zip(mine, local):
            values[member] = reward
        counts = [self.policy.counts.forward - counts_before[0], self.policy.counts.generated - counts_before[1]]
        # one collective per step: the N rewards, then every rank's two compute counters
        slots = values + [0.0] * (2 * self.world)
        slots[population + 2 * self.rank: population + 2 * self.rank + 2] = counts
        owners_all = owners + [r for r in range(self.world) for _ in range(2)]
        gathered = distributed.gather_owned(slots, owners_all)
        self._add_counts(gathered[population:], counts)
        return gathered[:population], cached  # apply_step regenerates the draws other ranks evaluated

    def _add_counts(self, per_rank: list[float], own: list[int]) -> None:
        """Make this rank's counters count the whole population (the metrics rows report per-step totals)."""
        self.policy.counts.forward += int(sum(per_rank[0::2])) - own[0]
        self.policy.counts.generated += int(sum(per_rank[1::2])) - own[1]

    def _maybe_check_weights(self) -> None:
        """Compare the master weights before evaluating (the previous step's result; at the first call, the
        loaded or resumed weights), every `checksum_every` calls."""
        if self.checksum_every and self.calls % self.checksum_every == 0:
            distributed.check_identical(self.params.master, "the master weights")
        self.calls += 1
