"""Procedurally generated arithmetic tasks for the built-in tiny model.

Why these tasks: on a tiny model trained from scratch, full-parameter ES cannot learn new computation (the ES
update is nearly orthogonal to the true gradient), but it *can select between behaviours the model already
has* -- the regime in which ES fine-tunes LLMs. So the supervised warm-up deliberately leaves two choices
ambiguous: `add` is labelled in normal or reversed digit order 50/50 (`add` / `add_reversed`), and `abcd|>` is
answered by reversing or copying 50/50 (`reverse` / `copy`). Both candidate digits are then already in the
logits and ES only has to pick one (stage A: add 50-60% -> ~100%; stage B: reverse 41-48% -> ~100%).
`subtract` is learned cleanly and serves as the eval-only skill whose erosion measures forgetting. A sign
convention mixed 50/50 with its flip was tried first and gave ES little to select; digit-order ambiguities
work (its update direction is about as aligned with the gradient as a random direction).

Every prompt is 6 tokens and every answer 3 tokens under the tiny byte-level tokenizer, with no padding, so
the warm-up and the teacher-forced exact-match evaluation batch without masks.

Operand pairs (a, b) in [0, 99]^2 are split ONCE by `SPLIT_SEED` (a module constant, independent of the run
seed) into 9000 train and 1000 held-out pairs shared by all tasks: no task can leak another's test pairs
into the warm-up, and every run scores the same held-out items in the same order.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence
from functools import cache
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example, Task
from esft.tasks.registry import register

SPLIT_SEED = 20240611
N_OPERANDS = 100
N_HELD_OUT = 1000
Pair = tuple[int, int]


@cache
def operand_split() -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(train pairs, held-out pairs): one fixed shuffle of all 10,000 pairs, 9000 / 1000."""
    pairs = [(a, b) for a in range(N_OPERANDS) for b in range(N_OPERANDS)]
    random.Random(SPLIT_SEED).shuffle(pairs)
    return tuple(pairs[N_HELD_OUT:]), tuple(pairs[:N_HELD_OUT])


class ArithmeticTask(Task):
    """Shared machinery: subclasses only say how an operand pair becomes a prompt and an answer.

    `seed` is accepted for the factory signature but unused: the split and the eval order are fixed so that
    every run (and every seed of a sweep) is scored on identical items.
    """

    exact_answer = True
    max_new_tokens = 3
    stop: tuple[str, ...] = ()

    def __init__(self, data_dir: str | None = None, seed: int = 0, eval_size: int = N_HELD_OUT, **unknown: Any):
        if unknown:
            names = ", ".join(sorted(unknown))
            raise EsftError(f"task '{self.name}' got unknown option(s) {names}; it takes only eval_size")
        if not 1 <= int(eval_size) <= N_HELD_OUT:
            raise EsftError(f"task '{self.name}': eval_size={eval_size} must be between 1 and {N_HELD_OUT}")
        self.eval_size = int(eval_size)
        self._train: tuple[Example, ...] | None = None
        self._eval: tuple[Example, ...] | None = None

    @abstractmethod
    def _prompt(self, a: int, b: int) -> str:
        """The 6-character prompt for operands (a, b)."""

    @abstractmethod
    def _answer(self, a: int, b: int) -> str:
        """The 3-character answer for operands (a, b)."""

    def example(self, a: int, b: int) -> Example:
        return Example(prompt=self._prompt(a, b), answer=self._answer(a, b), meta={"a": a, "b": b})

    def train_examples(self) -> Sequence[Example]:
        if self._train is None:
            self._train = tuple(self.example(a, b) for a, b in operand_split()[0])
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        if self._eval is None:
            self._eval = tuple(self.example(a, b) for a, b in operand_split()[1][: self.eval_size])
        return self._eval

    def score(self, completion: str, example: Example) -> float:
        return 1.0 if completion.strip() == example.answer else 0.0


def _digits(a: int, b: int) -> str:
    """The two operands as four zero-padded digits, `12, 34 -> "1234"`."""
    return f"{a:02d}{b:02d}"


@register("add")
class Add(ArithmeticTask):
    """`12+34=` -> `046`: the zero-padded 3-digit sum (ES stage A selects this over the reversed order)."""

    name = "add"

    def _prompt(self, a: int, b: int) -> str:
        return f"{a:02d}+{b:02d}="

    def _answer(self, a: int, b: int) -> str:
        return f"{a + b:03d}"


@register("add_reversed")
class AddReversed(Add):
    """`12+34=` -> `640`: the sum's digits reversed; warm-up only, it makes `add` ambiguous."""

    name = "add_reversed"

    def _answer(self, a: int, b: int) -> str:
        return f"{a + b:03d}"[::-1]


@register("reverse")
class Reverse(ArithmeticTask):
    """`1234|>` -> `432`: the first three characters of the reversed digits (ES stage B selects this)."""

    name = "reverse"

    def _prompt(self, a: int, b: int) -> str:
        return f"{_digits(a, b)}|>"

    def _answer(self, a: int, b: int) -> str:
        return _digits(a, b)[::-1][:3]


@register("copy")
class Copy(Reverse):
    """`1234|>` -> `123`: the first three digits copied; warm-up only, it makes `reverse` ambiguous."""

    name = "copy"

    def _answer(self, a: int, b: int) -> str:
        return _digits(a, b)[:3]


@register("subtract")
class Subtract(ArithmeticTask):
    """`12-34=` -> `-22`, `34-12=` -> `+22`, `12-12=` -> `+00`: learned cleanly, the eval-only skill."""

    name = "subtract"

    def _prompt(self, a: int, b: int) -> str:
        return f"{a:02d}-{b:02d}="

    def _answer(self, a: int, b: int) -> str:
        return f"{'+' if a >= b else '-'}{abs(a - b):02d}"
