"""Seeded Gaussian noise that can be regenerated anywhere, in any order.

ES never stores its perturbations: step t's member k is identified by one integer seed, and the noise of
every parameter tensor is regenerated from it on demand (Qiu et al. 2025, "seed-based noise retrieval").

Streams are counter-based: the seed of (step, draw) is derived from the run seed with numpy's SeedSequence
(spawn key = (step, draw)), and each tensor's stream from (member seed, tensor index) the same way. So every
(step, member, tensor) has an independent stream, and regenerating one never requires replaying others.

`mode="correlated"` reproduces the es-awd / es-at-scale reference code exactly: one torch generator seeded
with the member seed for every tensor, so same-shaped tensors get identical noise. It is a reproduction switch
only; the papers' maths (eps ~ N(0, I)) is the iid mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import torch

NOISE_MODES = ("iid", "correlated")


def member_seed(run_seed: int, step: int, draw: int) -> int:
    """The 32-bit seed of noise draw `draw` at ES step `step` (logged in the replay log)."""
    sequence = np.random.SeedSequence(entropy=int(run_seed), spawn_key=(int(step), int(draw)))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _tensor_seed(seed: int, tensor_index: int) -> int:
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(tensor_index),))
    high, low = sequence.generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)  # 63 bits: torch.Generator seeds must fit a signed int64


#: vectors of at least this many numbers are drawn by several threads (FlatNoise.fill)
PARALLEL_MIN_NUMEL = 1 << 22


@cache
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esft-noise")


class FlatNoise:
    """The flat view shared by every noise definition: per-tensor noise concatenated in parameter order."""

    sizes: list[int]
    numel: int

    def tensor(self, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Noise of one parameter tensor, flattened; written into `out` (1-D, that tensor's size) if given."""
        raise NotImplementedError

    def flat(self, seed: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """All tensors' noise concatenated in parameter order, as one fp32 vector of length D."""
        return self.fill(seed, range(len(self.sizes)), torch.empty(self.numel) if out is None else out)

    def fill(self, seed: int, indices: range, out: torch.Tensor) -> torch.Tensor:
        """Tensors `indices` (consecutive) of draw `seed`, concatenated into `out`.

        torch's CPU normal sampler is serial (about 5 ns a number: 7 s per draw of a 1.5B model), but every
        tensor has its own stream, so large vectors are drawn by several threads, one tensor each, largest
        first; the values are those of the serial loop. (randn releases the GIL.)
        """
        spans, offset = [], 0
        for index in indices:
            spans.append((index, out[offset:offset + self.sizes[index]]))
            offset += self.sizes[index]
        workers = min(torch.get_num_threads(), len(spans))
        if workers > 1 and offset >= PARALLEL_MIN_NUMEL:
            spans.sort(key=lambda span: -span[1].numel())
            list(_thread_pool(workers).map(lambda span: self.tensor(seed, span[0], out=span[1]), spans))
        else:
            for index, part in spans:
                self.tensor(seed, index, out=part)
        return out


class NoiseGenerator(FlatNoise):
    """Regenerates the flat fp32 noise vector eps(seed) for parameters of the given sizes."""

    def __init__(self, sizes: Sequence[int], shapes: Sequence[tuple[int, ...]] | None = None,
                 mode: str = "iid") -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        self.sizes = [int(s) for s in sizes]
        self.shapes = list(shapes) if shapes is not None else [(s,) for s in self.sizes]
        self.mode = mode
        self.numel = sum(self.sizes)

    def tensor(self, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Noise of one parameter tensor (flattened), independent of every other tensor's stream. Drawn
        straight into `out` when given (the values depend only on the stream and the element count)."""
        generator = torch.Generator()
        generator.manual_seed(_tensor_seed(seed, index) if self.mode == "iid" else int(seed))  # es-awd: one seed
        return torch.randn(self.sizes[index], generator=generator, out=out)

