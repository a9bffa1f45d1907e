"""The PPO baseline, implemented in esft on the shared Policy (TRL no longer ships a PPOTrainer that takes a
rule-based reward).

Variant: token-level PPO for language models with the KL penalty folded into the reward -- the recipe of
Ziegler et al. 2019 / InstructGPT and of TRL's classic `PPOTrainer` (<= 0.11):
  1. rollouts: `prompts_per_step` training prompts (drawn by (seed, step), like ES), `num_generations` sampled
     completions each at `temperature` (seeded per step, so a resumed run samples what an uninterrupted one would)
  2. per-token reward r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  (the k1 KL estimate to the
     frozen reference = theta0), plus the task's reward on the completion's last token
  3. values V(s_t) from a scalar head on the policy's last hidden state (shared backbone, as TRL's classic
     `AutoModelForCausalLMWithValueHead`); GAE(gamma, lam) advantages, returns = advantages + values;
     advantages whitened over the batch's completion tokens
  4. `epochs` passes over the rollout batch in `minibatches` shuffled minibatches: clipped surrogate
     (`clip`), clipped value loss (`vf_clip`, the max of clipped and unclipped squared errors),
     loss = policy loss + vf_coef * value loss, gradient norm clipped, one Adam step per minibatch, each
     followed by AWD (c = lr * awd.lambda) when awd.lambda > 0
Departures from the classic recipe: the value head shares the backbone (InstructGPT used a separate value
model initialised from the reward model) and is zero-initialised, so V = 0 at the start; no entropy bonus, no
adaptive KL controller (fixed beta, like verl's GRPO in the paper); the reward is the task's rule-based reward,
not a learned reward model, and is not normalised; one esft step = one rollout batch (epochs * minibatches
optimizer steps). The policy stays in eval mode (no dropout), so rollout and training log-probs agree.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from esft.core.accounting import StepTokens, TokenMeter
from esft.core.anchor import Anchor
from esft.core.awd import AWDSection
from esft.core.sampling import sample_indices
from esft.core.trainer import StepTrainer
from esft.policy import Policy, Rollout
from esft.rl.common import AnchoredTrainerMixin, rollout_metrics

# -- the algorithm as pure functions -------------------------------------------------------------------------


def token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """r_t = -beta * (logp_t - ref_logp_t) on every completion token, plus the score on the last one."""
    rewards = torch.zeros_like(logp)
    if ref_logp is not None and beta > 0:
        rewards = -beta * (logp - ref_logp)
    rewards = rewards * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens (rows end at their last masked-in token).

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token = 0), A_t = delta_t + gamma * lam * A_{t+1};
    returns R_t = A_t + V_t are the value targets.
    """
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_losses(logp: torch.Tensor, old_logp: torch.Tensor, values: torch.Tensor, old_values: torch.Tensor,
               advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float,
               vf_clip: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Clipped surrogate and clipped value loss, token-mean over the minibatch."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    clipped_values = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    value_error = torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    policy_loss, value_loss = masked_mean(surrogate, mask), 0.5 * masked_mean(value_error, mask)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean(((ratio - 1).abs() > clip).float(), mask)),
                 "approx_kl": float(masked_mean(0.5 * (logp - old_logp) ** 2, mask))}
    return policy_loss, value_loss, stats


