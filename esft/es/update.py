"""Rebuild the weights at any step from theta0 and the replay log (es_updates.jsonl).

Each logged step holds the draws' seeds and shaped coefficients and the AWD settings; replaying them through
the same `accumulate_update` / `apply_update` / `apply_awd` calls as training reproduces the live weights bit
for bit (same noise streams, same fp32 operations in the same order). The `stage` anchor is the replayed
weights at the first step of each stage, exactly as in training.

`apply_step` is the one function that turns a step's seeds and coefficients into new weights; the live trainer
calls it too. Each row names its noise definition (`noise`: iid | correlated | philox | lowrank, plus `chunk` for iid
and `rank` and `freeze_nonmatrix` for lowrank), so `noise_from_row` rebuilds the generator the run used; rows
written before those fields existed are iid with one stream per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import torch

from esft.core.awd import apply_awd
from esft.errors import EsftError
from esft.es.lowrank import LowRankNoise, apply_lowrank_step
from esft.es.noise import NoiseGenerator
from esft.es.strategy import ESSettings, accumulate_update, apply_update

Noise = Union[NoiseGenerator, LowRankNoise]


def noise_from_row(row: Mapping[str, Any], shapes: Sequence[tuple[int, ...]]) -> Noise:
    """The noise generator a logged step was drawn from, for parameters of the given shapes."""
    mode = row.get("noise", "iid")
    if mode == "lowrank":
        return LowRankNoise(shapes, int(row["rank"]), bool(row["freeze_nonmatrix"]), str(row.get("factors", "iid")))
    if mode == "philox":
        return NoiseGenerator([int(torch.Size(s).numel()) for s in shapes], shapes, "philox")
    chunk = row.get("chunk")  # absent in rows written before chunked streams: one stream per tensor
    return NoiseGenerator([int(torch.Size(s).numel()) for s in shapes], shapes, mode,
                          chunk=int(chunk) if chunk is not None else None)


@torch.no_grad()
def apply_step(theta: torch.Tensor, anchor: torch.Tensor, noise: Noise, seeds: Sequence[int],
               coefficients: Sequence[float], settings: ESSettings, awd_kind: str, awd_lambda: float,
               cache: Mapping[int, Any] | None = None) -> float:
    """theta += alpha/N sum_k c_k eps_k, then the AWD pull; returns |theta_new - theta_old|. `cache` holds the
    noise (flat eps, or low-rank factors) of the draws the evaluator kept: all of them, none, or a torchrun
    rank's own; the others are regenerated, which gives the same numbers."""
    strength = settings.alpha * awd_lambda
    cached = cache or {}
    if getattr(noise, "portable", False):
        return _portable_step(theta, anchor, noise, seeds, coefficients, settings, awd_kind, strength, cached)
    if isinstance(noise, LowRankNoise):
        draws = [cached[d] if d in cached else noise.draw(seed) for d, seed in enumerate(seeds)]
        return apply_lowrank_step(theta, anchor, noise, seeds, coefficients,
                                  settings.alpha / settings.population_size, awd_kind, strength, draws)
    squared = 0.0
    for first, last, part in _tensor_blocks(noise.sizes):
        def noise_of(draw: int, first: int = first, last: int = last, part: slice = part) -> torch.Tensor:
            """The block of draw `draw`: a slice of the kept flat eps, else regenerated for this block only."""
            if draw in cached:
                return cached[draw][part]
            return _block_noise(noise, seeds[draw], first, last).to(theta.device)

        direction = accumulate_update(coefficients, noise_of, part.stop - part.start, theta.device)
        block = theta[part]
        before = block.clone()
        apply_update(block, direction, settings)
        apply_awd(block, anchor[part], awd_kind, strength)
        squared += float(torch.linalg.vector_norm(block - before)) ** 2
    return squared ** 0.5


#: elements per block of the portable (philox) update: 16 MB of fp32 per buffer, three buffers
PORTABLE_BLOCK = 1 << 22


