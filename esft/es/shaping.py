"""Fitness shaping: plain functions from raw rewards to the coefficients ES weights its noise with.

Each returns None when the population carries no signal (all rewards equal): a z-score would divide by zero
and any step taken would be pure noise, so ES makes no step and says so.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def zscore(rewards: np.ndarray) -> np.ndarray | None:
    """(r - mean) / (std + 1e-8) with the population std (ddof 0), as the papers' reference code does."""
    std = float(rewards.std())
    if std < 1e-12:
        return None
    return (rewards - rewards.mean()) / (std + EPS)


def centered_rank(rewards: np.ndarray) -> np.ndarray | None:
    """Ranks mapped to [-0.5, 0.5] (ties share their mean rank); robust to reward outliers (evosax, OpenAI-ES)."""
    if float(rewards.max() - rewards.min()) == 0.0:
        return None
    order = rewards.argsort(kind="stable")
    ranks = np.empty(len(rewards), dtype=np.float64)
    ranks[order] = np.arange(len(rewards), dtype=np.float64)
    for value in np.unique(rewards):  # average ranks of ties so equal rewards get equal weight
        tied = rewards == value
        ranks[tied] = ranks[tied].mean()
    return ranks / (len(rewards) - 1) - 0.5


SHAPERS = {"zscore": zscore, "centered_rank": centered_rank}


def sanitize(rewards: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf rewards by the worst finite reward (0 if none is finite); return the count replaced."""
    rewards = np.asarray(rewards, dtype=np.float64).copy()
    bad = ~np.isfinite(rewards)
    if bad.any():
        finite = rewards[~bad]
        rewards[bad] = finite.min() if finite.size else 0.0
    return rewards, int(bad.sum())
