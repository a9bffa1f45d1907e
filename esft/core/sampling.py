"""Which training prompts a step sees, for every method.

Counter-based: the prompts of step t depend on (run seed, t) only, so a resumed run draws exactly what an
uninterrupted one would, and ES, GRPO and PPO runs with the same seed train on the same prompts."""

from __future__ import annotations

import numpy as np


def sample_indices(seed: int, step: int, population: int, count: int | None) -> np.ndarray:
    """`count` distinct indices into a pool of `population` training examples (all of them if count is None)."""
    if count is None or count >= population:
        return np.arange(population)
    return np.random.default_rng([int(seed), int(step), 7919]).choice(population, size=int(count), replace=False)
