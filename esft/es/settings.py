"""es.*, typed and checked once: the ES update (Qiu et al. 2025) and how a population is evaluated.

The ES rules themselves (even N with antithetic pairs, sigma and alpha > 0, a known shaping) live in
`esft.es.strategy.ESSettings.validate`; this section feeds it checked numbers and adds what it cannot know
(finiteness, the evaluator, the noise, the cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.core.config import choice, flag, integer, need, number, optional_integer
from esft.errors import EsftError

#: es.alpha above this is refused: the update moves each weight by about alpha * sqrt(2/N) standard normal
#: units per step (z-scored rewards, antithetic pairs), so alpha = 1 already replaces a pretrained weight
#: (|w| ~ 0.02) with noise in one step; the papers use 5e-4 to 1e-2.
ALPHA_MAX = 1.0
ALPHA_HINT = ("; es.alpha is the ES learning rate (theta += alpha/N sum z eps), the papers use 5e-4 to 1e-2, "
              "e.g. es.alpha=0.01")


@dataclass(frozen=True)
class ESSection:
    """es.*: the ES update (Qiu et al. 2025) and how a population is evaluated."""

    population_size: int
    sigma: float
    alpha: float
    antithetic: bool
    shaping: str
    evaluator: str
    rank: int | None  # lowrank only; None where a hand-built config leaves the lowrank keys out
    freeze_nonmatrix: bool | None
    prompts_per_step: int | None
    cache_noise: bool | str
    noise: str

    @classmethod
    def from_config(cls, es: Mapping[str, Any]) -> "ESSection":
        from esft.es.noise import NOISE_SETTINGS
        from esft.es.population import EVALUATORS
        from esft.es.shaping import SHAPERS

        get = lambda key: need(es, key, "es")  # noqa: E731
        size = integer(get("population_size"), "es.population_size", low=2, what="; e.g. es.population_size=16")
        settings = cls(
            population_size=size,
            sigma=number(get("sigma"), "es.sigma", low=0, low_open=True),
            alpha=number(get("alpha"), "es.alpha", low=0, high=ALPHA_MAX, low_open=True, hint=ALPHA_HINT),
            antithetic=flag(get("antithetic"), "es.antithetic"),
            shaping=choice(get("shaping"), "es.shaping", tuple(SHAPERS)),
            evaluator=choice(get("evaluator"), "es.evaluator", tuple(EVALUATORS)),
            rank=optional_integer(es.get("rank"), "es.rank", low=1),
            freeze_nonmatrix=None if es.get("freeze_nonmatrix") is None else flag(es["freeze_nonmatrix"],
                                                                                  "es.freeze_nonmatrix"),
            prompts_per_step=optional_integer(get("prompts_per_step"), "es.prompts_per_step", low=1,
                                              what=" or null (all prompts)"),
            cache_noise=_cache_noise(get("cache_noise")),
            noise=choice(get("noise"), "es.noise", NOISE_SETTINGS),
        )
        settings.strategy().validate()  # the ES rules (even N with pairs, ...) have one home: ESSettings
        return settings

    def strategy(self):
        """The `esft.es.strategy.ESSettings` the update itself uses."""
        from esft.es.strategy import ESSettings

        return ESSettings(self.population_size, self.sigma, self.alpha, self.antithetic, self.shaping)

    @property
    def draws(self) -> int:
        return self.population_size // 2 if self.antithetic else self.population_size


def _cache_noise(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() == "auto"):
        return value
    raise EsftError(f"es.cache_noise must be true, false or auto (got {value!r})")
