"""`torchrun ... -m esft train`: every rank runs the same Hydra job into ONE run dir; rank 0 alone writes it.

Under torchrun every rank executes `hydra.main`, and Hydra would give each its own timestamped run dir
(hydra #2070). So before Hydra starts, rank 0 picks the run dir (or takes the user's `hydra.run.dir=`) and
broadcasts it; the other ranks get `hydra.output_subdir=null` and `hydra/job_logging=disabled`, so they
leave no `.hydra/` and no log file there.

Inside the job every rank runs the ordinary Experiment with a `ShardingRole` (esft/run/role.py): rank 0, the
leader, writes the run dir (logs, status.json, checkpoints, evaluations, final_model, the progress display);
the followers compute the same training steps from the same checkpoint and write nothing: they read the run
dir (to resume from the same checkpoint) but skip evaluation (it does not change the weights; rank 0's
evals.jsonl is the single-process one) and stay silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from esft.distributed import process_group as distributed
from esft.distributed.sharding import ShardedPopulation
from esft.errors import EsftError
from esft.run.experiment import Experiment
from esft.run.role import RunRole
from esft.tracking.context import JobInfo

_RUN_DIR = "hydra.run.dir="


def prepare_args(args: list[str]) -> list[str]:
    """Join the process group and make every rank's Hydra arguments name the same run dir (no-op without
    torchrun). Multirun is refused: a sweep's failed job would leave the ranks in different collectives."""
    if not distributed.init():
        return args
    if "-m" in args or "--multirun" in args:
        raise EsftError("-m/--multirun cannot be combined with torchrun: start one torchrun per run, or let a "
                        "Hydra launcher (hydra/launcher=submitit_slurm) fan out single-process jobs")
    given = [a for a in args if a.startswith(_RUN_DIR)]
    chosen = given[-1][len(_RUN_DIR):] if given else datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")
    run_dir = distributed.broadcast_string(chosen)
    args = [a for a in args if not a.startswith(_RUN_DIR)] + [_RUN_DIR + run_dir]
    if not distributed.is_main():
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return args


def make_experiment(cfg: Any, run_dir: Path, job: JobInfo | None = None) -> Experiment:
    """The one factory of this process's experiment: the plain one outside torchrun, else with the rank's role.
    `job` names the tracker group and run of a sweep job (esft/tracking/context.py)."""
    if distributed.world_size() <= 1:
        return Experiment(cfg, run_dir, job=job)
    checksum_every = int(cfg["distributed"]["checksum_every"] or 0)
    role = ShardingRole("leader" if distributed.is_main() else "follower", distributed.is_main(), checksum_every)
    return Experiment(cfg, run_dir, role=role, job=job)


@dataclass(frozen=True)
class ShardingRole(RunRole):
    """A torchrun rank: its ES trainer evaluates only this rank's share of each population (the leader also
    writes the run dir), and the final weights are compared across ranks before the leader saves them."""

    checksum_every: int = 50

    def prepare(self, trainer: Any, method: str) -> None:
        if method != "es":
            raise EsftError(f"torchrun shards an ES population; method={method} runs in one process")
        trainer.use_population(ShardedPopulation(trainer.population, trainer.params, trainer.settings,
                                                 trainer.policy, self.checksum_every))

    def verify(self, trainer: Any) -> None:
        distributed.check_identical(trainer.params.master, "the final master weights")
