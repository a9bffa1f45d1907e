"""Compute and memory accounting, counted the same way for every method, and the one builder of the
metrics.jsonl row.

Per step: `forward_tokens` = non-padding token positions through any forward pass of the policy (and of a
reference model), rollouts included (KV-cached decoding feeds each token once); `backward_tokens` = positions
of forward passes run with autograd on (each gets a backward); `generated_tokens` = sampled or decoded
completion tokens. One forward ~ 2*D FLOPs per token, one backward ~ 4*D, so FLOPs ~ 2*D*(forward_tokens +
2*backward_tokens): the unit drift-report uses to compare ES and RL at equal cost.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class StepTokens:
    """Token positions of one step (see the module doc)."""

    forward: int = 0
    backward: int = 0
    generated: int = 0


class TokenMeter:
    """Counts token positions through the forward passes of some models while `active`.

    A forward pre-hook sees every call, generation included (HF generate calls the model once per new token
    with the KV cache). A call counts the non-padding positions it *feeds* (the last `input_ids.shape[1]`
    columns of the attention mask); calls made with autograd on also count as backward positions.
    Evaluations run outside the active window, so they never count as training compute.
    """

    def __init__(self, *models: nn.Module | None) -> None:
        self.active = False
        self.forward = self.backward = 0
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in models if m is not None]

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            count = int(embeds.shape[0] * embeds.shape[1]) if embeds is not None else 0
        else:
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                count = int(mask[:, -ids.shape[1]:].sum())
            else:
                count = int(ids.numel())
        self.forward += count
        if torch.is_grad_enabled():
            self.backward += count

    def start(self) -> None:
        self.forward = self.backward = 0
        self.active = True

    def stop(self) -> tuple[int, int]:
        self.active = False
        return self.forward, self.backward

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak (called at each stage's start, so peaks are per stage).

    Linux lets a process reset its own RSS high-water mark (VmHWM) through /proc/self/clear_refs; elsewhere the
    peak stays process-wide (getrusage), which is then an upper bound of the stage's peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_rss_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_memory(device: torch.device | str = "cpu") -> dict[str, float]:
    """{"peak_rss_mb"} and, on a CUDA device, {"peak_cuda_mb"}: peaks since the last reset_peak_memory."""
    row = {"peak_rss_mb": round(_peak_rss_kb() / 1024, 1)}
    device = torch.device(device)
    if device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return row


def metrics_row(step: int, stage: int, task: str, rewards: Sequence[float] | np.ndarray, *, nonfinite: int,
                theta_dist: float, update_norm: float, seconds: float, tokens: StepTokens,
                device: torch.device | str, skipped: bool = False, skip_reason: str | None = None,
                **extra: Any) -> dict[str, Any]:
    """One metrics.jsonl row (the README's keys), for every method.

    `rewards` are the step's finite rewards (ES: the population's after non-finite ones became the worst
    fitness; RL: the finite rollout rewards) and `nonfinite` how many were not finite; `extra` adds the
    method's own counters (ES: population_evals, prompts; RL: rollouts and its losses)."""
    r = np.asarray(rewards, dtype=np.float64)
    stats = (float(r.mean()), float(r.std()), float(r.min()), float(r.max())) if r.size else (float("nan"),) * 4
    return {
        "step": step, "stage": stage, "task": task,
        "reward_mean": stats[0], "reward_std": stats[1], "reward_min": stats[2], "reward_max": stats[3],
        "theta_dist": theta_dist, "update_norm": update_norm,
        "skipped": skipped, "skip_reason": skip_reason, "nonfinite_rewards": int(nonfinite),
        **extra,
        "forward_tokens": tokens.forward, "generated_tokens": tokens.generated, "backward_tokens": tokens.backward,
        "seconds": round(seconds, 4), **peak_memory(device),
    }
