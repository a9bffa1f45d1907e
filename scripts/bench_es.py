#!/usr/bin/env python
"""Benchmark ES population evaluation against the papers' reference loop and against pure inference.

For each workload, in ONE process, on the same model, prompts and generation length, best of several repeats:
  reference          the es-at-scale / es-awd loop: one member at a time, perturb and restore in place in the
                     model's dtype (generator re-seeded per tensor), `model.generate` + decode for every member,
                     noise regenerated for the update, AWD in place
  inplace, lowrank   esft's ES step (ESTrainer.step: evaluate, shape, update, AWD, replay-log row) on its fastest
  lowrank-frozen     exact scoring path (StepFitness); lowrank-frozen = lowrank with es.freeze_nonmatrix=true;
  inplace-uncached   inplace with es.cache_noise=false (draws regenerated for the update: less memory)
  inplace-philox     inplace with es.noise=philox (portable noise drawn on the weights' device); -uncached: and
                     es.cache_noise=false (one block of noise at a time: the memory floor)
  inference-seq      pure inference of the same work on esft's scoring path, unperturbed weights: one call per
  inference-batched  member (seq), or all members' prompts stacked in one call (batched); the faster is the ceiling
Reported: member-evaluations per second, the ratios to the reference and to the ceiling, and memory (peak RSS,
peak CUDA memory on GPU; "x fp32" = the method's memory minus the activations of the matching inference run,
in units of the fp32 weights: the target is <= 2.5).

    python scripts/bench_es.py                           # tiny + gen30m (+ gpu05b when CUDA is available)
    python scripts/bench_es.py --workload gpu05b --json  # last line: one JSON object
    python scripts/bench_es.py --workload smollm2        # the real SmolLM2-135M on the smollm2_cpu preset's work

The smollm2 workload is the one real pretrained model: the packaged GGUF's cached conversion (as
`esft train model=smollm2-135m`), the preset's first M sums prompts through the chat template, its numeric reward
and its sigma / alpha / lambda, so "of inference" there is what a user's `experiment=smollm2_cpu` step costs
against pure generation of the same prompts.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from esft.es.population import StepFitness
from esft.es.shaping import zscore
from esft.es.trainer import ESTrainer
from esft.models.loading import load_policy
from esft.models.tiny import _ARCHITECTURES, EOS_ID, PAD_ID, build_tokenizer, model_config
from esft.policy import Policy
from esft.resources import shipped_config
from esft.tasks.arithmetic import Reverse
from esft.tasks.base import Example, Task
from esft.tasks.registry import build_task as build_registered_task

REPO = Path(__file__).resolve().parents[1]
SIGMA, ALPHA, AWD_LAMBDA = 0.01, 0.01, 1.0


@dataclass(frozen=True)
class Workload:
    name: str
    shape: dict
    vocab: int
    population: int
    prompts: int
    new_tokens: int
    exact: bool  # exact-answer reward (one teacher-forced forward) vs generated completions
    dtype: torch.dtype = torch.float32
    repeats: int = 3
    warmup: bool = True  # an untimed run per method first (off for gpu05b: one global warm-up instead)
    sequential_members: int | None = None  # members timed by one-at-a-time methods (the rate is per member)
    needs_cuda: bool = False
    on_request: bool = False  # only with --workload NAME or all (real weights: minutes to load and run)
    batch_size: int = 256  # rows per forward (eval.batch_size): lowrank stacks as many whole members as fit
    model: str | None = None   # a conf/model/*.yaml to load through esft (real weights) instead of `shape`
    preset: str | None = None  # a conf/experiment/*.yaml whose task, sigma, alpha and AWD lambda are used
    sigma: float = SIGMA
    alpha: float = ALPHA
    awd_lambda: float = AWD_LAMBDA


def _tiny_shape() -> dict:
    tiny = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())["tiny"]
    return {k: v for k, v in tiny.items() if k != "warmup"}


def _preset_workload(name: str, model: str, preset: str, repeats: int) -> Workload:
    """A real model on an experiment preset's work: its population, prompts per step, generation budget,
    sigma, alpha and AWD lambda, read from the preset so the benchmark follows it."""
    cfg = shipped_config("experiment", preset)
    es, task = cfg["es"], cfg["task"]
    return Workload(name, {}, 0, population=es["population_size"], prompts=es["prompts_per_step"],
                    new_tokens=task["max_new_tokens"], exact=False, repeats=repeats, warmup=False, model=model,
                    preset=preset, sigma=es["sigma"], alpha=es["alpha"], awd_lambda=cfg["awd"]["lambda"],
                    on_request=True)


WORKLOADS = {
    "tiny": Workload("tiny", _tiny_shape(), 258, population=16, prompts=128, new_tokens=3, exact=True, repeats=10),
    "gen30m": Workload("gen30m", {"architecture": "qwen2", "hidden_size": 512, "intermediate_size": 1536,
                                  "num_hidden_layers": 9, "num_attention_heads": 8, "num_key_value_heads": 8,
                                  "max_position_embeddings": 128, "init_seed": 0},
                       258, population=8, prompts=16, new_tokens=64, exact=False, repeats=2, warmup=False),
    "gpu05b": Workload("gpu05b", {"architecture": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                                  "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                                  "max_position_embeddings": 1024, "init_seed": 0},
                       151936, population=30, prompts=64, new_tokens=128, exact=False, dtype=torch.bfloat16,
                       repeats=1, warmup=False, sequential_members=10, needs_cuda=True, batch_size=30 * 64),
    "smollm2": _preset_workload("smollm2", model="smollm2-135m", preset="smollm2_cpu", repeats=2),
}


class BenchTask(Task):
    """The workload's M prompts (`abcd|>`); exact: the answer is the unperturbed model's own greedy completion
    (so perturbed members disagree on some prompts and ES takes real steps), else reward = share of digits."""

    name = "bench"

    def __init__(self, examples: list[Example], exact: bool, new_tokens: int) -> None:
        self.examples, self.exact_answer, self.max_new_tokens = examples, exact, new_tokens

    def train_examples(self):
        return self.examples

    def eval_examples(self):
        return self.examples

    def score(self, completion: str, example: Example) -> float:
        if self.exact_answer:
            return float(completion == example.answer)
        return sum(ch.isdigit() for ch in completion) / max(1, self.max_new_tokens)


class PresetTask(BenchTask):
    """The first M training prompts of a preset's task, scored by that task's own reward."""

    def __init__(self, task: Task, prompts: int, new_tokens: int) -> None:
        super().__init__(list(task.train_examples()[:prompts]), exact=False, new_tokens=new_tokens)
        self.task = task

    def score(self, completion: str, example: Example) -> float:
        return self.task.score(completion, example)


def load_model_policy(w: Workload, device: torch.device) -> Policy:
    """A real model the way `esft train model=NAME` loads it (for smollm2: the packaged GGUF's cached
    conversion; the hub is not probed)."""
    model_cfg = {**shipped_config("model", w.model), "device": str(device), "dtype": str(w.dtype).replace("torch.", "")}
    if "gguf" in model_cfg:
        model_cfg["source"] = "gguf"
    return load_policy(model_cfg, log_fn=lambda text: print(text, file=sys.stderr, flush=True))


def build_policy(w: Workload, device: torch.device) -> Policy:
    if w.model:
        return load_model_policy(w, device)
    tokenizer = build_tokenizer()
    config = model_config(w.shape, w.vocab, PAD_ID, EOS_ID)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = _ARCHITECTURES[w.shape["architecture"]][1](config)
    return Policy(model.to(w.dtype), tokenizer, device, use_chat_template=False)


def build_task(w: Workload, policy: Policy) -> BenchTask:
    if w.preset:
        task = build_registered_task(shipped_config("experiment", w.preset)["task"])
        return PresetTask(task, w.prompts, w.new_tokens)
    examples = list(Reverse().train_examples()[:w.prompts])
    if w.exact:
        answers = policy.generate([e.prompt for e in examples], w.new_tokens, batch_size=len(examples))
        examples = [Example(e.prompt, a) for e, a in zip(examples, answers)]
    return BenchTask(examples, w.exact, w.new_tokens)


# -- the methods: each is set up on a fresh copy of the policy and returns (members, run(step)) ---------------
class ReferenceES:
    """The papers' loop (Qiu et al. 2025's reference code) plus es-awd's in-place AWD, in the model's dtype."""

    def __init__(self, policy: Policy, task: BenchTask, members: int, w: Workload) -> None:
        self.policy, self.task, self.members, self.w = policy, task, members, w
        self.params = [p for _, p in policy.model.named_parameters()]
        self.theta0 = [p.detach().clone() for p in self.params]
        self.generator = torch.Generator(device=policy.device)
        self.prompts = [policy.format_prompt(e.prompt) for e in task.examples]  # the chat template, if any

    def noise(self, param: torch.Tensor, seed: int) -> torch.Tensor:
        self.generator.manual_seed(seed)  # re-seeded per tensor, as es-at-scale
        return torch.randn(param.shape, generator=self.generator, device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def fitness(self) -> float:
        tok = self.policy.tokenizer
        tok.padding_side = "left"  # as the papers' scripts set it for batched generation
        batch = tok(self.prompts, return_tensors="pt", padding=True,  # a chat template already carries its specials
                    add_special_tokens=not self.policy.use_chat_template).to(self.policy.device)
        out = self.policy.model.generate(**batch, max_new_tokens=self.task.max_new_tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return float(np.mean([self.task.reward(t, e) for t, e in zip(texts, self.task.examples)]))

    @torch.no_grad()
    def step(self, step: int) -> None:
        seeds = np.random.default_rng(step).integers(0, 2 ** 30, self.members).tolist()
        rewards = []
        for seed in seeds:
            for p in self.params:
                p.add_(self.noise(p, seed), alpha=self.w.sigma)
            rewards.append(self.fitness())
            for p in self.params:
                p.add_(self.noise(p, seed), alpha=-self.w.sigma)
        z = zscore(np.asarray(rewards))
        if z is None:
            return
        for p, p0 in zip(self.params, self.theta0):
            total = torch.zeros_like(p)
            for seed, coefficient in zip(seeds, z):
                total.add_(self.noise(p, seed), alpha=float(coefficient))
            p.add_(total, alpha=self.w.alpha / self.members)
            p.sub_(p0).mul_(1 - self.w.alpha * self.w.awd_lambda).add_(p0)


def esft_method(evaluator: str, freeze: bool = False, cache_noise: bool = True, noise: str = "iid") -> Callable:
    def setup(policy: Policy, task: BenchTask, members: int, w: Workload):
        es = {"population_size": members, "sigma": w.sigma, "alpha": w.alpha, "antithetic": True, "shaping": "zscore",
              "evaluator": evaluator, "rank": 1, "freeze_nonmatrix": freeze, "prompts_per_step": None,
              "cache_noise": cache_noise, "noise": noise}
        trainer = ESTrainer(policy, es, {"kind": "l2", "lambda": w.awd_lambda, "anchor": "start"}, seed=0,
                            replay_log=lambda row: None, batch_size=w.batch_size)
        trainer.set_stage(0, task)
        return trainer.step
    return setup


def inference_method(batched: bool) -> Callable:
    def setup(policy: Policy, task: BenchTask, members: int, w: Workload):
        def run(step: int) -> None:
            with torch.no_grad():
                fitness = StepFitness(policy, task, task.examples, batch_size=w.batch_size)
                per_call = fitness.members_per_call if batched else 1
                for start in range(0, members, per_call):
                    fitness.batched(min(per_call, members - start))
        return run
    return setup


METHODS = {  # name -> (setup, batched over members)
    "reference": (lambda policy, task, members, w: ReferenceES(policy, task, members, w).step, False),
    "inplace": (esft_method("inplace"), False),
    "inplace-uncached": (esft_method("inplace", cache_noise=False), False),
    "inplace-philox": (esft_method("inplace", noise="philox"), False),
    "inplace-philox-uncached": (esft_method("inplace", cache_noise=False, noise="philox"), False),
    "lowrank": (esft_method("lowrank"), True),
    "lowrank-frozen": (esft_method("lowrank", freeze=True), True),
    "inference-seq": (inference_method(False), False),
    "inference-batched": (inference_method(True), True),
}


# -- measuring ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_mark(device: torch.device) -> int:
    """Start a peak window; returns the memory in use now (bytes)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    return _status_kb("VmRSS") * 1024


