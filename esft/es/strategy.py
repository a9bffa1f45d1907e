"""The ES update of Qiu et al. (2025), as ask/tell over seeds.

    for each step t:  seeds = ask(t)                       one seed per noise draw
                      r_n   = R(theta + s_n sigma eps_k(n))  evaluated by a population evaluator
                      z     = shape(r)                     z-score (the papers) or centered rank
                      theta += alpha / N * sum_n z_n s_n eps_k(n)
                      theta  = AWD(theta)                  decoupled pull toward the anchor

The learning rate is in the reference code's form (no 1/sigma: "sigma folded into alpha"). With antithetic
pairs member 2k uses +eps_k and 2k+1 uses -eps_k, so draw k's coefficient is z_2k - z_2k+1 and the sum is
still divided by N (the number of members), exactly as the reference form with N members.

`accumulate_update` is the only place an update is built: the live step and the replay of the log both call
it with the same coefficients in the same order, so a replayed checkpoint equals the live one bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esft.errors import EsftError
from esft.es.noise import member_seed
from esft.es.shaping import SHAPERS, sanitize


@dataclass(frozen=True)
class ESSettings:
    population_size: int
    sigma: float
    alpha: float
    antithetic: bool = True
    shaping: str = "zscore"

    def validate(self) -> None:
        n = self.population_size
        if not isinstance(n, int) or n < 2:
            raise EsftError(f"es.population_size must be an integer >= 2 (got {n})")
        if self.antithetic and n % 2:
            raise EsftError(f"es.population_size must be even with es.antithetic=true (got {n})")
        if not self.sigma > 0:
            raise EsftError(f"es.sigma must be > 0 (got {self.sigma})")
        if not self.alpha > 0:
            raise EsftError(f"es.alpha must be > 0 (got {self.alpha})")
        if self.shaping not in SHAPERS:
            raise EsftError(f"unknown es.shaping '{self.shaping}'; use one of: {', '.join(SHAPERS)}")

    @property
    def num_draws(self) -> int:
        return self.population_size // 2 if self.antithetic else self.population_size

    def member(self, index: int) -> tuple[int, float]:
        """(noise draw, sign) of population member `index`."""
        if self.antithetic:
            return index // 2, (1.0 if index % 2 == 0 else -1.0)
        return index, 1.0


@dataclass
class Told:
    """What `tell` decided: per-draw coefficients (None = no step) and bookkeeping for the logs."""

    coefficients: list[float] | None
    rewards: np.ndarray
    nonfinite: int
    reason: str = ""


def ask(run_seed: int, step: int, settings: ESSettings) -> list[int]:
    """Seeds of this step's noise draws; counter-based, so any step's seeds can be recomputed."""
    return [member_seed(run_seed, step, draw) for draw in range(settings.num_draws)]


def tell(rewards: Sequence[float], settings: ESSettings) -> Told:
    """Shape rewards into per-draw coefficients. Non-finite rewards count as the worst fitness."""
    clean, nonfinite = sanitize(np.asarray(rewards, dtype=np.float64))
    shaped = SHAPERS[settings.shaping](clean)
    if shaped is None:
        return Told(None, clean, nonfinite, "all members got the same reward; no step")
    coefficients = [0.0] * settings.num_draws
    for index, value in enumerate(shaped):
        draw, sign = settings.member(index)
        coefficients[draw] += sign * float(value)
    return Told(coefficients, clean, nonfinite)


@torch.no_grad()
def accumulate_update(coefficients: Sequence[float], noise_of: Callable[[int], torch.Tensor],
                      numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """sum_k c_k eps_k in fp32, in draw order (the single code path shared by training and replay)."""
    total = torch.zeros(numel, dtype=torch.float32, device=device)
    for draw, coefficient in enumerate(coefficients):
        if coefficient != 0.0:
            total.add_(noise_of(draw), alpha=float(coefficient))
    return total


@torch.no_grad()
def apply_update(theta: torch.Tensor, direction: torch.Tensor, settings: ESSettings) -> None:
    """theta += alpha / N * sum_k c_k eps_k."""
    theta.add_(direction, alpha=settings.alpha / settings.population_size)
