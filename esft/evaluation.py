"""Scoring tasks with a policy: the one path shared by ES fitness, RL rewards and checkpoint evaluation.

`score_examples` picks the cheapest *exact* way to know what greedy decoding would score: for exact-answer
tasks one teacher-forced forward (see Policy.exact_match), otherwise generation plus the task's reward and
score functions. `Evaluator` scores every task of the curriculum plus eval-only tasks at a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from esft.policy import Policy
from esft.tasks.base import Example, Task


@dataclass
class Scored:
    """Per-example accuracy and reward of one policy on a batch of examples."""

    accuracy: np.ndarray
    reward: np.ndarray
    completions: list[str] | None = None


def score_examples(policy: Policy, task: Task, examples: Sequence[Example], batch_size: int = 256,
                   generation_batch_size: int = 64) -> Scored:
    """Score greedy completions of `examples`; exact-answer tasks take the teacher-forced shortcut."""
    prompts = [task.rollout_prompt(e) for e in examples]
    if task.exact_answer:
        matches = policy.exact_match(prompts, [e.answer for e in examples], task.max_new_tokens, batch_size)
        values = matches.numpy().astype(np.float64)
        return Scored(values, values.copy())
    completions = policy.generate(prompts, task.max_new_tokens, task.stop, generation_batch_size)
    accuracy = np.array([task.score(c, e) for c, e in zip(completions, examples)], dtype=np.float64)
    reward = np.array([task.reward(c, e) for c, e in zip(completions, examples)], dtype=np.float64)
    return Scored(accuracy, reward, completions)


class Evaluator:
    """Scores every task at a checkpoint; rows follow the evals.jsonl contract (esft/rundir.py)."""

    def __init__(self, policy: Policy, tasks: Mapping[str, Task], roles: Mapping[str, str],
                 batch_size: int = 256, size: int | None = None) -> None:
        self.policy = policy
        self.tasks = dict(tasks)
        self.roles = dict(roles)
        self.batch_size = batch_size
        self.size = size

    def _examples(self, task: Task) -> Sequence[Example]:
        examples = task.eval_examples()
        return examples[: self.size] if self.size else examples

    def evaluate(self) -> list[dict]:
        rows = []
        for name, task in self.tasks.items():
            started = time.perf_counter()
            scored = score_examples(self.policy, task, self._examples(task), self.batch_size)
            rows.append({
                "task": name,
                "accuracy": float(scored.accuracy.mean()) if scored.accuracy.size else float("nan"),
                "reward": float(scored.reward.mean()) if scored.reward.size else float("nan"),
                "n": int(scored.accuracy.size),
                "role": self.roles.get(name, "curriculum"),
                "seconds": round(time.perf_counter() - started, 4),
            })
        return rows
