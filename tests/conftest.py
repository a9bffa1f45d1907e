"""Shared fixtures: tiny models built in memory (no hub, no warm-up) and toy tasks with graded rewards."""

from __future__ import annotations

import pytest
from support import micro_policy

from esft.policy import Policy
from esft.tasks.base import Example, Task


@pytest.fixture
def policy() -> Policy:
    return micro_policy()


class DigitTask(Task):
    """Toy generated task: reward = share of digit characters among two generated characters.

    A random model emits arbitrary bytes, so perturbed members get different rewards and ES has signal.
    """

    name = "digits"
    exact_answer = False
    max_new_tokens = 2

    def __init__(self, n: int = 16) -> None:
        self._examples = [Example(prompt=f"{i:02d}+{(7 * i) % 100:02d}=", answer="00") for i in range(n)]

    def train_examples(self):
        return self._examples

    def eval_examples(self):
        return self._examples

    def score(self, completion: str, example: Example) -> float:
        return sum(ch.isdigit() for ch in completion[:2]) / 2


@pytest.fixture
def digit_task() -> DigitTask:
    return DigitTask()
