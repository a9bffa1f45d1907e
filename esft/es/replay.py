"""Rebuild the weights at any step from theta0 and the replay log (es_updates.jsonl).

Each logged step holds the draws' seeds and shaped coefficients and the AWD settings; replaying them through
the same `accumulate_update` / `apply_update` / `apply_awd` calls as training reproduces the live weights bit
for bit (same noise streams, same fp32 operations in the same order). The `stage` anchor is the replayed
weights at the first step of each stage, exactly as in training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from esft.es.awd import apply_awd
from esft.es.noise import NoiseGenerator
from esft.es.strategy import ESSettings, accumulate_update, apply_update


def apply_logged_step(theta: torch.Tensor, anchor: torch.Tensor, row: Mapping[str, Any],
                      noise: NoiseGenerator) -> None:
    """Apply one replay-log row to theta in place (no-op for a skipped step)."""
    coefficients = row.get("coefficients")
    if not coefficients:
        return
    seeds = row["seeds"]
    settings = ESSettings(int(row["population_size"]), float(row["sigma"]), float(row["alpha"]))
    direction = accumulate_update(coefficients, lambda draw: noise.flat(seeds[draw]).to(theta.device),
                                  theta.numel(), theta.device)
    apply_update(theta, direction, settings)
    apply_awd(theta, anchor, row["awd_kind"], float(row["alpha"]) * float(row["awd_lambda"]))


def replay(theta0: torch.Tensor, rows: Iterable[Mapping[str, Any]], noise: NoiseGenerator,
           until_step: int | None = None) -> torch.Tensor:
    """Weights after `until_step` (all rows if None), starting from theta0."""
    theta = theta0.clone()
    anchor = theta0
    stage = None
    for row in sorted(rows, key=lambda r: r["step"]):
        if until_step is not None and row["step"] > until_step:
            break
        if row.get("stage") != stage:
            stage = row.get("stage")
            anchor = theta.clone() if row.get("awd_anchor") == "stage" else theta0
        apply_logged_step(theta, anchor, row, noise)
    return theta
