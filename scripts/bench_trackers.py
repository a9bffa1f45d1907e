"""Cost of each tracker: opening it, one metrics row, closing it (README "Experiment tracking").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_trackers.py --rows 500

Each tracker writes to its local default under a temporary run dir (W&B offline, MLflow file store), so the
numbers are the client's own cost, not a network's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from esft.tracking.base import metrics_scalars
from esft.tracking.context import JobInfo, TrackerState
from esft.tracking.registry import TRACKERS, tracker_class

# The fields of a real ES metrics row (values do not matter for the cost).
ROW = {"stage": 0, "task": "add", "reward_mean": 0.5, "reward_std": 0.1, "reward_min": 0.2, "reward_max": 0.9,
       "theta_dist": 3.2, "update_norm": 0.4, "skipped": False, "nonfinite_rewards": 0, "population_evals": 16,
       "prompts": 128, "forward_tokens": 40960, "generated_tokens": 2048, "backward_tokens": 0, "seconds": 2.1,
       "peak_rss_mb": 612.0, "wall_time": 30.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--trackers", nargs="*", default=list(TRACKERS))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as root:
        for name in args.trackers:
            run_dir = Path(root) / name
            run_dir.mkdir()
            start = time.perf_counter()
            tracker = tracker_class(name)({}, JobInfo.standalone(run_dir), TrackerState(run_dir))
            tracker.start()
            opened = time.perf_counter()
            for step in range(1, args.rows + 1):
                tracker.log_metrics({**ROW, "step": step})
            logged = time.perf_counter()
            tracker.close("done")
            closed = time.perf_counter()
            print(f"{name}: open {opened - start:.2f} s, {1000 * (logged - opened) / args.rows:.2f} ms per metrics "
                  f"row ({len(metrics_scalars(ROW))} scalars), close {closed - logged:.2f} s")


if __name__ == "__main__":
    main()
