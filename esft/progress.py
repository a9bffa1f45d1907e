"""What a person watching a run sees: a rich live bar on a terminal, plain periodic lines elsewhere.

Under SLURM or a pipe, rich cannot animate and would print only the last frame, so when stdout is not a
terminal the display falls back to one log line every `log_every` steps (and one per evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("esft")


def _evals_text(rows: Sequence[dict[str, Any]]) -> str:
    return " ".join(f"{r['task']} {100 * r['accuracy']:.1f}" for r in rows if r.get("accuracy") is not None)


class RunDisplay:
    """Progress of one run across its stages."""

    def __init__(self, total_steps: int, num_stages: int, log_every: int = 10, console: Console | None = None):
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.total, self.num_stages, self.log_every = total_steps, num_stages, max(1, log_every)
        self.last_evals = ""
        self.stage_label = ""
        self._progress: Progress | None = None
        self._bar = None

    def __enter__(self) -> "RunDisplay":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False)
            self._progress.__enter__()
            self._bar = self._progress.add_task("train", total=self.total, stage="", info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def stage(self, index: int, task: str, completed: int) -> None:
        self.stage_label = f"stage {index + 1}/{self.num_stages} {task}"
        if self._progress is not None:
            self._progress.update(self._bar, completed=completed, stage=self.stage_label)
        else:
            log.info("%s: starting at step %d", self.stage_label, completed + 1)

    def step(self, metrics: dict[str, Any]) -> None:
        info = (f"reward {metrics['reward_mean']:.3f}±{metrics['reward_std']:.3f} "
                f"|θ-θ0| {metrics['theta_dist']:.3g}" + ("  (no step: equal rewards)" if metrics["skipped"] else ""))
        if self._progress is not None:
            self._progress.update(self._bar, completed=metrics["step"], info=f"{info}  | {self.last_evals}")
        elif metrics["step"] % self.log_every == 0 or metrics["skipped"]:
            log.info("%s step %d/%d %s %.2fs/step | last eval: %s", self.stage_label, metrics["step"],
                     self.total, info, metrics["seconds"], self.last_evals or "-")

    def evals(self, step: int, event: str, rows: Sequence[dict[str, Any]]) -> None:
        self.last_evals = _evals_text(rows)
        message = f"eval @ step {step} ({event}): {self.last_evals}"
        if self._progress is not None:
            self._progress.console.log(message)
        else:
            log.info(message)
