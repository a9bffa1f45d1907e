"""What the gradient baselines (GRPO, PPO) share beyond esft/core: the metrics row of a rollout step and the
trainer-seam methods of a trainer that keeps theta0 in an `Anchor`. Rollouts are sampled by the shared Policy
(`Policy.sample` returns a `Rollout`), never by driving the model here.

AWD for RL is the same decoupled pull as for ES (esft/core/awd.py), applied right after every optimizer step,
with strength c = lr * awd.lambda (lr: the optimizer's *current* learning rate), exactly as AdamW scales its
decoupled weight decay -- except that it decays toward the anchor theta0, not toward zero. No anchor codebase
offers AWD for RL; it is here so drift-report can put ES+AWD beside RL+AWD. Note the scale: with Adam each
coordinate moves about lr per step, so an L2 pull of lr*lambda caps a steadily pushed coordinate near 1/lambda;
useful RL lambdas are therefore larger than ES's (where c = alpha*lambda acts on alpha/sqrt(N)-sized steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from esft.core.accounting import StepTokens, metrics_row, peak_memory, reset_peak_memory
from esft.core.anchor import Anchor
from esft.policy import Policy


def rollout_metrics(step: int, stage: int, task: str, rewards: Sequence[float], anchor: Anchor, update_norm: float,
                    seconds: float, tokens: StepTokens, device: torch.device, **extra: Any) -> dict[str, Any]:
    """The metrics row of one RL step: reward statistics over the finite rollout rewards (a non-finite reward
    is counted, not averaged in; RL never skips a step)."""
    r = np.asarray(rewards, dtype=np.float64)
    finite = r[np.isfinite(r)]
    return metrics_row(step, stage, task, finite, nonfinite=int(r.size - finite.size), theta_dist=anchor.distance(),
                       update_norm=update_norm, seconds=seconds, tokens=tokens, device=device, rollouts=int(r.size),
                       **extra)


class AnchoredTrainerMixin:
    """Trainer-seam methods shared by the gradient baselines, which keep theta0 and the AWD anchor in
    `self.anchor` (an `Anchor`) and run on `self.policy`."""

    anchor: Anchor
    policy: Policy
    awd_anchor: str
    stage: int
    task: Any

    @property
    def num_parameters(self) -> int:
        return self.anchor.numel

    def set_stage(self, stage: int, task: Any) -> None:
        """Train `task` from now on; with awd.anchor=stage the current weights become the anchor."""
        if stage != self.stage and self.awd_anchor == "stage":
            self.anchor.reset_anchor()
        self.stage, self.task = stage, task
        reset_peak_memory(self.policy.device)  # peak memory in the metrics rows is per stage

    def reference_weights(self):
        """Context manager: the model computes with theta0 inside the block (for the off-task KL)."""
        return self.anchor.theta0_loaded()

    def diagnostics(self, layer_distances: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"theta_dist": self.anchor.distance(), **peak_memory(self.policy.device)}
        if layer_distances:
            row["layers"] = self.anchor.layer_distances()
        return row

