"""Countdown: combine 3-4 numbers with + - * / into an expression equal to a target (TinyZero / es-awd).

Data. The paper uses es-awd's `countdown.json` (2,200 items from the ES-at-Scale repository, 3-4 numbers): the
first 200 train, the other 2,000 are the test set. Locally we read `countdown/train.parquet` + `test.parquet`
(the paper's verl export of that file) or, failing those, `countdown/countdown.json` sliced the same way. The
paper names no hub copy of it, so without `data_dir` we fall back to TinyZero's `Jiayi-Pan/Countdown-Tasks-3to4` (split
`train`, sliced 200 / 2,000 likewise): the same kind of puzzle but NOT the paper's items (countdown.json has
fractional targets such as 27.4, which TinyZero's generator never makes). Pass data_dir to reproduce the paper.
Data caveats (tests/tasks/test_countdown.py pins them): 19 items carry no reference solution, 15 carry one that
reuses a number, and 14 test items have no valid answer at all, so test accuracy cannot exceed 1986/2000.

Prompt. The paper's chat is system + user + an assistant prefill "Let me solve this step by step.\\n<think>".
`Example.prompt` is the user message (the policy applies the chat template); the system message, the prefill
and the full message list are in `meta` for a policy that can honour them.

Reward (es-awd `tasks/countdown/reward_function.py`): 0.1 x format + answer.
- format: 1 if "<think>" + completion is exactly `<think>...</think>\\n<answer>...</answer>`, else 0.1 for a
  think pair plus 0.5 for an answer pair. We prepend "<think>" only when the completion does not already
  start with it (a policy without the prefill lets the model open the tag itself).
- answer: 1 if the LAST <answer>...</answer> holds only digits, + - * / ( ) and spaces, uses every number exactly
  once, and evaluates (safe_math, never eval) to the target within 1e-5.
The tag checks use `str.find` rather than the reference's lazy regexes, which backtrack quadratically on
hostile input; they accept the same strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.data import Rows, SplitTask, has_local_split, load_split, read_local_split, require_fields, verl_fields
from esft.tasks.registry import register
from esft.tasks.safe_math import safe_eval

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"
PAPER_TRAIN, PAPER_TEST = 200, 2000
SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in your mind and then "
          "provide the user with the answer.")
USER_TEMPLATE = ("Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
                 "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in "
                 "<think> </think> tags. And return the final answer in <answer> </answer> tags, for example "
                 "<answer> (1 + 2) / 3 </answer>.")
RESPONSE_PREFIX = "Let me solve this step by step.\n<think>"
_ANSWER_CHARS = re.compile(r"[0-9+\-*/() ]+")
TOLERANCE = 1e-5


def format_reward(completion: str) -> float:
    """es-awd's format score of "<think>" + completion: 1.0 full format, else 0.1 (think) + 0.5 (answer)."""
    text = completion.lstrip() if completion.lstrip().startswith("<think>") else "<think>" + completion
    if _full_format(text):
        return 1.0
    return 0.1 * _has_pair(text, "<think>", "</think>") + 0.5 * _has_pair(text, "<answer>", "</answer>")


def _full_format(text: str) -> bool:
    """`^<think>.*?</think>\\n<answer>.*?</answer>$` (DOTALL) without backtracking: `$` allows one final \\n."""
    body = text[:-1] if text.endswith("\n") else text
    if not (body.startswith("<think>") and body.endswith("</answer>")):
        return False
    joint = body.find("</think>\n<answer>", len("<think>"))
    return joint != -1 and joint + len("</think>\n<answer>") <= len(body) - len("</answer>")


def _has_pair(text: str, opening: str, closing: str) -> bool:
    start = text.find(opening)
    return start != -1 and text.find(closing, start + len(opening)) != -1


def last_answer(completion: str) -> str | None:
    """Content of the last <answer>...</answer> pair as the reference's `re.findall(...)[-1]` finds it, or None.

    Same left-to-right, non-overlapping, lazy pairing as the regex, in one linear pass.
    """
    found, position = None, 0
    while (start := completion.find("<answer>", position)) != -1:
        end = completion.find("</answer>", start + len("<answer>"))
        if end == -1:
            break
        found, position = completion[start + len("<answer>"):end], end + len("</answer>")
    return found


def answer_correct(completion: str, numbers: Sequence[int], target: float) -> bool:
    """The last answer uses each number exactly once and reaches the target within 1e-5."""
    content = last_answer(completion)
    if not content or len(content) > 1000 or not _ANSWER_CHARS.fullmatch(content):
        return False
    if sorted(int(n) for n in re.findall(r"\d+", content)) != sorted(int(n) for n in numbers):
        return False
    value = safe_eval(content)
    return value is not None and abs(value - float(target)) < TOLERANCE


def paper_messages(numbers: Sequence[int], target: str) -> list[dict[str, str]]:
    """The paper's chat for one item (system, user, assistant prefill), as in its parquet `prompt` column."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER_TEMPLATE.format(numbers=list(numbers), target=target)},
            {"role": "assistant", "content": RESPONSE_PREFIX}]


def _fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """Raw fields of a verl parquet row, a countdown.json item or a hub row (`nums` -> `numbers`)."""
    fields = dict(verl_fields(row))
    if "numbers" not in fields and "nums" in fields:
        fields["numbers"] = fields["nums"]
    return fields


@register("countdown")
class Countdown(SplitTask):
    """Countdown target task: 200 training items, 2,000 test items, reward 0.1 x format + answer."""

    name = "countdown"
    paper_eval_size = PAPER_TEST

    def _rows(self, split: str) -> Rows:
        """The paper's split from local parquet, else from countdown.json / the hub sliced 200 / 2,000."""
        if self.data_dir is not None and has_local_split(self.data_dir, "countdown", split):
            rows = read_local_split(Path(self.data_dir), "countdown", split)
        else:
            if self.data_dir is not None and not has_local_split(self.data_dir, "countdown", "countdown"):
                raise EsftError(f"data_dir {self.data_dir} holds no countdown data: put countdown/train.parquet and "
                                "countdown/test.parquet (the paper's verl export) or countdown/countdown.json "
                                "(es-awd's items) under it (README: Getting the benchmark data), or set data_dir=null "
                                "for the hub")
            whole = (read_local_split(Path(self.data_dir), "countdown", "countdown") if self.data_dir is not None
                     else load_split(HUB_ID, None, "train", "countdown", None, limit=PAPER_TRAIN + PAPER_TEST))
            part = whole[:PAPER_TRAIN] if split == "train" else whole[PAPER_TRAIN:PAPER_TRAIN + PAPER_TEST]
            rows = Rows(part, whole.source)
        fields = [_fields(row) for row in rows]
        require_fields(fields, ("numbers", "target"), rows.source, "countdown rows need numbers (or nums) and target")
        return Rows(fields, rows.source)

    def _example(self, row: Mapping[str, Any]) -> Example:
        numbers = [int(n) for n in row["numbers"]]
        target = str(row["target"])
        messages = paper_messages(numbers, target)
        meta = {"numbers": numbers, "target": target, "solution": row.get("solution"), "system": SYSTEM,
                "response_prefix": RESPONSE_PREFIX, "messages": messages}
        return Example(prompt=messages[1]["content"], answer=target, meta=meta)

    def reward(self, completion: str, example: Example) -> float:
        numbers, target = example.meta["numbers"], float(example.answer)
        return 0.1 * format_reward(completion) + float(answer_correct(completion, numbers, target))

    def score(self, completion: str, example: Example) -> float:
        return float(answer_correct(completion, example.meta["numbers"], float(example.answer)))
