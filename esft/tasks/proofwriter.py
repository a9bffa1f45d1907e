"""ProofWriter (tasksource/proofwriter): is a question entailed by a small theory? True / False / Unknown.

Data (es-awd `tasks/proofwriter/create_parquet_split.py`): the hub's train split, shuffled with seed 0
(`Dataset.shuffle`), first 200 rows train and the next 1,000 are the test set. Locally:
`proofwriter/train.parquet`, `proofwriter/test.parquet` (that very cut). Labels are canonicalised to
True / False / Unknown.

Prompt: the paper's user message (instructions, "Theory: ...", "Question: ...") rebuilt from the fields; its
assistant prefill "Reasoning:" is in `meta` (the policy applies the chat template to the user message).

Reward (es-awd `tasks/proofwriter/reward_function.py`): 0.1 x format + answer.
- format: the last non-empty line is "Answer: <label>". es-awd accepts any word there; we require one of the
  three labels, which is what the prompt asks for.
- answer: the predicted label equals the gold one. The label is the last "Answer: X" line, else a label on the
  last line ("Final answer is X"), else the last true/false/unknown word anywhere, as in es-awd.
Lines are matched one at a time with `[ \\t]` rather than the reference's multiline `\\s*`, which backtracks
quadratically over long runs of newlines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.data import Rows, SplitTask, load_split, require_fields, verl_fields
from esft.tasks.registry import register

HUB_ID = "tasksource/proofwriter"
PAPER_TRAIN, PAPER_TEST, PAPER_SHUFFLE_SEED = 200, 1000, 0
LABELS = {"true": "True", "false": "False", "unknown": "Unknown"}
USER_TEMPLATE = (
    "You are given a theory and a question. Determine whether the question is entailed by the theory.\n\n"
    "First write your reasoning.\nOn the last line, write exactly one of these formats:\n"
    "Answer: True\nAnswer: False\nAnswer: Unknown\n"
    "Do not add any other words, punctuation, or explanation after the final label.\n\n"
    "Theory: {theory}\nQuestion: {question}"
)
RESPONSE_PREFIX = "Reasoning:"
_ANSWER_LINE = re.compile(r"[ \t]*answer[ \t]*:[ \t]*([A-Za-z]+)[ \t]*", re.IGNORECASE)
_LENIENT_LINE = re.compile(r"(?:final[ \t]+answer[ \t]*(?::|is)[ \t]*|answer[ \t]*(?::|is)[ \t]*)?([A-Za-z]+)[.!?,:;]*",
                           re.IGNORECASE)
_ANY_LABEL = re.compile(r"\b(true|false|unknown)\b", re.IGNORECASE)


def canonical_label(value: Any) -> str | None:
    """"true" / "False." / " UNKNOWN " -> True / False / Unknown; anything else -> None."""
    text = str(value).strip().rstrip(".!?,:;").strip().lower()
    return LABELS.get(text)


def predicted_label(completion: str) -> str | None:
    """The model's label: last "Answer: X" line, else the last line alone, else the last label word."""
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ANSWER_LINE.fullmatch(line)
        if match:
            return canonical_label(match.group(1))
    if lines:
        match = _LENIENT_LINE.fullmatch(lines[-1])
        if match and canonical_label(match.group(1)):
            return canonical_label(match.group(1))
    words = _ANY_LABEL.findall(completion)
    return canonical_label(words[-1]) if words else None


def format_reward(completion: str) -> float:
    """1.0 when the last non-empty line is "Answer: True|False|Unknown" (any case), else 0.0."""
    lines = [line for line in completion.splitlines() if line.strip()]
    match = _ANSWER_LINE.fullmatch(lines[-1].strip()) if lines else None
    return float(match is not None and canonical_label(match.group(1)) is not None)


@register("proofwriter")
class ProofWriter(SplitTask):
    """ProofWriter target task: 200 training items, 1,000 test items, reward 0.1 x format + answer."""

    name = "proofwriter"
    paper_eval_size = PAPER_TEST

    def _rows(self, split: str) -> Rows:
        """Local parquet split, or the paper's cut of the shuffled hub train split (200 / 1,000)."""
        if self.data_dir is not None:
            rows = load_split(HUB_ID, None, split, "proofwriter", self.data_dir)
        else:
            whole = load_split(HUB_ID, None, "train", "proofwriter", None, limit=PAPER_TRAIN + PAPER_TEST,
                               shuffle_seed=PAPER_SHUFFLE_SEED)
            rows = Rows(whole[:PAPER_TRAIN] if split == "train" else whole[PAPER_TRAIN:], whole.source)
        fields = Rows([verl_fields(row) for row in rows], rows.source)
        require_fields(fields, ("theory", "question", "answer"), rows.source,
                       "proofwriter rows need theory, question and answer")
        return fields

    def _example(self, row: Mapping[str, Any]) -> Example:
        user = USER_TEMPLATE.format(theory=row["theory"], question=row["question"])
        label = canonical_label(row["answer"])
        if label is None:
            raise EsftError(f"proofwriter answer {row['answer']!r} is not True/False/Unknown; fix the data")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": RESPONSE_PREFIX}]
        meta = {"theory": row["theory"], "question": row["question"], "config": row.get("config"),
                "depth": row.get("QDep"), "response_prefix": RESPONSE_PREFIX, "messages": messages}
        return Example(prompt=user, answer=label, meta=meta)

    def score(self, completion: str, example: Example) -> float:
        return float(predicted_label(completion) == example.answer)

    def reward(self, completion: str, example: Example) -> float:
        return 0.1 * format_reward(completion) + float(predicted_label(completion) == example.answer)