# -- the trainer ---------------------------------------------------------------------------------------------


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: counter-based, so independent of how the run got to this step."""
    return int(np.random.SeedSequence([int(seed), int(step), 31337]).generate_state(1)[0])


@dataclass
class PPOSettings:
    learning_rate: float
    prompts_per_step: int
    num_generations: int
    epochs: int
    minibatches: int
    clip: float
    vf_clip: float
    vf_coef: float
    gamma: float
    lam: float
    beta: float
    temperature: float
    max_completion_length: int | None
    max_grad_norm: float

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> "PPOSettings":
        length = c["max_completion_length"]  # every key is declared in conf/method/ppo.yaml (the defaults' home)
        return cls(float(c["learning_rate"]), int(c["prompts_per_step"]), int(c["num_generations"]),
                   int(c["epochs"]), int(c["minibatches"]), float(c["clip"]), float(c["vf_clip"]),
                   float(c["vf_coef"]), float(c["gamma"]), float(c["lam"]), float(c["beta"]),
                   float(c["temperature"]), int(length) if length else None, float(c["max_grad_norm"]))


class PPOTrainer(AnchoredTrainerMixin, StepTrainer):
    """PPO with a value head and a KL penalty to theta0, behind the ES trainer's seam (`step` per esft step)."""

    name = "ppo"

    def __init__(self, policy: Policy, method_cfg: Mapping[str, Any], awd_cfg: AWDSection | Mapping[str, Any],
                 seed: int) -> None:
        self.s = PPOSettings.from_config(method_cfg)
        awd = awd_cfg if isinstance(awd_cfg, AWDSection) else \
            AWDSection.from_config(awd_cfg, float(method_cfg["learning_rate"]), "method.learning_rate")
        self.awd_kind, self.awd_lambda, self.awd_anchor = awd.kind, awd.lam, awd.anchor
        self.policy, self.seed = policy, int(seed)
        model = policy.model
        self.anchor = Anchor(model)
        self.reference = self._frozen_copy(model) if self.s.beta > 0 else None
        self.value_head = nn.Linear(model.config.get_text_config().hidden_size, 1).to(policy.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.trainable = [p for _, p in self.anchor.named] + list(self.value_head.parameters())
        self.optimizer = torch.optim.Adam(self.trainable, lr=self.s.learning_rate)
        self.meter = TokenMeter(model, self.reference)
        self.stage, self.task = -1, None

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        return reference


    # -- one step --------------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, Any]:
        assert self.task is not None, "set_stage() must be called before step()"
        started, before = time.perf_counter(), self.anchor.snapshot()
        self.meter.start()
        generator = torch.Generator().manual_seed(step_seed(self.seed, step))
        rollout, scores = self._rollout(step, generator)
        batch = self._score(rollout, scores)
        stats = self._optimize(batch, generator)
        forward, backward = self.meter.stop()
        return rollout_metrics(step, self.stage, self.task.name, scores.tolist(), self.anchor,
                               self.anchor.moved_since(before), time.perf_counter() - started,
                               StepTokens(forward, backward, rollout.generated), self.policy.device, **stats)

    def _rollout(self, step: int, generator: torch.Generator) -> tuple[Rollout, torch.Tensor]:
        train = self.task.train_examples()
        chosen = [train[i] for i in sample_indices(self.seed, step, len(train), self.s.prompts_per_step)]
        examples = [e for e in chosen for _ in range(self.s.num_generations)]
        length = self.s.max_completion_length or self.task.max_new_tokens
        rollout = self.policy.sample([self.task.prompt(e) for e in examples], length, self.s.temperature, generator,
                                     self.task.stop)
        scores = torch.tensor([self.task.reward(t, e) for t, e in zip(rollout.texts, examples)], dtype=torch.float32)
        return rollout, scores

    def _forward(self, model: nn.Module, rollout: Rollout, rows: torch.Tensor | slice = slice(None),
                 values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (at the sampling temperature) of the completion and the values V(s_t)."""
        completion = rollout.completion_ids[rows]
        ids = torch.cat([rollout.prompt_ids[rows], completion], dim=1)
        mask = torch.cat([rollout.prompt_mask[rows], rollout.completion_mask[rows]], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        steps = completion.shape[1]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=values,
                    logits_to_keep=steps + 1)
        logits = out.logits[:, :-1].float() / max(self.s.temperature, 1e-6)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, completion[..., None]).squeeze(-1)
        if not values:
            return logp, None
        hidden = out.hidden_states[-1][:, -(steps + 1):-1]
        return logp, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    @torch.no_grad()
    def _score(self, rollout: Rollout, scores: torch.Tensor) -> dict[str, Any]:
        """Old log-probs and values, the KL-penalised rewards, GAE advantages (whitened) and returns."""
        mask = rollout.completion_mask.float()
        old_logp, old_values = self._forward(self.policy.model, rollout)
        ref_logp = self._forward(self.reference, rollout, values=False)[0] if self.reference is not None else None
        rewards = token_rewards(scores.to(mask.device), old_logp, ref_logp, mask, self.s.beta)
        advantages, returns = gae(rewards, old_values * mask, mask, self.s.gamma, self.s.lam)
        kl = float(masked_mean(old_logp - ref_logp, mask) * mask.sum() / len(scores)) if ref_logp is not None else 0.0
        return {"rollout": rollout, "mask": mask, "old_logp": old_logp, "old_values": old_values * mask,
                "advantages": whiten(advantages, mask), "returns": returns, "kl": kl}

    def _optimize(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        size = len(batch["rollout"].texts)
        chunks = max(1, min(self.s.minibatches, size))
        totals = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
        updates = 0
        for _ in range(self.s.epochs):
            for rows in torch.randperm(size, generator=generator).chunk(chunks):
                stats = self._update(batch, rows.to(batch["mask"].device))
                updates += 1
                for key in totals:
                    totals[key] += stats[key]
        return {**{k: v / max(updates, 1) for k, v in totals.items()}, "kl": batch["kl"],
                "optimizer_steps": updates, "learning_rate": self.s.learning_rate}

    def _update(self, batch: dict[str, Any], rows: torch.Tensor) -> dict[str, float]:
        logp, values = self._forward(self.policy.model, batch["rollout"], rows)
        mask = batch["mask"][rows]
        policy_loss, value_loss, stats = ppo_losses(logp, batch["old_logp"][rows], values * mask,
                                                    batch["old_values"][rows], batch["advantages"][rows],
                                                    batch["returns"][rows], mask, self.s.clip, self.s.vf_clip)
        self.optimizer.zero_grad(set_to_none=True)
        (policy_loss + self.s.vf_coef * value_loss).backward()
        if self.s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.s.max_grad_norm)
        self.optimizer.step()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.anchor.pull(self.awd_kind, lr * self.awd_lambda)
        return {"policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach()), **stats}

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights (`master`, the ES layout), the value head and Adam's moments, so a resume is exact."""
        state = {"master": self.anchor.flat(),
                 **{f"value_head.{k}": v.detach().cpu().clone() for k, v in self.value_head.state_dict().items()}}
        for index, slots in self.optimizer.state_dict()["state"].items():
            for key, value in slots.items():
                state[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        if self.awd_anchor == "stage":
            state["anchor"] = self.anchor.flat(self.anchor.anchor)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], stage: int) -> None:
        self.anchor.load_flat(state["master"])
        head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("value_head.")}
        self.value_head.load_state_dict(head)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        saved = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": slots, "param_groups": saved["param_groups"]})
        if self.awd_anchor == "stage" and "anchor" in state:
            self.anchor.anchor = self.anchor.unflat(state["anchor"])
        self.stage = stage

    def finalize(self) -> None:
        self.meter.close()
