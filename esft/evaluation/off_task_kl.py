"""Off-task KL to the base model (Schweighofer et al. 2026's diagnostic), measured at every checkpoint.

At the first checkpoint the base model generates greedy continuations of a fixed sample of prompts from each
prior (non-trained) task. At every checkpoint the token-level KL(p_theta || p_theta0), summed over the
vocabulary and averaged over those continuation tokens, is computed on exactly those sequences: it measures
how far the model's behaviour moved on text it never trained on. The base distributions are recomputed by
temporarily loading theta0 (`trainer.reference_weights()`), never stored, so memory stays at one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from esft.evaluation.settings import KLSection
from esft.policy import Policy
from esft.tasks.base import Task


@dataclass
class _Sample:
    ids: list[int]
    first_continuation: int  # index of the first continuation token in ids


class OffTaskKL:
    """Token-level KL of the current model to theta0 on base-model continuations of prior-task prompts."""

    def __init__(self, policy: Policy, tasks: Mapping[str, Task], samples: int = 50, max_new_tokens: int = 64,
                 batch_size: int = 16) -> None:
        self.policy, self.tasks = policy, dict(tasks)
        self.samples, self.max_new_tokens, self.batch_size = samples, max_new_tokens, batch_size
        self._data: dict[str, list[_Sample]] | None = None

    def _prepare(self) -> None:
        """Greedy continuations of the model as loaded (theta0, see `measure`)."""
        self._data = {}
        for name, task in self.tasks.items():
            examples = list(task.eval_examples())[: self.samples]
            prompts = [task.rollout_prompt(e) for e in examples]
            budget = min(self.max_new_tokens, task.max_new_tokens)
            completions = self.policy.generate(prompts, budget, (), self.batch_size)
            rows = []
            for prompt, completion in zip(prompts, completions):
                head = self.policy.encode_prompt(prompt)
                tail = self.policy.encode(completion)
                if tail:
                    rows.append(_Sample(head + tail, len(head)))
            self._data[name] = rows

    def _log_probs(self, batch: Sequence[_Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token log-probs of the batch (left-padded by the Policy) and the weight of each position: 1
        where it predicts a continuation token, the only tokens the KL averages over."""
        log_probs = self.policy.next_token_log_probs([s.ids for s in batch])
        width = log_probs.shape[1]
        weight = torch.zeros(log_probs.shape[:2], dtype=torch.float32, device=log_probs.device)
        for i, sample in enumerate(batch):  # positions that predict a continuation token
            start = width - len(sample.ids) + sample.first_continuation - 1
            weight[i, start:width - 1] = 1.0
        return log_probs, weight

    def measure(self, reference_weights: Callable[[], ContextManager[Any]]) -> dict[str, float]:
        """KL per task; `reference_weights()` is a context manager that loads theta0 into the model."""
        if self._data is None:
            with reference_weights():  # continuations of the base model, also when resuming mid-run
                self._prepare()
        result: dict[str, float] = {}
        for name, rows in self._data.items():
            total, tokens = 0.0, 0.0
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                current, weight = self._log_probs(batch)
                with reference_weights():
                    base, _ = self._log_probs(batch)
                kl = (current.exp() * (current - base)).sum(-1)  # KL(p_theta || p_theta0) per position
                total += float((kl * weight).sum())
                tokens += float(weight.sum())
            result[name] = total / tokens if tokens else float("nan")
        return result


def build_off_task_kl(policy: Policy, kl: KLSection, tasks: Mapping[str, Task],
                      roles: Mapping[str, str]) -> OffTaskKL | None:
    """The KL diagnostic when `eval.kl.enabled`, on `eval.kl.tasks` (default: the eval-only tasks)."""
    if not kl.enabled:
        return None
    names = kl.tasks or [n for n, role in roles.items() if role == "eval_only"]
    chosen = {n: tasks[n] for n in names if n in tasks}
    return OffTaskKL(policy, chosen, kl.samples, kl.max_new_tokens, kl.batch_size) if chosen else None
