"""GSM8K (openai/gsm8k, config main): grade-school word problems with a numeric answer after "####".

Data (es-awd `tasks/gsm8k/create_parquet_split.py`): the first 200 rows of the hub's train split train, the
first 500 of its test split are the test set (no shuffling). Locally: `gsm8k/train.parquet`, `gsm8k/test.parquet`.
The gold answer is the number after "####" in the reference solution (commas dropped: "2,125" -> 2125).

Prompt: the paper's single user message ("Solve this grade-school math word problem step by step ... On the
last line, write only: #### <number>"), reproduced from the question so hub and local data give the same text.

Correctness is reported two ways (`match_details`), because they answer different questions:
- strict: the last explicit final-answer marker -- "#### N", "The answer is N" or "\\boxed{N}" (es-awd's reward
  accepts \\boxed too; Qwen models like it) -- after the last "</think>", equals the gold number;
- flexible: the last number anywhere in the completion equals it (lm-eval's "flexible-extract").
`score` uses strict unless `answer_mode: flexible`. Reward (es-awd): 0.1 x format + answer, where format is 1
when the last non-empty line is exactly "#### N". es-awd falls back to the *first* number after </think> when
no marker is present; we report the last-number fallback instead and keep it out of the default score.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.data import Rows, SplitTask, load_split, require_fields, verl_fields
from esft.tasks.registry import register
from esft.tasks.safe_math import parse_number

HUB_ID, CONFIG = "openai/gsm8k", "main"
PAPER_TEST = 500
USER_TEMPLATE = ("Solve this grade-school math word problem step by step.\n\nProblem: {question}\n\n"
                 "Write short calculations and check the final result.\nOn the last line, write only: #### <number>")
NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
# Linear time on model output: each marker starts with a literal, and no two adjacent quantified pieces can
# match the same character. The former `[ \t]*\$?[ \t]*` let two whitespace runs split one run of n blanks
# n ways (three runs in "the answer is": n^2 ways) before failing, so `"####" + 20,000 spaces + "x"` took
# seconds. `[ \t]*(?:\$[ \t]*)?` admits exactly the same strings with one way to split them, so a failed
# attempt costs O(run length) and each run is scanned by the one marker just before it.
_BLANKS_THEN_NUMBER = rf"[ \t]*(?:\$[ \t]*)?({NUMBER})"
_MARKERS = (
    re.compile(rf"####{_BLANKS_THEN_NUMBER}"),
    re.compile(rf"(?i:the[ \t]+(?:final[ \t]+)?answer[ \t]+is)[ \t]*(?::[ \t]*)?(?:\$[ \t]*)?({NUMBER})"),
    re.compile(rf"\\boxed\{{{_BLANKS_THEN_NUMBER}[ \t]*\}}"),
)
_ANY_NUMBER = re.compile(NUMBER)
_FORMAT_LINE = re.compile(rf"####[ \t]*({NUMBER})\.?")
TOLERANCE = 1e-6


def gold_answer(solution: str) -> str:
    """The canonical gold number of a reference solution: the text after the last "####", commas dropped."""
    value = parse_number(solution.rsplit("####", 1)[-1]) if "####" in solution else None
    if value is None:
        raise EsftError(f"gsm8k reference answer has no number after '####': {solution[-80:]!r}; fix the data")
    return str(int(value)) if value == int(value) else repr(value)


def strict_answer(completion: str) -> str | None:
    """The number of the last explicit answer marker after the last </think> (None if there is none)."""
    region = completion.rsplit("</think>", 1)[-1]
    best: tuple[int, str] | None = None
    for pattern in _MARKERS:
        for match in pattern.finditer(region):
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group(1))
    return None if best is None else best[1]


def flexible_answer(completion: str) -> str | None:
    """The last number anywhere in the completion (None if there is none)."""
    numbers = _ANY_NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def format_reward(completion: str) -> float:
    """1.0 when the last non-empty line is exactly "#### N" (es-awd's strict format), else 0.0."""
    lines = [line.strip() for line in completion.rstrip().splitlines()[-1:]]
    return float(bool(lines) and _FORMAT_LINE.fullmatch(lines[0]) is not None)


def same_number(predicted: str | None, gold: str) -> bool:
    value, target = (parse_number(predicted) if predicted else None), parse_number(gold)
    return value is not None and target is not None and abs(value - target) < TOLERANCE


@register("gsm8k")
class GSM8K(SplitTask):
    """GSM8K target task: 200 training items, 500 test items, reward 0.1 x format + answer."""

    name = "gsm8k"
    paper_eval_size = PAPER_TEST

    def __init__(self, data_dir: Any = None, seed: int = 0, *, answer_mode: str = "strict", **options: Any) -> None:
        super().__init__(data_dir, seed, **options)
        if answer_mode not in ("strict", "flexible"):
            raise EsftError(f"task 'gsm8k': answer_mode={answer_mode!r} must be strict or flexible")
        self.answer_mode = answer_mode

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return (*super().option_names(), "answer_mode")

    def _rows(self, split: str) -> Rows:
        limit = self.train_size if split == self.train_split else PAPER_TEST
        rows = load_split(HUB_ID, CONFIG, split, "gsm8k", self.data_dir, limit=limit)
        fields = Rows([verl_fields(row) for row in rows], rows.source)
        require_fields(fields, ("question", "answer"), rows.source, "gsm8k rows need question and answer")
        return fields

    def _example(self, row: Mapping[str, Any]) -> Example:
        question = str(row["question"]).strip()
        user = USER_TEMPLATE.format(question=question)
        meta = {"question": question, "solution": row["answer"], "messages": [{"role": "user", "content": user}]}
        return Example(prompt=user, answer=gold_answer(str(row["answer"])), meta=meta)

    def match_details(self, completion: str, example: Example) -> dict[str, Any]:
        """Both correctness modes, the extracted answers and the format score, for the evaluator's report."""
        text = self._guard(completion)
        if text is None:
            return {"strict": False, "flexible": False, "strict_answer": None, "flexible_answer": None, "format": 0.0}
        strict, flexible = strict_answer(text), flexible_answer(text)
        return {"strict": same_number(strict, example.answer), "flexible": same_number(flexible, example.answer),
                "strict_answer": strict, "flexible_answer": flexible, "format": format_reward(text)}

    def score(self, completion: str, example: Example) -> float:
        return float(self.match_details(completion, example)[self.answer_mode])

    def reward(self, completion: str, example: Example) -> float:
        details = self.match_details(completion, example)
        return 0.1 * details["format"] + float(details[self.answer_mode])
