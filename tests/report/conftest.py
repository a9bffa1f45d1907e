"""Fabricated run dirs with known curves, written through the run-dir contract (esft.storage.rundir).

The default run is a two-stage curriculum add (steps 1-4) -> reverse (steps 5-10) with the eval-only task
subtract, evals every 2 steps. Eval points are the global steps 0, 2, 4, 6, 8, 10; at step 4 the same weights
are written twice (stage 0 `stage_end` and stage 1 `stage_start`), exactly as the trainer does. A curve is given
as the accuracy at those six steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from esft.storage.rundir import (
    EVALS_FILE,
    HYDRA_CONFIG,
    METRICS_FILE,
    RUN_INFO_FILE,
    STATUS_FILE,
    write_json_atomic,
    write_rows,
)

PRIOR_STEPS = 4
STEPS = 6
EVERY = 2
EVAL_STEPS = [0, 2, 4, 6, 8, 10]
# prior task add: learned in stage 0 (0.2 -> 0.9), then 0.9, 0.5, 0.3, 0.6 during the new stage
CURVES = {
    "add": [0.2, 0.6, 0.9, 0.5, 0.3, 0.6],
    "reverse": [0.5, 0.5, 0.5, 0.6, 0.8, 0.9],
    "subtract": [0.8, 0.8, 0.8, 0.7, 0.7, 0.8],
}
NUM_PARAMETERS = 4000  # with N=16, alpha=0.01, T=10: alpha*sqrt(T*D/N) = 0.01*sqrt(2500) = 0.5
THETA_FINAL = 0.6


def config(seed: int = 0, lam: float = 0.0, pop: int = 16, prior: list[str] | None = None,
           task: str = "reverse", method: str = "es") -> dict[str, Any]:
    prior = ["add"] if prior is None else prior
    return {
        "seed": seed, "steps": STEPS, "data_dir": None,
        "es": {"population_size": pop, "sigma": 0.01, "alpha": 0.01, "antithetic": True, "evaluator": "inplace"},
        "awd": {"kind": "l2", "lambda": lam, "anchor": "start"},
        "method": {"name": method},
        "task": {"name": task},
        "prior": {"tasks": [{"name": t} for t in prior], "steps": PRIOR_STEPS if prior else None},
        "eval": {"every": EVERY, "tasks": [{"name": "subtract"}], "size": 100, "batch_size": 64},
        "model": {"name": "tiny", "cache_dir": "/tmp/esft-cache"},
        "checkpoint": {"every": 50, "keep": 2},
    }


def stage_list(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = [t["name"] for t in cfg["prior"]["tasks"]] + [cfg["task"]["name"]]
    out, first = [], 1
    for i, task in enumerate(tasks):
        length = STEPS if i == len(tasks) - 1 else PRIOR_STEPS
        out.append({"index": i, "task": task, "method": cfg["method"]["name"], "first_step": first,
                    "last_step": first + length - 1})
        first += length
    return out


def eval_rows(stages: list[dict[str, Any]], curves: dict[str, list[float]], until: int) -> list[dict]:
    rows = []
    curriculum = [s["task"] for s in stages]
    for s in stages:
        start = s["first_step"] - 1
        steps = [start] + [t for t in range(start + 1, s["last_step"] + 1) if t % EVERY == 0]
        for step in steps:
            if step > until:
                break
            event = "stage_start" if step == start else "stage_end" if step == s["last_step"] else "periodic"
            for task, curve in curves.items():
                role = "curriculum" if task in curriculum else "eval_only"
                acc = curve[EVAL_STEPS.index(step)]
                rows.append({"step": step, "stage": s["index"], "task": task, "accuracy": acc, "reward": acc,
                             "n": 100, "event": event, "role": role})
    return rows


def metric_rows(stages: list[dict[str, Any]], pop: int, theta_final: float, until: int) -> list[dict]:
    last = stages[-1]["last_step"]
    rows = []
    for s in stages:
        for step in range(s["first_step"], min(s["last_step"], until) + 1):
            rows.append({
                "step": step, "stage": s["index"], "task": s["task"], "reward_mean": 0.5, "reward_std": 0.1,
                "reward_min": 0.0, "reward_max": 1.0, "theta_dist": theta_final * math.sqrt(step / last),
                "update_norm": 0.01, "skipped": False, "seconds": 0.5, "population_evals": pop,
                "forward_tokens": 1000, "generated_tokens": 100, "wall_time": 0.5 * step,
            })
    return rows


def write_run(path: Path, *, seed: int = 0, lam: float = 0.0, pop: int = 16, prior: list[str] | None = None,
              curves: dict[str, list[float]] | None = None, state: str | None = "done",
              until: int | None = None, theta_final: float = THETA_FINAL, message: str = "") -> Path:
    """Write one run dir; `until` truncates it after that step (a run still running or killed)."""
    cfg = config(seed=seed, lam=lam, pop=pop, prior=prior)
    stages = stage_list(cfg)
    curves = dict(CURVES if curves is None else curves)
    if not cfg["prior"]["tasks"]:
        curves.pop("add", None)
    until = stages[-1]["last_step"] if until is None else until
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), path / HYDRA_CONFIG)
    write_json_atomic(path / RUN_INFO_FILE, {
        "stages": stages, "curriculum_tasks": [s["task"] for s in stages], "eval_tasks": ["subtract"],
        "num_parameters": NUM_PARAMETERS, "method": "es"})
    write_rows(path / METRICS_FILE, metric_rows(stages, pop, theta_final, until))
    write_rows(path / EVALS_FILE, eval_rows(stages, curves, until))
    if state is not None:
        write_json_atomic(path / STATUS_FILE, {"state": state, "step": until, "stage": len(stages) - 1,
                                               "message": message})
    return path


def write_sweep(root: Path, jobs: list[dict[str, Any]]) -> Path:
    """A Hydra multirun root: multirun.yaml and one `N_override` job dir per entry of `jobs`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for number, job in enumerate(jobs):
        keys = {"lam": "awd.lambda", "pop": "es.population_size", "seed": "seed"}
        name = ",".join(f"{keys[k]}={v}" for k, v in job.items() if k in keys) or "job"
        write_run(root / f"{number}_{name}", **job)
    return root


@pytest.fixture
def make_run(tmp_path: Path):
    def make(name: str = "run", **kwargs: Any) -> Path:
        return write_run(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def make_sweep(tmp_path: Path):
    def make(name: str, jobs: list[dict[str, Any]]) -> Path:
        return write_sweep(tmp_path / name, jobs)

    return make


@pytest.fixture(scope="session")
def fabricate():
    """The writers themselves, for module-scoped fixtures that build one sweep for several tests."""

    class Writers:
        run = staticmethod(write_run)
        sweep = staticmethod(write_sweep)

    return Writers
