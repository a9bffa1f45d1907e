"""What this process does for its run: the seam between the experiment and torchrun.

A run is one process (`SINGLE`), or under torchrun a leader (rank 0: writes the run dir) and followers (the
same training steps, silent). The experiment asks its role two questions and calls two hooks; it never
needs to know which rank it is. The roles that shard an ES population live in esft/distributed/torchrun.py and
are chosen there by one factory (`make_experiment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunRole:
    """The single-process role: writes everything, prepares nothing, verifies nothing."""

    name: str = "single"
    #: writes the run dir (logs, status, checkpoints, evaluations, final_model, trackers) and shows progress
    writes: bool = True

    def prepare(self, trainer: Any, method: str) -> None:
        """Adjust the freshly built trainer (a torchrun role shards its population)."""

    def verify(self, trainer: Any) -> None:
        """Check the final weights before they are saved (a torchrun role compares them across ranks)."""


SINGLE = RunRole()
