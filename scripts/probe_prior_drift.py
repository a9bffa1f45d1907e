#!/usr/bin/env python
"""How far must the weights drift before a real model loses a prior task? A random-displacement probe.

The AWD paper's account of forgetting under ES is drift: the update is mostly noise, so |theta - theta0| grows
like a random walk, alpha * sqrt(T * D / N) * sqrt(N / (N - 1)) for N antithetic members, and the prior tasks
degrade as the weights wander. This script measures the second half of that chain on its own: it moves theta0
by a Gaussian displacement of a given norm r (iid direction, the random walk's limit) and scores the preset's
prior tasks by log-likelihood on the same items at every r, so each drop is a paired comparison (its standard
error is the per-item differences', smaller than the unpaired CI). With the first half (the random-walk law,
which esft's drift report checks on every run) it says how many plain-ES steps of a preset it takes before a
drop can show at all -- a check that costs minutes instead of the hours of a full run.

    python scripts/probe_prior_drift.py --data-dir DATA                        # smollm2_cpu's priors, n=200
    python scripts/probe_prior_drift.py --data-dir DATA --radii 0,20,40,80 --n 300 --json

The direction is one seeded draw, rescaled to each radius (a ray), so the curve is smooth in r; a different
--seed gives a different ray.

`--models RUN_DIR,...` scores trained models on the same items, each paired against theta0 and placed at its
own measured |theta - theta0|: does a trained walk cost a prior task more than a random one of the same length
(forgetting along directions that matter), or the same (drift)? It also gives paired margins to runs whose
evals.jsonl rows predate per-item outcomes (`correct`).

    python scripts/probe_prior_drift.py --data-dir DATA --tasks piqa --n 300 --radii 0 --models RUN1,RUN2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

from esft.evaluation.evaluator import loglik_metrics
from esft.models.loading import load_policy
from esft.resources import shipped_config
from esft.tasks.registry import build_task

def load_preset(name: str) -> dict:
    """The preset's own keys with its model group resolved (enough for this probe; no Hydra composition)."""
    preset = shipped_config("experiment", name)
    model_name = next(d["override /model"] for d in preset["defaults"] if isinstance(d, dict) and
                      "override /model" in d)
    return {**preset, "model": shipped_config("model", model_name)}


def es_steps_for(radius: float, alpha: float, population: int, parameters: int) -> float:
    """Plain-ES steps until the random walk's expected |theta - theta0| reaches `radius` (antithetic pairs)."""
    per_step = alpha * math.sqrt(parameters / population) * math.sqrt(population / (population - 1))
    return (radius / per_step) ** 2


@torch.no_grad()
def displace(params: list[torch.Tensor], theta0: list[torch.Tensor], direction: list[torch.Tensor],
             radius: float) -> None:
    """theta = theta0 + radius * direction (direction has unit norm over all parameters)."""
    for p, p0, d in zip(params, theta0, direction):
        p.copy_(p0).add_(d, alpha=radius)


@torch.no_grad()
def load_trained(model: torch.nn.Module, path: str) -> None:
    """Copy a run's final_model/ (or a save_pretrained dir) into `model`, by parameter name. Tied weights are
    saved once, so a name missing from the file must be tied to one that is present (checked, not assumed)."""
    folder = os.path.join(path, "final_model") if os.path.isdir(os.path.join(path, "final_model")) else path
    state = load_file(os.path.join(folder, "model.safetensors"))
    seen = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in state:
            param.copy_(state[name].to(param.dtype))
            seen[param.data_ptr()] = name
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if n not in state
               and p.data_ptr() not in seen]
    if missing:
        raise SystemExit(f"{folder}: no weights for {', '.join(missing[:3])}: not a model of this preset")


