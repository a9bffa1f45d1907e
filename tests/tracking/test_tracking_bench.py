"""scripts/bench_trackers.py runs and prints one line per tracker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_trackers.py"


def test_bench_trackers_prints_each_tracker(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--rows", "3", "--trackers", "tensorboard", "mlflow"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["tensorboard", "mlflow"]
    assert all("ms per metrics row (17 scalars)" in line for line in lines)
