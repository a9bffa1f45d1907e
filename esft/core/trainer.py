"""The Trainer seam: everything the experiment may call on a method (ES, GRPO, PPO), and the stage
callbacks a trainer calls back into.

The experiment drives a stage with `trainer.run_stage(stage, callbacks)` and never looks inside. Most
trainers take one step at a time (`StepTrainer.run_stage` is the one loop they share); a trainer whose
library owns the loop (TRL's GRPOTrainer) implements `run_stage` itself and calls the same callbacks after
each optimizer step, so metrics rows, periodic evaluations and checkpoints line up whoever runs the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # typing only: core imports nothing of esft above it
    from esft.run.curriculum import Stage
    from esft.tasks.base import Task


class StageCallbacks(Protocol):
    """The experiment's schedule of one stage, as a trainer sees it."""

    steps: range  # the global steps this stage still has to take (a resumed stage starts after its checkpoint)
    checkpoint_dir: Path  # where a trainer with its own loop may keep its library's state beside esft's

    def step_started(self, step: int) -> None:
        """Record that `step` is under way (status.json), before any work of the step."""

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        """Write the step's metrics row and run a periodic evaluation when one is due."""

    def checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint follows `step` (never the stage's last step: the stage end has its own)."""

    def checkpoint(self, step: int) -> None:
        """Save esft's checkpoint of `step` (the trainer saved its own library state first, if any)."""


@runtime_checkable
class Trainer(Protocol):
    """What every method implements (esft/run/methods.py builds them)."""

    name: str

    @property
    def num_parameters(self) -> int: ...

    def set_stage(self, stage: int, task: "Task") -> None:
        """Train `task` from now on (with awd.anchor=stage the current weights become the anchor)."""

    def run_stage(self, stage: "Stage", callbacks: StageCallbacks) -> None:
        """Take the stage's remaining steps, calling back after each."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to resume bit for bit (the fp32 weights, the stage anchor)."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor], stage: int) -> None: ...

    def diagnostics(self, layer_distances: bool) -> dict[str, Any]:
        """|theta - theta0| (and per layer) for diagnostics.jsonl."""

    def reference_weights(self) -> AbstractContextManager[None]:
        """The model computes with theta0 inside the block (the off-task KL's reference)."""

    def finalize(self) -> None:
        """Leave the model ready for save_pretrained."""


class StepTrainer(ABC):
    """Base of trainers that take one step at a time: the one loop over a stage's steps."""

    @abstractmethod
    def step(self, step: int) -> dict[str, Any]:
        """Take global step `step` and return its metrics row (esft/core/accounting.py: metrics_row)."""

    def run_stage(self, stage: "Stage", callbacks: StageCallbacks) -> None:
        for step in callbacks.steps:
            callbacks.step_started(step)
            metrics = self.step(step)
            callbacks.step_done(step, metrics)
            if callbacks.checkpoint_due(step):
                callbacks.checkpoint(step)
