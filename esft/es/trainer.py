"""The ES trainer behind the experiment's Trainer seam: `set_stage`, `step`, `state_dict`, `load_state_dict`.

One step (docs/architecture.md, "One ES step"): ask seeds -> evaluate the population on M fresh training
prompts shared by all members -> shape fitness -> update from the (cached or regenerated) noise -> AWD pull
toward the anchor -> log the step's seeds and coefficients to the replay log. Prompts of step t are drawn from
a generator keyed by (seed, t), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

from esft.core.accounting import peak_memory, reset_peak_memory
from esft.core.awd import AWDSection
from esft.core.sampling import sample_indices
from esft.core.trainer import StepTrainer
from esft.es.params import FlatParams
from esft.es.population import StepFitness, build_evaluator, build_noise, resolve_cache_noise
from esft.es.settings import ESSection
from esft.es.strategy import ask, tell
from esft.es.update import apply_step
from esft.policy import Policy
from esft.tasks.base import Task


class ESTrainer(StepTrainer):
    """Evolution Strategies with Anchored Weight Decay on fp32 master weights."""

    name = "es"

    def __init__(self, policy: Policy, es: ESSection | Mapping[str, Any], awd: AWDSection | Mapping[str, Any],
                 seed: int, replay_log: Callable[[dict], None], batch_size: int = 256) -> None:
        """`es`, `awd`: the run's checked sections (RunSettings builds them once); a plain mapping (scripts,
        tests) is checked here the same way."""
        es = es if isinstance(es, ESSection) else ESSection.from_config(es)
        awd = awd if isinstance(awd, AWDSection) else AWDSection.from_config(awd, es.alpha)
        self.settings = es.strategy()
        self.awd_kind, self.awd_lambda, self.awd_anchor = awd.kind, awd.lam, awd.anchor
        self.policy = policy
        self.params = FlatParams(policy.model, share_master=es.evaluator == "lowrank")
        policy.watch(self.params)  # policy.backend=vllm: the engine follows every load/perturb/restore
        self.noise = build_noise(es.evaluator, es.noise, self.params, es.rank, es.freeze_nonmatrix)
        self.cache_noise = resolve_cache_noise(es.cache_noise, es.evaluator, self.settings.num_draws,
                                               self.params.numel)
        self.population = build_evaluator(es.evaluator, self.params, self.noise, self.settings, self.cache_noise)
        self.prompts_per_step = es.prompts_per_step
        self.seed = int(seed)
        self.replay_log = replay_log
        self.batch_size = batch_size
        self.anchor = self.params.theta0
        self.stage = -1
        self.task: Task | None = None

    @property
    def num_parameters(self) -> int:
        return self.params.numel

    def set_stage(self, stage: int, task: Task) -> None:
        """Train `task` from now on; with awd.anchor=stage the current weights become the anchor."""
        if stage != self.stage and self.awd_anchor == "stage":
            self.anchor = self.params.master.clone()
        self.stage, self.task = stage, task
        reset_peak_memory(self.params.device)  # peak_rss_mb in the metrics rows is per stage

    def step(self, step: int) -> dict[str, Any]:
        assert self.task is not None, "set_stage() must be called before step()"
        started = time.perf_counter()
        counts_before = (self.policy.counts.forward, self.policy.counts.generated)
        train = self.task.train_examples()
        chosen = [train[i] for i in sample_indices(self.seed, step, len(train), self.prompts_per_step)]
        seeds = ask(self.seed, step, self.settings)
        fitness = StepFitness(self.policy, self.task, chosen, self.batch_size)  # prompts encoded once per step
        rewards, cache = self.population.evaluate(seeds, fitness)
        told = tell(rewards, self.settings)
        update_norm = 0.0
        if told.coefficients is not None:  # the same function replays the log (bit-identical weights)
            update_norm = apply_step(self.params.master, self.anchor, self.noise, seeds, told.coefficients,
                                     self.settings, self.awd_kind, self.awd_lambda, cache)
            self.params.restore()
        self.replay_log(self._replay_row(step, seeds, told.coefficients))
        return self._metrics(step, told, update_norm, started, counts_before, len(chosen))

    def _replay_row(self, step: int, seeds: list[int], coefficients: list[float] | None) -> dict[str, Any]:
        s = self.settings
        return {"step": step, "stage": self.stage, "task": self.task.name, "seeds": seeds,
                "coefficients": coefficients, "population_size": s.population_size, "sigma": s.sigma,
                "alpha": s.alpha, "antithetic": s.antithetic, "awd_kind": self.awd_kind,
                "awd_lambda": self.awd_lambda, "awd_anchor": self.awd_anchor, **self.noise.describe()}

    def _metrics(self, step: int, told, update_norm: float, started: float, counts_before: tuple[int, int],
                 prompts: int) -> dict[str, Any]:
        r = told.rewards
        return {
            "step": step, "stage": self.stage, "task": self.task.name,
            "reward_mean": float(r.mean()), "reward_std": float(r.std()),
            "reward_min": float(r.min()), "reward_max": float(r.max()),
            "theta_dist": self.params.distance(), "update_norm": update_norm,
            "skipped": told.coefficients is None, "skip_reason": told.reason or None,
            "nonfinite_rewards": told.nonfinite,
            "population_evals": self.settings.population_size, "prompts": prompts,
            "forward_tokens": self.policy.counts.forward - counts_before[0],
            "generated_tokens": self.policy.counts.generated - counts_before[1],
            "backward_tokens": 0,
            "seconds": round(time.perf_counter() - started, 4), **peak_memory(self.params.device),
        }

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint saves. On a CPU they are the live master (and anchor) themselves, not
        copies: the checkpoint is written synchronously before the next step changes them, and a 7B master
        is 28 GB (one copy from a device is unavoidable: the file is written from host memory)."""
        state = {"master": self.params.master.detach().cpu()}
        if self.awd_anchor == "stage":
            state["anchor"] = self.anchor.detach().cpu()
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], stage: int) -> None:
        master = state["master"]
        if master.numel() != self.params.numel:
            raise ValueError(f"checkpoint has {master.numel()} parameters, the model {self.params.numel}")
        self.params.master.copy_(master.to(self.params.device))
        self.stage = stage
        if self.awd_anchor == "stage" and "anchor" in state:
            self.anchor = state["anchor"].to(self.params.device).clone()
        self.params.restore()

    def reference_weights(self) -> AbstractContextManager[None]:
        """Context manager: the model computes with theta0 inside the block (for the off-task KL)."""
        return self.params.theta0_loaded()

    def use_population(self, evaluator: Any) -> None:
        """Evaluate populations with `evaluator` from now on (same `evaluate(seeds, fitness)` seam): the
        torchrun roles wrap the built evaluator in a sharded one (esft/distributed/torchrun.py)."""
        self.population = evaluator

    def finalize(self) -> None:
        """Detach the model from the working buffer so it can be saved with save_pretrained."""
        self.params.release_model()

    def diagnostics(self, layer_distances: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"theta_dist": self.params.distance()}
        if layer_distances:
            row["layers"] = self.params.layer_distances()
        return row