def _portable_step(theta: torch.Tensor, anchor: torch.Tensor, noise: NoiseGenerator, seeds: Sequence[int],
                   coefficients: Sequence[float], settings: ESSettings, awd_kind: str, strength: float,
                   cached: Mapping[int, Any]) -> float:
    """apply_step for philox noise, on theta's device, one block of PORTABLE_BLOCK numbers at a time:

        d = sum_k (c_k * eps_k)   (draw order),   theta += (alpha / N) * d,   then AWD

    each product and each sum a separately rounded fp32 operation (no FMA, whose use differs between CPU
    vector and scalar paths and GPUs), and every eps_k block drawn where theta lives. Elementwise, the result
    does not depend on the block size, so live, resumed and replayed steps agree bit for bit on any device.
    Besides theta it holds three blocks (noise, direction, previous weights): no D-sized buffer."""
    rate = settings.alpha / settings.population_size
    size = min(PORTABLE_BLOCK, max(1 << 16, noise.numel // 16), noise.numel)  # any size gives the same theta
    eps, direction, previous = (torch.empty(size, device=theta.device) for _ in range(3))
    squared = 0.0
    for start in range(0, noise.numel, size):
        stop = min(noise.numel, start + size)
        n = stop - start
        total = direction[:n].zero_()
        for draw, coefficient in enumerate(coefficients):
            if coefficient == 0.0:
                continue
            values = cached[draw][start:stop] if draw in cached else noise.span(seeds[draw], start, stop, eps[:n])
            total.add_(torch.mul(values, float(coefficient), out=eps[:n]))  # eps[:n] may be `values` itself
        block = theta[start:stop]
        before = previous[:n].copy_(block)
        block.add_(total.mul_(rate))
        apply_awd(block, anchor[start:stop], awd_kind, strength)
        before.sub_(block)
        squared += float(torch.dot(before, before))
    return squared ** 0.5


def _block_noise(noise: Noise, seed: int, first: int, last: int) -> torch.Tensor:
    """Tensors first..last-1 of draw `seed`, concatenated: the same values as that slice of noise.flat(seed)."""
    return noise.fill(seed, range(first, last), torch.empty(sum(noise.sizes[first:last])))


_BLOCK = 1 << 22  # elements per update block at least (16 MB of fp32) ...
_BLOCKS = 16  # ... or a 16th of the parameters, whichever is more


def _tensor_blocks(sizes: Sequence[int]) -> Iterable[tuple[int, int, slice]]:
    """Runs of consecutive whole tensors of max(_BLOCK, D / _BLOCKS) elements (one tensor when it is larger):
    the update is built one block at a time, so besides theta it needs 1/16 of D (a 1.5B model: 94M numbers),
    not a D-sized direction and a D-sized copy of the old weights (those two alone would double an fp32
    model's footprint). Large models' blocks hold many tensors, so regenerated noise is drawn by several
    threads (FlatNoise.fill). The blocks depend on the sizes alone: training and replay cut them alike, which
    keeps the two bit-identical."""
    limit = max(_BLOCK, sum(sizes) // _BLOCKS)
    first, offset, start = 0, 0, 0
    for index, size in enumerate(sizes):
        offset += size
        if offset - start >= limit or index == len(sizes) - 1:
            yield first, index + 1, slice(start, offset)
            first, start = index + 1, offset


def apply_logged_step(theta: torch.Tensor, anchor: torch.Tensor, row: Mapping[str, Any], noise: Noise) -> None:
    """Apply one replay-log row to theta in place (no-op for a skipped step)."""
    coefficients = row.get("coefficients")
    if not coefficients:
        return
    logged = row.get("noise", "iid")
    if logged != noise.mode:
        raise EsftError(f"replay-log step {row.get('step')} used {logged} noise, the generator given is {noise.mode}")
    if logged == "iid" and row.get("chunk") != noise.chunk:
        raise EsftError(f"replay-log step {row.get('step')} drew iid noise in chunks of {row.get('chunk')}, the "
                        f"generator given uses {noise.chunk}; let replay rebuild it (noise=None)")
    settings = ESSettings(int(row["population_size"]), float(row["sigma"]), float(row["alpha"]))
    apply_step(theta, anchor, noise, row["seeds"], coefficients, settings, row["awd_kind"], float(row["awd_lambda"]))


def replay(theta0: torch.Tensor, rows: Iterable[Mapping[str, Any]], noise: Noise | None = None,
           until_step: int | None = None, shapes: Sequence[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Weights after `until_step` (all rows if None), starting from theta0. Without `noise`, each row's own
    noise definition is rebuilt from `shapes` (the trainable parameters' shapes, in FlatParams order)."""
    if noise is None and shapes is None:
        raise ValueError("replay needs the noise generator or the parameter shapes")
    theta = theta0.to(torch.float32, copy=True)  # theta0 may be kept in the model's bf16 (FlatParams)
    anchor = theta0
    stage = None
    for row in sorted(rows, key=lambda r: r["step"]):
        if until_step is not None and row["step"] > until_step:
            break
        if row.get("stage") != stage:
            stage = row.get("stage")
            anchor = theta.clone() if row.get("awd_anchor") == "stage" else theta0
        apply_logged_step(theta, anchor, row, noise if noise is not None else noise_from_row(row, shapes))
    return theta
