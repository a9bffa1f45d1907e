"""Ways to evaluate a population. All return one fitness per member, in member order.

`inplace` is the papers' loop made exact and cheap: members are evaluated one at a time by loading
master + s * sigma * eps into the model (never by adding and subtracting noise in the model's precision),
each antithetic pair shares one noise draw, and the draws can be kept for the update instead of regenerated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from esft.errors import EsftError
from esft.es.noise import NoiseGenerator
from esft.es.params import FlatParams
from esft.es.strategy import ESSettings

Fitness = Callable[[], float]


class InplaceEvaluator:
    """One member at a time on the shared model, restored exactly from the fp32 master after the population."""

    name = "inplace"

    def __init__(self, params: FlatParams, noise: NoiseGenerator, settings: ESSettings,
                 cache_noise: bool = True) -> None:
        self.params = params
        self.noise = noise
        self.settings = settings
        self.cache_noise = cache_noise
        self._buffer = torch.empty(params.numel, device=params.device)

    def evaluate(self, seeds: Sequence[int], fitness: Fitness) -> tuple[list[float], dict[int, torch.Tensor]]:
        """Fitness of every member; also the noise draws kept for the update (empty if not caching)."""
        rewards: list[float] = []
        cache: dict[int, torch.Tensor] = {}
        current_draw = -1
        for member in range(self.settings.population_size):
            draw, sign = self.settings.member(member)
            if draw != current_draw:
                eps = self.noise.flat(seeds[draw], out=None if self.cache_noise else self._buffer)
                eps = eps.to(self.params.device)
                if self.cache_noise:
                    cache[draw] = eps
                current_draw = draw
            self.params.load_perturbed(eps, sign * self.settings.sigma)
            rewards.append(float(fitness()))
        self.params.restore()
        return rewards, cache


EVALUATORS = {"inplace": InplaceEvaluator}


def build_evaluator(name: str, params: FlatParams, noise: NoiseGenerator, settings: ESSettings,
                    cache_noise: bool) -> InplaceEvaluator:
    if name not in EVALUATORS:
        raise EsftError(f"unknown es.evaluator '{name}'; use one of: {', '.join(EVALUATORS)}")
    return EVALUATORS[name](params, noise, settings, cache_noise)
