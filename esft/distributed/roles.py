"""`torchrun ... -m esft train`: every rank runs the same Hydra job into ONE run dir; rank 0 alone writes it.

Under torchrun every rank executes `hydra.main`, and Hydra would give each its own timestamped run dir
(hydra #2070). So before Hydra starts, rank 0 picks the run dir (or takes the user's `hydra.run.dir=`) and
broadcasts it; the other ranks get `hydra.output_subdir=null` and `hydra/job_logging=disabled`, so they
leave no `.hydra/` and no log file there.

Inside the job, rank 0 runs the ordinary Experiment (writers, status.json, checkpoints, evaluations,
final_model, the progress display) with a sharded population; the other ranks run a FollowerExperiment that
computes the same training steps from the same checkpoint and writes nothing: they read the run dir (to
resume from the same checkpoint) but skip evaluation (it does not change the weights; rank 0's evals.jsonl is
the single-process one) and stay silent.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from esft.distributed import process_group as distributed
from esft.errors import EsftError
from esft.run.experiment import Experiment
from esft.storage.rundir import JsonlWriter, RunDir

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


def make_experiment(cfg: Any, run_dir: Path) -> Experiment:
    """The Experiment this process runs: the plain one outside torchrun, else the rank's role."""
    if distributed.world_size() <= 1:
        return Experiment(cfg, run_dir)
    return ShardedExperiment(cfg, run_dir) if distributed.is_main() else FollowerExperiment(cfg, run_dir)


class ShardedExperiment(Experiment):
    """Rank 0: the ordinary experiment whose ES trainer evaluates only rank 0's share of each population."""

    def setup(self) -> None:
        if self.method != "es":
            raise EsftError(f"torchrun shards an ES population; method={self.method} runs in one process")
        super().setup()
        from esft.distributed.sharding import shard_population

        every = int((self.cfg.get("distributed") or {}).get("checksum_every", 50) or 0)
        shard_population(self.trainer, every)

    def finish(self) -> None:
        """Compare the final weights on all ranks before rank 0 saves them."""
        distributed.check_identical(self.trainer.params.master, "the final master weights")
        super().finish()


class _NullWriter(JsonlWriter):
    def __init__(self) -> None:  # no file: the follower's rows are rank 0's rows
        pass

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class ReadOnlyRunDir(RunDir):
    """The shared run dir as a follower sees it: readable (status, checkpoints), never written."""

    def writer(self, name: str) -> JsonlWriter:
        return _NullWriter()

    def set_status(self, state: str, **fields: Any) -> None:
        pass


class FollowerExperiment(ShardedExperiment):
    """Ranks > 0: the same training steps as rank 0, from the same checkpoint, with no output at all."""

    def __init__(self, cfg: Any, run_dir: Path | str) -> None:
        super().__init__(cfg, run_dir)
        self.run = ReadOnlyRunDir(run_dir)

    def _repair_logs(self, keep: Any) -> None:
        pass  # rank 0 repairs the logs on resume

    def _write_run_info(self) -> None:
        pass

    def _evaluate(self, step: int, stage: int, event: str) -> None:
        pass  # scoring does not change the weights, and rank 0 writes the scores

    def _checkpoint(self, step: int, stage: int) -> None:
        pass

    def train(self) -> None:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # no second progress bar
            super().train()

    def finish(self) -> None:
        distributed.check_identical(self.trainer.params.master, "the final master weights")
        self.trainer.finalize()