def memory_peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kb("VmHWM") * 1024


def setup_method(name: str, w: Workload, base: Policy, task: BenchTask, device: torch.device) -> dict:
    """Copy the policy, set the method up and run it once (the untimed warm-up, or timed run 1 when the
    workload has no per-method warm-up), measuring the method's memory over that window."""
    setup, batched = METHODS[name]
    members = w.population if batched or not w.sequential_members else w.sequential_members
    start = memory_mark(device)
    policy = copy.copy(base)
    policy.model = copy.deepcopy(base.model)
    run = setup(policy, task, members, w)
    first = timed(run, 0, device)
    return {"method": name, "members": members, "run": run, "times": [] if w.warmup else [first],
            "peak_mb": (memory_peak(device) - start) / 2 ** 20}


def timed(run: Callable[[int], None], step: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared CPU the CPU time is the steadier measure of
    the work itself: other processes stretch the wall clock, not this process's CPU time (with 1 thread)."""
    _sync(device)
    began, cpu = time.perf_counter(), time.process_time()
    run(step)
    _sync(device)
    return time.perf_counter() - began, time.process_time() - cpu


def measure_all(w: Workload, base: Policy, task: BenchTask, device: torch.device, methods: list[str],
                log: Callable[[str], None]) -> dict:
    """Every method set up once, then timed round-robin (repeat 1 of every method, then repeat 2, ...), so load
    from other processes hits all methods alike; the best repeat counts."""
    rows = {}
    for name in methods:
        rows[name] = setup_method(name, w, base, task, device)
        log(f"  {w.name}: {name} set up and run once (peak {rows[name]['peak_mb']:.0f} MB)")
    for repeat in range(w.repeats - (0 if w.warmup else 1)):
        for row in rows.values():
            row["times"].append(timed(row["run"], repeat + 1, device))
        log(f"  {w.name}: timed repeat {repeat + 1} done")
    for row in rows.values():
        del row["run"]
        times = row.pop("times")
        best, best_cpu = min(t[0] for t in times), min(t[1] for t in times)
        row.update(seconds=round(best, 4), evals_per_s=row["members"] / best, cpu_seconds=round(best_cpu, 4),
                   evals_per_cpu_s=row["members"] / best_cpu)
    return rows


def summarise(rows: dict[str, dict], fp32_bytes: int, model_bytes: int) -> dict:
    """Ratios to the reference and to the ceiling (the faster inference), by wall clock and by CPU time, and
    memory in fp32-weight units."""
    for clock, key in (("", "evals_per_s"), ("_cpu", "evals_per_cpu_s")):
        ceiling = max(rows["inference-seq"][key], rows["inference-batched"][key])
        for row in rows.values():
            row["vs_reference" + clock] = row[key] / rows["reference"][key]
            row["of_inference" + clock] = row[key] / ceiling
    for name, row in rows.items():
        twin = "inference-batched" if METHODS[name][1] else "inference-seq"
        activations = rows[twin]["peak_mb"] * 2 ** 20 - model_bytes
        row["x_fp32_weights"] = (row["peak_mb"] * 2 ** 20 - activations) / fp32_bytes
    best = max(("inplace", "lowrank", "lowrank-frozen"), key=lambda n: rows[n]["evals_per_s"])
    best_cpu = max(("inplace", "lowrank", "lowrank-frozen"), key=lambda n: rows[n]["evals_per_cpu_s"])
    return {"best": best, "speedup_vs_reference": rows[best]["vs_reference"],
            "fraction_of_inference": rows[best]["of_inference"],
            "lowrank_vs_inplace": rows["lowrank"]["evals_per_s"] / rows["inplace"]["evals_per_s"],
            "best_cpu": best_cpu, "speedup_vs_reference_cpu": rows[best_cpu]["vs_reference_cpu"],
            "fraction_of_inference_cpu": rows[best_cpu]["of_inference_cpu"],
            "lowrank_vs_inplace_cpu": rows["lowrank"]["evals_per_cpu_s"] / rows["inplace"]["evals_per_cpu_s"]}


def run_workload(w: Workload, device: torch.device, methods: list[str], log) -> dict:
    base = build_policy(w, device)
    task = build_task(w, base)
    numel = sum(p.numel() for p in base.model.parameters())
    fp32_bytes, model_bytes = numel * 4, numel * base.model.dtype.itemsize
    if not w.warmup:  # one global warm-up: kernels, allocator, CUDA context
        with torch.no_grad():
            StepFitness(base, task, task.examples[:8]).batched(2)
    rows = measure_all(w, base, task, device, methods, log)
    for name, row in rows.items():
        log(f"  {w.name:7s} {name:18s} {row['evals_per_s']:9.2f} evals/s  ({row['seconds']:.3f} s for "
            f"{row['members']} members)  peak {row['peak_mb']:.0f} MB")
    summary = summarise(rows, fp32_bytes, model_bytes)
    return {"workload": w.name, "parameters": numel, "population": w.population, "prompts": w.prompts,
            "new_tokens": w.new_tokens, "exact": w.exact, "dtype": str(w.dtype).replace("torch.", ""),
            "device": str(device), "sequential_members": w.sequential_members or w.population,
            "batch_size": w.batch_size, "fp32_weights_mb": fp32_bytes / 2 ** 20, "methods": rows, **summary}


def table(result: dict) -> str:
    memory = "peak CUDA MB" if result["device"].startswith("cuda") else "peak RSS MB"
    lines = [f"**{result['workload']}**: {result['parameters'] / 1e6:.2f}M parameters ({result['dtype']}), "
             f"N={result['population']} members x M={result['prompts']} prompts x {result['new_tokens']} tokens "
             f"({'exact-match reward, one teacher-forced forward' if result['exact'] else 'generated completions'})",
             "", "| method | member-evals/s | vs reference | of inference | evals/CPU-s "
             f"| {memory} (method) | x fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["methods"].items():
        note = f" ({r['members']} members)" if r["members"] != result["population"] else ""
        ratio = f"{r['x_fp32_weights']:.2f}" if result["fp32_weights_mb"] >= 32 else "n/a"  # allocator noise
        lines.append(f"| {name}{note} | {r['evals_per_s']:.2f} | {r['vs_reference']:.2f}x | {r['of_inference']:.2f} | "
                     f"{r['evals_per_cpu_s']:.2f} | {r['peak_mb']:.0f} | {ratio} |")
    lines.append(f"\nbest esft evaluator: {result['best']} ({result['speedup_vs_reference']:.2f}x the reference, "
                 f"{result['fraction_of_inference']:.2f} of pure inference); lowrank / inplace: "
                 f"{result['lowrank_vs_inplace']:.2f}x. By CPU time: {result['best_cpu']} "
                 f"({result['speedup_vs_reference_cpu']:.2f}x, {result['fraction_of_inference_cpu']:.2f}); "
                 f"lowrank / inplace {result['lowrank_vs_inplace_cpu']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="auto", choices=["auto", "all", *WORKLOADS])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: per workload)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="the model's dtype instead of the workload's (e.g. gen30m in bfloat16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    names = {"auto": [n for n, w in WORKLOADS.items() if (device.type == "cuda" or not w.needs_cuda)
                      and not w.on_request],
             "all": list(WORKLOADS)}.get(args.workload, [args.workload])
    methods = [m for m in args.methods.split(",") if m]
    for required in ("reference", "inplace", "lowrank", "lowrank-frozen", "inference-seq", "inference-batched"):
        if required not in methods:
            parser.error(f"--methods must include {required} (the summary compares them)")
    def log(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{args.threads} threads" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    log(f"machine: {machine}")
    results = []
    for name in names:
        w = WORKLOADS[name]
        if w.needs_cuda and device.type != "cuda":
            log(f"skipping {name}: it needs a CUDA device")
            continue
        w = replace(w, repeats=args.repeats or w.repeats, dtype=getattr(torch, args.dtype) if args.dtype else w.dtype)
        results.append(run_workload(w, device, methods, log))
        log("\n" + table(results[-1]) + "\n")
    headline = next((r for r in results if r["workload"] == "tiny"), results[0] if results else None)
    if args.json and headline:
        print(json.dumps({"headline_workload": headline["workload"], "best_evaluator": headline["best"],
                          "speedup_vs_reference": round(headline["speedup_vs_reference"], 3),
                          "fraction_of_inference": round(headline["fraction_of_inference"], 3),
                          "speedup_vs_reference_cpu": round(headline["speedup_vs_reference_cpu"], 3),
                          "fraction_of_inference_cpu": round(headline["fraction_of_inference_cpu"], 3),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "machine": machine,
                          "command": " ".join(["python", "scripts/bench_es.py", *(argv or sys.argv[1:])]),
                          "workloads": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
