"""Counter-based Gaussian noise whose bits are the same on every device: Philox4x32-10 plus a quantile table.

Why: torch's own samplers are not a portable definition of noise. The CPU `randn` takes different paths for
scalar and vectorised code (different values for the same seed), and the CUDA generator's output depends on
the GPU's SM count, so "replay on any device" cannot rest on them. This module defines eps as a pure function

    eps(key, tensor, element) = TABLE[16 bits of Philox4x32-10(key, counter(tensor, element))]

computed with integer operations and one table lookup only, so every device, thread count, chunking, kernel
layout, eager or compiled execution yields the same fp32 bits.

Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11): a 128-bit
counter (c0..c3) and a 64-bit key (k0, k1) go through ten rounds of

    (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))
    (k0, k1) += (W0, W1)  (mod 2^32, between rounds)

with M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85. torch has no full uint32 arithmetic,
so words live in int64 tensors and the 32x32 -> 64-bit product is split into two 32x16-bit products (each
below 2^48), which never overflows int64 on any backend: no reliance on wrap-around.

Layout (part of the noise definition, recorded in the replay log as `noise: philox`):
    key     = (member seed, stream)       stream 0: full-rank noise; 1: low-rank factors (esft/es/lowrank.py)
    counter = (block mod 2^32, block div 2^32, tensor index, 0)
    element e of a tensor comes from block e div 8: the four output words, low 16 bits then high 16 bits,
    give elements 8b .. 8b+7 in that order.

Gaussian map: TABLE holds the 2^16 quantiles Phi^-1((i + 1/2) / 2^16) of N(0, 1), scaled in float64 so the
table's second moment is 1 and rounded once to fp32. It is built on the host (Python floats, IEEE double) and
copied to each device, and a gather is exact, so no transcendental runs per number. The distribution is
symmetric with mean 0 and variance 1 to fp32 rounding; it is truncated at |x| <= 4.17 (the last quantile),
which lowers the kurtosis from 3 by about 0.002 and is irrelevant for ES perturbations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from statistics import NormalDist

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10
#: normals per Philox call: 4 words x 2 halves of 16 bits
PER_BLOCK = 8
#: key word k1 of each use of the generator
STREAM_NOISE, STREAM_LOWRANK = 0, 1
#: counter blocks generated per kernel call: 512K normals, a few MB of int64 temporaries in eager mode
CALL_BLOCKS = 1 << 16


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * multiplier for 32-bit a, without any int64 overflow."""
    low_part = a * (multiplier & 0xFFFF)  # < 2^48
    high_part = a * (multiplier >> 16)  # < 2^48
    middle = high_part + (low_part >> 16)  # a*multiplier >> 16, < 2^49
    return middle >> 16, ((middle & 0xFFFF) << 16) | (low_part & 0xFFFF)


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: torch.Tensor,
               k1: torch.Tensor, rounds: int = ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-`rounds` of the counters (int64 tensors holding uint32 words) under key (k0, k1)."""
    for r in range(rounds):
        if r:
            k0 = (k0 + W0) & MASK32
            k1 = (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@cache
def _host_table() -> torch.Tensor:
    """The 2^16 fp32 quantiles of N(0, 1), rescaled to unit second moment (float64 on the host, then fp32)."""
    normal = NormalDist()
    size = 1 << 16
    values = [normal.inv_cdf((i + 0.5) / size) for i in range(size)]
    scale = (sum(v * v for v in values) / size) ** -0.5
    return torch.tensor([v * scale for v in values], dtype=torch.float64).to(torch.float32)


_device_tables: dict[torch.device, torch.Tensor] = {}


def table(device: torch.device | str = "cpu") -> torch.Tensor:
    """TABLE on `device` (copied from the host table once per device, so it is the same bits everywhere)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _device_tables:
        _device_tables[device] = _host_table().to(device)
    return _device_tables[device]


