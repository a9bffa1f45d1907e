"""theta0 and the AWD anchor for trainers that keep the weights in the model's own tensors (GRPO, PPO).

The ES trainer keeps one flat fp32 master vector instead (esft/es/params.py); both lay parameters out the
same way (trainable, tied weights once, in named_parameters order), so checkpoints of every method hold the
weights identically, and both measure drift with esft/core/distance.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from esft.core.awd import apply_awd
from esft.core.distance import distances


class Anchor:
    """Copies of theta0 (drift is measured from it) and of the AWD anchor (theta0, or the stage start), each
    in its parameter's dtype: exact, since they are those weights, and half the memory of fp32 copies for a
    bf16 model. AWD and the distances compute in fp32."""

    def __init__(self, model: nn.Module) -> None:
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.theta0 = [p.detach().clone() for _, p in self.named]
        self.anchor = self.theta0

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.named)

    def reset_anchor(self) -> None:
        """Make the current weights the AWD anchor (awd.anchor=stage)."""
        self.anchor = [p.detach().clone() for _, p in self.named]

    @torch.no_grad()
    def pull(self, kind: str, strength: float) -> None:
        """theta <- AWD(theta; anchor, c=strength), computed in fp32 (cast back for low-precision weights)."""
        if strength <= 0:
            return
        for (_, param), anchor in zip(self.named, self.anchor):
            if param.dtype == torch.float32:
                apply_awd(param.data, anchor.to(param.device), kind, strength)
            else:
                work = param.data.float()
                apply_awd(work, anchor.to(param.device), kind, strength)
                param.data.copy_(work)

    def _triples(self):
        return ((name, p.detach(), t) for (name, p), t in zip(self.named, self.theta0))

    def distance(self) -> float:
        """|theta - theta0| (L2 over all parameters)."""
        return distances(self._triples(), by_layer=False)[0]

    def layer_distances(self) -> dict[str, float]:
        return distances(self._triples())[1]

    @torch.no_grad()
    def flat(self, tensors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The weights (or `tensors`, e.g. the anchor) as one fp32 CPU vector in FlatParams order."""
        tensors = [p.detach() for _, p in self.named] if tensors is None else tensors
        return torch.cat([t.float().reshape(-1).cpu() for t in tensors])

    def unflat(self, vector: torch.Tensor) -> list[torch.Tensor]:
        if vector.numel() != self.numel:
            raise ValueError(f"checkpoint has {vector.numel()} parameters, the model {self.numel}")
        parts, offset = [], 0
        for _, p in self.named:
            parts.append(vector[offset:offset + p.numel()].view(p.shape).float().clone())
            offset += p.numel()
        return parts

    @torch.no_grad()
    def load_flat(self, vector: torch.Tensor) -> None:
        for (_, param), part in zip(self.named, self.unflat(vector)):
            param.data.copy_(part.to(param.device, param.dtype))

    @contextmanager
    def theta0_loaded(self) -> Iterator[None]:
        """The model computes with theta0 inside the block and with its own weights, exactly, after it (the
        trainers' `reference_weights()`, used by the off-task KL diagnostic)."""
        saved = self.snapshot()
        with torch.no_grad():
            for (_, param), value in zip(self.named, self.theta0):
                param.data.copy_(value.to(param.device, param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, param), value in zip(self.named, saved):
                    param.data.copy_(value)

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for _, p in self.named]

    def moved_since(self, snapshot: Sequence[torch.Tensor]) -> float:
        """|theta - snapshot|: the norm of one step's update (optimizer step and AWD together)."""
        pairs = ((name, p.detach(), s) for (name, p), s in zip(self.named, snapshot))
        return distances(pairs, by_layer=False)[0]
