"""Anchored Weight Decay (Schweighofer et al. 2026), applied after each ES step.

AWD is decoupled (AdamW-style): it acts on the *fine-tuning delta* theta - anchor, scaled by the learning rate,
so it is a restoring force toward the anchor rather than a shrinkage toward zero (plain weight decay would erode
the pretrained weights). With c = alpha * lambda:

    L2:  theta <- anchor + (1 - c) (theta - anchor)                    (paper: lambda = 10)
    L1:  theta <- anchor + sign(d) max(|d| - c, 0),  d = theta - anchor  (proximal soft threshold; paper: 0.01)

Why it works: the ES update adds alpha/sqrt(N) of random-walk noise per coordinate and step in every direction
the reward ignores; L2 turns that walk into an AR(1) process whose spread saturates near
alpha * sqrt(D / (N (2c - c^2))) instead of growing like alpha * sqrt(T D / N).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from esft.core.config import choice, need, number
from esft.errors import EsftError

AWD_KINDS = ("l2", "l1")
ANCHORS = ("start", "stage")


def validate_awd(kind: str, lam: float, alpha: float, anchor: str = "start") -> None:
    """Refuse settings that would not be a contraction toward the anchor."""
    if kind not in AWD_KINDS:
        raise EsftError(f"unknown awd.kind '{kind}'; use one of: {', '.join(AWD_KINDS)}")
    if anchor not in ANCHORS:
        raise EsftError(f"unknown awd.anchor '{anchor}'; use one of: {', '.join(ANCHORS)}")
    if lam < 0:
        raise EsftError(f"awd.lambda must be >= 0 (got {lam}); use 0 to switch AWD off")
    if kind == "l2" and alpha * lam >= 1:
        raise EsftError(
            f"awd.kind=l2 needs alpha*lambda < 1 (got {alpha}*{lam} = {alpha * lam:g}); "
            f"lower awd.lambda below {1 / alpha:g}"
        )


@torch.no_grad()
def apply_awd(theta: torch.Tensor, anchor: torch.Tensor, kind: str, strength: float) -> None:
    """Pull `theta` toward `anchor` in place; `strength` is c = alpha * lambda. No-op for c = 0."""
    if strength <= 0:
        return
    theta.sub_(anchor)
    if kind == "l2":
        theta.mul_(1.0 - strength)
    elif kind == "l1":
        shrunk = theta.abs().sub_(strength).clamp_(min=0.0)
        theta.sign_().mul_(shrunk)
    else:
        raise EsftError(f"unknown awd.kind '{kind}'")
    theta.add_(anchor)


@dataclass(frozen=True)
class AWDSection:
    """awd.*: Anchored Weight Decay (Schweighofer et al. 2026); c = alpha * lambda per step."""

    kind: str
    lam: float
    anchor: str

    @classmethod
    def from_config(cls, awd: Mapping[str, Any], alpha: float, alpha_key: str = "es.alpha") -> "AWDSection":
        kind = choice(need(awd, "kind", "awd"), "awd.kind", AWD_KINDS)
        lam = number(need(awd, "lambda", "awd"), "awd.lambda", low=0)
        anchor = str(need(awd, "anchor", "awd"))
        validate_awd(kind, lam, alpha, anchor)  # the contraction rule (alpha*lambda < 1 for L2) lives there
        return cls(kind, lam, anchor)