def _normal_blocks(first: torch.Tensor, count: int, tensor: torch.Tensor, key0: torch.Tensor, key1: torch.Tensor,
                   lookup: torch.Tensor) -> torch.Tensor:
    """The 8*count normals of counter blocks first .. first+count-1 (`first`, the keys: 0-d int64 tensors, so a
    compiled kernel is reused for every seed, tensor and offset)."""
    block = torch.arange(count, device=lookup.device, dtype=torch.int64) + first
    c0 = block & MASK32
    c1 = block >> 32
    c2 = torch.zeros_like(block) + tensor
    c3 = torch.zeros_like(block)
    words = torch.stack(philox4x32(c0, c1, c2, c3, key0, key1), dim=1)  # (count, 4)
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=2).reshape(-1)  # (count * 8,)
    return lookup[halves]


_compiled: dict[str, Callable[..., torch.Tensor]] = {}


def use_compile(device: torch.device) -> bool:
    """Whether kernels are compiled with torch.compile: ESFT_PHILOX_COMPILE=1 or 0 forces it; by default only
    on CUDA (on CPU the compiled kernel is faster per number but compiling costs every run tens of seconds,
    more than the eager kernel spends on a small model's whole run; measured figures in the README)."""
    forced = os.environ.get("ESFT_PHILOX_COMPILE", "")
    if forced in ("0", "1"):
        return forced == "1"
    return device.type == "cuda"


def _kernel(device: torch.device, compiled: bool | None) -> Callable[..., torch.Tensor]:
    if not (use_compile(device) if compiled is None else compiled):
        return _normal_blocks
    if device.type not in _compiled:
        _compiled[device.type] = torch.compile(_normal_blocks, dynamic=False, fullgraph=True)
    return _compiled[device.type]


def _call_blocks(needed: int) -> int:
    """Blocks per eager kernel call: the next power of two >= `needed`, at most CALL_BLOCKS, so a small
    tensor does not pay for 512K numbers."""
    return min(CALL_BLOCKS, 1 << max(0, needed - 1).bit_length())


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esft-philox",
                              initializer=torch.set_num_threads, initargs=(1,))


def _parallel_calls(call: Callable[[int], None], blocks: range, workers: int) -> None:
    """Eager CPU kernel calls spread over `workers` threads, each call single-threaded inside.

    Why: the eager kernel is ~250 small elementwise ops per call, and letting torch's intra-op threads split
    each op costs one barrier per op; on a busy 2-core machine that made 2 threads 6x SLOWER than one (442 vs
    71 ns a number, README "Noise"). Whole calls per thread need no barrier until the end. The calls write
    disjoint slices of `out`, so the values are those of the serial loop."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            list(_pool(workers).map(call, blocks))
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def normals(seed: int, tensor: int, start: int, out: torch.Tensor, stream: int = STREAM_NOISE,
            compiled: bool | None = None) -> torch.Tensor:
    """Write elements start .. start+len(out)-1 of tensor `tensor`'s noise under key (seed, stream) into `out`
    (1-D fp32, any device). The values depend only on (seed, stream, tensor, element), never on `start`,
    the length or the device."""
    count = out.numel()
    if count == 0:
        return out
    device = out.device
    lookup = table(device)
    kernel = _kernel(device, compiled)
    as_tensor = lambda value: torch.tensor(value, dtype=torch.int64, device=device)  # noqa: E731
    key0, key1, index = as_tensor(int(seed) & MASK32), as_tensor(int(stream) & MASK32), as_tensor(int(tensor))
    start, stop = int(start), int(start) + count
    first_block, last_block = start // PER_BLOCK, (stop + PER_BLOCK - 1) // PER_BLOCK

    def one_call(block: int) -> None:
        """Counter blocks block .. block+CALL_BLOCKS-1 into their place in `out`."""
        # compiled: always one static shape (one compilation; surplus numbers are cheap on an accelerator)
        blocks = CALL_BLOCKS if kernel is not _normal_blocks else _call_blocks(last_block - block)
        values = kernel(as_tensor(block), blocks, index, key0, key1, lookup)
        lo, hi = max(start, block * PER_BLOCK), min(stop, (block + blocks) * PER_BLOCK)
        out[lo - start:hi - start].copy_(values[lo - block * PER_BLOCK:hi - block * PER_BLOCK])

    calls = range(first_block, last_block, CALL_BLOCKS)
    workers = min(torch.get_num_threads(), len(calls))
    if device.type == "cpu" and kernel is _normal_blocks and workers > 1:
        _parallel_calls(one_call, calls, workers)
    else:
        for block in calls:
            one_call(block)
    return out
