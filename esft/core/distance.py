"""|theta - theta0| globally and per layer, computed block by block.

The drift the papers track is an L2 norm over D parameters. Forming theta - theta0 as one D-sized fp32
temporary would cost 4*D bytes (28 GB for a 7B model, on the GPU where the weights live), so the squared
norm is accumulated over blocks of at most BLOCK_NUMEL numbers, each promoted to fp32 on its own. The sum is
accumulated in float64 on the host, in a fixed block order, so the figure does not depend on how the weights
are laid out (one flat vector or one tensor per parameter).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable

import torch

#: numbers per block: 4M fp32 values (16 MB) bounds the temporary whatever the model size
BLOCK_NUMEL = 1 << 22
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(name: str) -> str:
    """Group a parameter name into a layer label: `layers.03` for transformer blocks, else its module."""
    match = _LAYER.search(name)
    if match:
        return f"layers.{int(match.group(1)):02d}"
    parts = name.split(".")
    return ".".join(parts[:-1][-1:]) or parts[0]


@torch.no_grad()
def squared_distance(current: torch.Tensor, reference: torch.Tensor, block: int = BLOCK_NUMEL) -> float:
    """sum((current - reference)^2) in fp32 blocks (either may be bf16; `reference` may sit on another device)."""
    a, b = current.reshape(-1), reference.reshape(-1)
    total = 0.0
    for start in range(0, a.numel(), block):
        part = a[start:start + block].float() - b[start:start + block].to(a.device, torch.float32)
        total += float(torch.dot(part, part))
    return total


def distances(named_pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
              by_layer: bool = True) -> tuple[float, dict[str, float]]:
    """(|theta - theta0|, {layer: |theta - theta0| restricted to it}) over (name, current, reference) triples."""
    squared: OrderedDict[str, float] = OrderedDict()
    total = 0.0
    for name, current, reference in named_pairs:
        value = squared_distance(current, reference)
        total += value
        if by_layer:
            label = layer_of(name)
            squared[label] = squared.get(label, 0.0) + value
    return total ** 0.5, {label: value ** 0.5 for label, value in squared.items()}
