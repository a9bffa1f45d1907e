"""Seconds per ES step on the tiny default: 1 process vs K torchrun processes, one thread each.

    python scripts/bench_distributed.py                 # 1 vs 2 processes, best of 3 runs, a table
    python scripts/bench_distributed.py --json --nproc 2 --repeats 5 --steps 10

Each run is a real `esft train` (tiny default model and population, `prior=none`, no checkpoints) into a
temporary run dir; the step time is the `seconds` field of metrics.jsonl, which rank 0 measures around the
whole ES step (its share of the population, the all-gather of rewards, the update), so it includes the waiting
for the slower rank. The first step of each run is dropped (allocations, prompt encoding caches). Per run we
take the median step, and report the best run: other users' processes on a shared machine only ever slow a
run down. The warmed-up tiny model comes from ESFT_CACHE (built once, before the timed runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from esft.storage.rundir import read_jsonl

BASE = ["prior=none", "checkpoint.every=0", "eval.every=0", "eval.size=32"]


def run_once(nproc: int, steps: int, overrides: list[str], workdir: Path) -> list[float]:
    """Step times (seconds) of one `esft train` on `nproc` processes with one thread each."""
    run = Path(tempfile.mkdtemp(dir=workdir, prefix=f"np{nproc}-"))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, "-m", "esft", "train", *BASE, f"steps={steps}", *overrides,
               f"hydra.run.dir={run}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"esft train failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return [float(row["seconds"]) for row in read_jsonl(run / "metrics.jsonl")][1:]


def measure(nproc: int, steps: int, repeats: int, overrides: list[str], workdir: Path) -> dict:
    medians = [statistics.median(run_once(nproc, steps, overrides, workdir)) for _ in range(repeats)]
    return {"processes": nproc, "threads_per_process": 1, "seconds_per_step": round(min(medians), 4),
            "runs": [round(m, 4) for m in medians]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the sharded run (default 2)")
    parser.add_argument("--steps", type=int, default=8, help="ES steps per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the best one is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="extra esft overrides, e.g. es.population_size=32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="esft-bench-") as tmp:
        workdir = Path(tmp)
        run_once(1, 1, args.overrides, workdir)  # builds (or loads) the warmed-up model outside the timings
        rows = [measure(n, args.steps, args.repeats, args.overrides, workdir) for n in (1, args.nproc)]
    speedup = rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"]
    if args.json:
        print(json.dumps({"overrides": BASE + args.overrides, "results": rows, "speedup": round(speedup, 2)}))
        return
    print("| processes (1 thread each) | seconds / ES step (best of runs) | speedup |")
    print("| --- | --- | --- |")
    for row in rows:
        ratio = rows[0]["seconds_per_step"] / row["seconds_per_step"]
        print(f"| {row['processes']} | {row['seconds_per_step']:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
