"""Seeded Gaussian noise that can be regenerated anywhere, in any order.

ES never stores its perturbations: step t's member k is identified by one integer seed, and the noise of
every parameter tensor is regenerated from it on demand (Qiu et al. 2025, "seed-based noise retrieval").

Streams are counter-based: the seed of (step, draw) is derived from the run seed with numpy's SeedSequence
(spawn key = (step, draw)), and each tensor's stream from (member seed, tensor index) the same way. So every
(step, member, tensor) has an independent stream, and regenerating one never requires replaying others.

`mode="philox"` is the device-portable definition (esft/es/philox.py): Philox4x32-10 keyed by the member seed,
countered by (tensor, element block), mapped to N(0, 1) through a fixed table, integer operations only. Its
bits are the same on every device, thread count and chunking, and it is drawn on the device the weights live
on (no host buffer, no PCIe copy), in any range of elements (`FlatNoise.span`).

`mode="correlated"` reproduces the es-awd / es-at-scale reference code exactly: one torch generator seeded
with the member seed for every tensor, so same-shaped tensors get identical noise. It is a reproduction switch
only; the papers' maths (eps ~ N(0, I)) is the iid mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

import numpy as np
import torch

from esft.es import philox

NOISE_MODES = ("iid", "correlated", "philox")
#: es.noise values a user may write: a mode, or `auto` (resolve_noise_mode)
NOISE_SETTINGS = (*NOISE_MODES, "auto")


def resolve_noise_mode(setting: str, device: torch.device) -> str:
    """es.noise=auto: philox where the weights live on an accelerator (drawn in place, bit-identical across
    devices), iid on a CPU-only run (torch's CPU sampler is 4-12x faster per number than eager Philox there;
    README "Noise"). The replay log records the resolved mode, so logs never say `auto`."""
    if setting == "auto":
        return "iid" if device.type == "cpu" else "philox"
    return setting


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
#: iid streams of tensors larger than this are cut into chunks of this many numbers, each with a stream of
#: its own, so that one large matrix (a 1.5B model's 233M-entry embedding) is not drawn by one thread. Part of
#: the noise *definition*, so every replay-log row records it (`chunk`) and replay rebuilds what was logged.
CHUNK_NUMEL = 1 << 24

Piece = tuple[int, Callable[[], object]]  # (numbers, a call that draws them into their place)


@cache
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esft-noise")


def _seeded_randn(seed: int, out: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randn(out.numel(), generator=generator, out=out)


class FlatNoise:
    """The flat view shared by every noise definition: per-tensor noise concatenated in parameter order."""

    sizes: list[int]
    numel: int

    def tensor(self, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Noise of one parameter tensor, flattened; written into `out` (1-D, that tensor's size) if given."""
        raise NotImplementedError

    def pieces(self, seed: int, index: int, out: torch.Tensor) -> list[Piece]:
        """Independent units of work that together draw tensor `index` into `out` (default: the whole tensor)."""
        return [(out.numel(), lambda: self.tensor(seed, index, out=out))]

    def flat(self, seed: int, out: torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """All tensors' noise concatenated in parameter order, as one fp32 vector of length D (on `device`
        when `out` is not given)."""
        out = torch.empty(self.numel, device=device) if out is None else out
        return self.fill(seed, range(len(self.sizes)), out)

    def spans(self, start: int, stop: int) -> list[tuple[int, int, slice]]:
        """(tensor index, first element in it, slice of the span [start, stop)) per tensor the flat range
        [start, stop) touches: how a block of the flat vector maps onto per-tensor streams."""
        found, offset = [], 0
        for index, size in enumerate(self.sizes):
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                found.append((index, lo - offset, slice(lo - start, hi - start)))
            offset += size
            if offset >= stop:
                break
        return found

    def fill(self, seed: int, indices: range, out: torch.Tensor) -> torch.Tensor:
        """Tensors `indices` (consecutive) of draw `seed`, concatenated into `out`.

        torch's CPU normal sampler is serial (about 5 ns a number: 7 s per draw of a 1.5B model), but every
        tensor (and every chunk of a large one) has its own stream, so large vectors are drawn by several
        threads, largest pieces first; the values are those of the serial loop. (randn releases the GIL.)
        """
        pieces: list[Piece] = []
        offset = 0
        for index in indices:
            pieces.extend(self.pieces(seed, index, out[offset:offset + self.sizes[index]]))
            offset += self.sizes[index]
        workers = min(torch.get_num_threads(), len(pieces))
        if workers > 1 and offset >= PARALLEL_MIN_NUMEL:
            pieces.sort(key=lambda piece: -piece[0])
            list(_thread_pool(workers).map(lambda piece: piece[1](), pieces))
        else:
            for _, draw in pieces:
                draw()
        return out


class DrawRef:
    """One draw of portable noise where the weights live, without materialising it: `ref[start:stop]` is
    that slice of flat(seed) drawn on `device` (or sliced from `cached`, the kept draw). Loading a member,
    the update and the vLLM bridge all take slices of it, so no D-sized noise buffer or host copy exists."""

    def __init__(self, noise: "NoiseGenerator", seed: int, device: torch.device,
                 cached: torch.Tensor | None = None) -> None:
        self.noise, self.seed, self.device, self.cached = noise, int(seed), torch.device(device), cached

    def __len__(self) -> int:
        return self.noise.numel

    def __getitem__(self, part: slice) -> torch.Tensor:
        start, stop, _ = part.indices(self.noise.numel)
        if self.cached is not None:
            return self.cached[start:stop]
        return self.noise.span(self.seed, start, stop, torch.empty(stop - start, device=self.device))


def perturbed(base: torch.Tensor, eps: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """base + scale * eps as two separately rounded fp32 operations (never a fused multiply-add, which CPU
    vector paths and GPUs use but CPU scalar paths do not), so a member's weights are the same bits on every
    device: the portable noise's load, shared by FlatParams and the vLLM bridge."""
    scaled = torch.mul(eps, scale)
    return torch.add(base, scaled, out=out) if out is not None else base + scaled


class NoiseGenerator(FlatNoise):
    """Regenerates the flat fp32 noise vector eps(seed) for parameters of the given sizes."""

    def __init__(self, sizes: Sequence[int], shapes: Sequence[tuple[int, ...]] | None = None,
                 mode: str = "iid", chunk: int | None = CHUNK_NUMEL) -> None:
        """`chunk`: the iid chunk length (CHUNK_NUMEL; None = one stream per tensor however large, the
        definition of replay-log rows written before chunking existed, which record no `chunk`). philox
        streams need no chunks: any element range is drawn directly."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        self.chunk = chunk if mode == "iid" else None
        self.sizes = [int(s) for s in sizes]
        self.shapes = list(shapes) if shapes is not None else [(s,) for s in self.sizes]
        self.mode = mode
        self.numel = sum(self.sizes)

    def describe(self) -> dict[str, Any]:
        """What the replay log records so esft/es/update.py can rebuild this generator."""
        return {"noise": self.mode, **({"chunk": self.chunk} if self.mode == "iid" else {})}

    @property
    def portable(self) -> bool:
        """Whether draws are made on the weights' device with the same bits everywhere (philox)."""
        return self.mode == "philox"

    def span(self, seed: int, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Elements [start, stop) of flat(seed), into `out` (any device): philox draws exactly that range;
        the torch-sampler modes draw the whole tensors it touches (their streams cannot skip ahead)."""
        for index, first, part in self.spans(start, stop):
            if self.portable:
                philox.normals(seed, index, first, out[part])
            else:
                values = self.tensor(seed, index)
                out[part].copy_(values[first:first + part.stop - part.start])
        return out

    def fill(self, seed: int, indices: range, out: torch.Tensor) -> torch.Tensor:
        """philox: one tensor after another (torch's intra-op threads already spread each kernel over the
        cores, and the values do not depend on it); else FlatNoise.fill's thread pool over host streams."""
        if not self.portable:
            return super().fill(seed, indices, out)
        offset = 0
        for index in indices:
            philox.normals(seed, index, 0, out[offset:offset + self.sizes[index]])
            offset += self.sizes[index]
        return out

    def tensor(self, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Noise of one parameter tensor (flattened), independent of every other tensor's stream. Drawn
        straight into `out` when given (the values depend only on the stream and the element count)."""
        out = torch.empty(self.sizes[index]) if out is None else out
        if self.portable:
            return philox.normals(seed, index, 0, out)
        for _, draw in self.pieces(seed, index, out):
            draw()
        return out

    def pieces(self, seed: int, index: int, out: torch.Tensor) -> list[Piece]:
        """iid: one stream per tensor, or per CHUNK_NUMEL-sized chunk of a larger tensor (chunk c seeded from
        (tensor seed, c)); correlated: es-awd's one generator seeded with the member seed for every tensor,
        never chunked, so that it stays the reference code's noise."""
        size = self.sizes[index]
        if self.portable:
            return [(size, lambda: philox.normals(seed, index, 0, out))]
        if self.mode != "iid":
            return [(size, lambda: _seeded_randn(int(seed), out))]
        stream = _tensor_seed(seed, index)
        if self.chunk is None or size <= self.chunk:
            return [(size, lambda: _seeded_randn(stream, out))]
        chunks = [out[start:start + self.chunk] for start in range(0, size, self.chunk)]
        return [(part.numel(), partial(_seeded_randn, _tensor_seed(stream, c), part)) for c, part in enumerate(chunks)]
