"""The Task seam: everything a trainer or evaluator may know about a task.

A task owns its data (train examples, a fixed seeded eval subset), how an example becomes a prompt, and two
functions of a completion: `reward` (the shaped training signal; e.g. the papers' 0.1 x format + answer) and
`score` (the accuracy used in drift curves). Trainers never parse completions themselves.

`exact_answer = True` declares that the completion is correct iff it equals `example.answer` token for token.
Under greedy decoding the evaluator may then decide correctness with one teacher-forced forward (greedy output
equals the target iff the argmax at every answer position is the target token) instead of generating.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One item: the prompt text (before any chat template), the reference answer, and task-specific fields."""

    prompt: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """What the policy continues: the user text, plus the paper's optional system message and the start of the
    assistant's reply (e.g. countdown's "Let me solve this step by step.\n<think>"). The policy renders it with
    the chat template when there is one, else as plain text + prefix."""

    text: str
    system: str | None = None
    response_prefix: str = ""


class Task(ABC):
    """Base class of every task. Subclasses set `name` and implement the data and scoring methods."""

    name: str = "task"
    #: completion must equal `example.answer` exactly (enables the teacher-forced scoring shortcut)
    exact_answer: bool = False
    #: generation budget and stop strings for this task's completions
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()

    @abstractmethod
    def train_examples(self) -> Sequence[Example]:
        """Examples ES / RL draw their per-step prompts from."""

    @abstractmethod
    def eval_examples(self) -> Sequence[Example]:
        """The fixed, seeded held-out subset scored at every checkpoint."""

    def prompt(self, example: Example) -> str:
        """The text the policy continues (the chat template, if any, is the policy's business)."""
        return example.prompt

    def rollout_prompt(self, example: Example) -> Prompt:
        """The full prompt for generation: `prompt()` plus the system message and reply prefix stored in
        `example.meta` by tasks that reproduce a paper's chat format."""
        meta = example.meta or {}
        return Prompt(self.prompt(example), meta.get("system"), meta.get("response_prefix") or "")

    @abstractmethod
    def score(self, completion: str, example: Example) -> float:
        """Accuracy of one completion in [0, 1]; this is what drift curves plot."""

    def reward(self, completion: str, example: Example) -> float:
        """Training signal of one completion. Defaults to the score (exact-answer tasks)."""
        return self.score(completion, example)

    def describe(self) -> dict[str, Any]:
        """Small summary for logs: sizes and decoding settings."""
        return {
            "name": self.name,
            "train": len(self.train_examples()),
            "eval": len(self.eval_examples()),
            "exact_answer": self.exact_answer,
            "max_new_tokens": self.max_new_tokens,
        }
