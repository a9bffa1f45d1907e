"""torchrun: rank 0 alone logs to the trackers (the other ranks compute the same steps silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from tracking_helpers import TINY, expected_points

from esft.tracking.tensorboard import read_scalar_steps, read_scalars

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
def test_only_rank_zero_logs(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, *TORCHRUN, "-m", "esft", "train", *TINY, "logger=[tensorboard,wandb]",
                           f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert max(Counter(read_scalar_steps(run / "tensorboard")).values()) == 1
    assert read_scalars(run / "tensorboard").keys() == expected_points(run).keys()


def test_followers_open_no_tracker(tmp_path):
    from esft.storage.rundir import RunDir
    from esft.tracking import JsonlLogger, open_loggers

    fanout = open_loggers({"logger": {"extra": ["tensorboard"]}}, RunDir(tmp_path), JsonlLogger({}),
                          main_process=False)
    assert fanout.trackers == [] and not (tmp_path / "trackers.json").exists()
