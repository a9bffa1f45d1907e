"""Helpers of the tracker tests: tiny in-process runs, and what a tracker must hold for a run dir."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esft.resources import conf_dir
from esft.run.experiment import Experiment
from esft.storage.rundir import RunDir
from esft.tracking.fanout import recorded_rows, replay
from esft.tracking.scalar import ScalarTracker

# Two stages of 4 steps; checkpoint at 3 (resume point), evaluations every 2 steps.
TINY = ["model.tiny.warmup.steps=30", "model.tiny.warmup.batch_size=64", "prior.steps=4", "steps=4",
        "eval.every=2", "eval.size=32", "es.population_size=4", "es.prompts_per_step=16", "checkpoint.every=3",
        "es.sigma=0.05", "es.alpha=0.05"]
ALL_TRACKERS = "logger.extra=[tensorboard,wandb,mlflow]"
KL = ["eval.kl.enabled=true", "eval.kl.samples=4", "eval.kl.max_new_tokens=4"]  # diagnostics incl. KL


def tiny_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run_tiny(run_dir: Path, *overrides: str) -> Experiment:
    experiment = Experiment(tiny_config(*overrides), run_dir)
    experiment.run_all()
    return experiment


class MemoryTracker(ScalarTracker):
    """A tracker that keeps what it is sent, to state what a real tracker must hold."""

    name = "memory"

    def __init__(self, held: dict[str, int] | None = None) -> None:
        super().__init__()
        self.held = held or {}
        self.points: dict[str, dict[int, float]] = {}
        self.config: dict | None = None
        self.status: str | None = None

    def _open(self) -> None:
        pass

    def _held_marks(self) -> dict[str, int]:
        return self.held

    def _write(self, scalars, step: int) -> None:
        for tag, value in scalars.items():
            assert step not in self.points.setdefault(tag, {}), f"{tag} sent twice at step {step}"
            self.points[tag][step] = value

    def log_config(self, config) -> None:
        self.config = dict(config)

    def flush(self) -> None:
        pass

    def close(self, status: str) -> None:
        self.status = status


def expected_points(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} that a tracker of this run must hold: the run dir's JSONL rows through the same
    row -> scalar mapping every tracker uses."""
    tracker = MemoryTracker()
    tracker.start()
    replay(tracker, recorded_rows(RunDir(run_dir)))
    return tracker.points