@torch.no_grad()
def distance(params: list[torch.Tensor], theta0: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((p.double() - p0.double()).pow(2).sum()) for p, p0 in zip(params, theta0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smollm2_cpu", help="conf/experiment/NAME.yaml: model, priors, ES")
    parser.add_argument("--data-dir", default=None, help="the benchmark data folder (else the hub)")
    parser.add_argument("--radii", default="0,15,30,60", help="comma-separated |theta - theta0| values")
    parser.add_argument("--n", type=int, default=200, help="items per prior task")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the preset's eval.tasks")
    parser.add_argument("--seed", type=int, default=0, help="the direction's seed")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", default=None, help="comma-separated run dirs (their final_model/) to score "
                        "against theta0 at their own |theta - theta0|; the radii must start with 0")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    model_cfg = {**preset["model"], "source": "gguf"} if "gguf" in preset["model"] else preset["model"]
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    policy = load_policy(model_cfg, log_fn=log)
    metric = preset.get("eval", {}).get("loglik_metric", "acc_norm")
    specs = [t for t in preset["eval"]["tasks"] if not args.tasks or t["name"] in args.tasks.split(",")]
    tasks = {s["name"]: build_task({**s, "eval_size": args.n}, data_dir=args.data_dir, seed=preset.get("seed", 0))
             for s in specs}
    examples = {name: list(task.eval_examples()) for name, task in tasks.items()}

    params = [p for p in policy.model.parameters()]
    parameters = sum(p.numel() for p in params)
    theta0 = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(args.seed)
    direction = [torch.randn(p.shape, generator=generator, dtype=torch.float32) for p in params]
    norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in direction))
    direction = [d / norm for d in direction]
    theta0_norm = math.sqrt(sum(float(p.double().pow(2).sum()) for p in theta0))
    es = preset["es"]
    log(f"{parameters / 1e6:.1f}M parameters, |theta0| = {theta0_norm:.1f}; priors {list(tasks)} with n={args.n}")

    radii = [float(r) for r in args.radii.split(",")]
    models = args.models.split(",") if args.models else []
    if models and radii[0] != 0.0:
        parser.error("--models needs the radii to start with 0 (theta0: what each model is paired against)")
    base: dict[str, np.ndarray] = {}
    rows = []
    for point in [*radii, *models]:
        if isinstance(point, float):
            displace(params, theta0, direction, point)
            radius = point
        else:
            load_trained(policy.model, point)
            radius = distance(params, theta0)
        began = time.perf_counter()
        row = {"radius": radius, "relative": radius / theta0_norm, "model": None if isinstance(point, float) else point,
               "plain_es_steps": es_steps_for(radius, es["alpha"], es["population_size"], parameters), "tasks": {}}
        for name, task in tasks.items():
            metrics = loglik_metrics(policy, task, examples[name])
            correct = metrics[metric]
            base.setdefault(name, correct)
            diff = correct - base[name]
            row["tasks"][name] = {"accuracy": float(correct.mean()), "drop": float(-diff.mean()) + 0.0,  # no "-0.0"
                                  "drop_se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0,
                                  **{key: float(values.mean()) for key, values in metrics.items()}}
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        where = f"{point}: " if row["model"] else ""
        log(f"{where}r={radius:g} ({row['relative']:.2%} of |theta0|, ~{row['plain_es_steps']:.0f} plain-ES steps): " +
            ", ".join(f"{n} {v['accuracy']:.1%} (drop {v['drop']:+.1%} +- {1.96 * v['drop_se']:.1%})"
                      for n, v in row["tasks"].items()) + f"  [{row['seconds']:.0f} s]")
    displace(params, theta0, direction, 0.0)

    print(f"\n| r = \\|θ-θ0\\| | r / \\|θ0\\| | plain-ES steps to reach r (N={es['population_size']}, "
          f"alpha={es['alpha']:g}) | " + " | ".join(f"{n} {metric} (drop ± 95%, paired)" for n in tasks) + " |")
    print("|---|---|---|" + "---|" * len(tasks))
    for row in rows:
        cells = [f"{v['accuracy']:.1%} ({v['drop']:+.1%} ± {1.96 * v['drop_se']:.1%})" for v in row["tasks"].values()]
        label = f"{row['radius']:g}"
        if row["model"]:
            label = f"{row['radius']:.4g} ({os.path.basename(row['model'].rstrip('/'))})"
        lead = f"| {label} | {row['relative']:.2%} | {row['plain_es_steps']:.0f} | "
        print(lead + " | ".join(cells) + " |")
    if args.json:
        print(json.dumps({"preset": args.preset, "n": args.n, "metric": metric, "parameters": parameters,
                          "theta0_norm": theta0_norm, "seed": args.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
