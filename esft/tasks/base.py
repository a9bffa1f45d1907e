"""The Task seam: everything a trainer or evaluator may know about a task.

A task owns its data (train examples, a fixed seeded eval subset), how an example becomes a prompt, and two
functions of a completion: `reward` (the shaped training signal; e.g. the papers' 0.1 x format + answer) and
`score` (the accuracy used in drift curves). Trainers never parse completions themselves.

`exact_answer = True` declares that the completion is correct iff it equals `example.answer` token for token.
Under greedy decoding the evaluator may then decide correctness with one teacher-forced forward (greedy output
equals the target iff the argmax at every answer position is the target token) instead of generating.

Length cap. Every `score` and `reward` a subclass defines is wrapped, once, when the class is created
(`Task.__init_subclass__`): a completion that is not a string or is longer than `max_completion_chars`
(100,000 characters; a 1,024-token completion is a few thousand) scores 0.0 without being parsed. Trainers,
the evaluator and the TRL reward functions all call these two methods, so no completion reaches a task's own
parsing uncapped, including tasks users write themselves. Within the cap every built-in scorer runs in time
linear in the completion length (tests/tasks/test_adversarial_rewards.py).
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esft.core.prompts import Prompt

#: a 1024-token completion is a few thousand characters; anything far longer is hostile and scores 0
MAX_COMPLETION_CHARS = 100_000

Scorer = Callable[["Task", str, "Example"], float]


@dataclass(frozen=True)
class Example:
    """One item: the prompt text (before any chat template), the reference answer, and task-specific fields."""

    prompt: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class of every task. Subclasses set `name` and implement the data and scoring methods."""

    name: str = "task"
    #: completion must equal `example.answer` exactly (enables the teacher-forced scoring shortcut)
    exact_answer: bool = False
    #: generation budget and stop strings for this task's completions
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    #: longer completions (and non-strings) score 0.0 unparsed; see the module docstring
    max_completion_chars: int = MAX_COMPLETION_CHARS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Cap the completions every subclass's own `score` / `reward` receives (see the module docstring)."""
        super().__init_subclass__(**kwargs)
        for name in ("score", "reward"):
            method = cls.__dict__.get(name)
            if inspect.isfunction(method) and not getattr(method, "__isabstractmethod__", False):
                setattr(cls, name, _length_capped(method))

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

    def _guard(self, completion: Any) -> str | None:
        """The completion if it is a string within the cap, else None (to be scored 0 without parsing)."""
        if not isinstance(completion, str) or len(completion) > self.max_completion_chars:
            return None
        return completion

    def describe(self) -> dict[str, Any]:
        """Small summary for logs: sizes and decoding settings."""
        return {
            "name": self.name,
            "train": len(self.train_examples()),
            "eval": len(self.eval_examples()),
            "exact_answer": self.exact_answer,
            "max_new_tokens": self.max_new_tokens,
        }


def _length_capped(method: Scorer) -> Scorer:
    """`method` behind the length cap: hostile lengths score 0.0 before any parsing. Idempotent."""
    if getattr(method, "_length_capped", False):
        return method

    @functools.wraps(method)
    def capped(self: Task, completion: str, example: Example) -> float:
        if self._guard(completion) is None:
            return 0.0
        return method(self, completion, example)

    capped._length_capped = True  # type: ignore[attr-defined]
    return capped
