#!/usr/bin/env python
"""GPU checks of es.noise=philox (issue 15), for scripts/gpu_session.sh: prints one JSON object as its last line.

1. CPU and GPU draw the same bits: a few million numbers of several (seed, tensor, offset) ranges, eager on
   the CPU against eager and compiled on the GPU.
2. A 3-step ES run (inplace, es.noise=philox, a small random Qwen2-shaped model in bf16 on the GPU) replays bit
   for bit on the GPU from theta0 and its replay log, and (the cross-device claim) on the CPU as well.

    python scripts/gpu_check_philox.py --numbers 4194304
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_es  # noqa: E402  (scripts/ is not a package)

from esft.es import philox  # noqa: E402
from esft.es.trainer import ESTrainer  # noqa: E402
from esft.es.update import replay  # noqa: E402


def same_bits(numbers: int) -> dict:
    cases = [(12345, 0, 0), (0xFFFFFFFF, 7, 13), (1, 3, 1 << 20), (2, 300, 5)]  # (seed, tensor, first element)
    result = {}
    for compiled in (False, True):
        equal = True
        for seed, tensor, start in cases:
            cpu = philox.normals(seed, tensor, start, torch.empty(numbers // len(cases)), compiled=False)
            gpu = philox.normals(seed, tensor, start, torch.empty(numbers // len(cases), device="cuda"),
                                 compiled=compiled)
            equal &= torch.equal(cpu, gpu.cpu())
        result["compiled" if compiled else "eager"] = bool(equal)
    return result


def replay_check(steps: int, device: torch.device) -> dict:
    w = bench_es.replace(bench_es.WORKLOADS["gen30m"], dtype=torch.bfloat16, new_tokens=16)
    policy = bench_es.build_policy(w, device)
    task = bench_es.build_task(w, policy)
    rows: list[dict] = []
    es = {"population_size": 8, "sigma": bench_es.SIGMA, "alpha": bench_es.ALPHA, "antithetic": True,
          "shaping": "zscore", "evaluator": "inplace", "prompts_per_step": None, "cache_noise": "auto",
          "noise": "auto"}
    trainer = ESTrainer(policy, es, {"kind": "l2", "lambda": bench_es.AWD_LAMBDA, "anchor": "start"}, seed=0,
                        replay_log=rows.append)
    trainer.set_stage(0, task)
    began = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    live = trainer.params.master
    on_gpu = replay(trainer.params.theta0, rows, shapes=trainer.params.shapes)
    on_cpu = replay(trainer.params.theta0.cpu(), rows, shapes=trainer.params.shapes)
    return {"noise": rows[0].get("noise"), "steps": steps, "seconds": seconds,
            "taken": sum(r["coefficients"] is not None for r in rows),
            "replay_device_identical": bool(torch.equal(on_gpu, live)),
            "replay_cpu_identical": bool(torch.equal(on_cpu, live.cpu())),
            "moved": float(trainer.params.distance())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numbers", type=int, default=1 << 22)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda; cpu runs the replay check alone (a dry run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {"same_bits": same_bits(args.numbers) if device.type == "cuda" else {},
              "replay": replay_check(args.steps, device)}
    print(json.dumps(result))
    ok = all(result["same_bits"].values()) and result["replay"]["replay_device_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
