"""The linear-time answer patterns give the same answers as the patterns they replaced, on realistic completions.

The former patterns (kept below, verbatim, as the reference) let adjacent quantifiers split one run of blanks
many ways and took seconds on long blank runs (tests/tasks/test_adversarial_rewards.py). They are only ever run
here, on short text. The random completions are built from the pieces real completions are made of: words,
numbers with commas / dollars / decimals / signs, every answer marker in several spellings, a few blanks or
tabs, colons, parentheses, braces, option letters, </think> and line breaks.
"""

from __future__ import annotations

import random
import re

import pytest

from esft.tasks.custom import JsonlTask, _exact, _normal
from esft.tasks.gsm8k import flexible_answer, format_reward, strict_answer
from esft.tasks.multiple_choice import extract_letter
from esft.tasks.safe_math import parse_number

OLD_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
OLD_MARKERS = (
    re.compile(rf"####[ \t]*\$?[ \t]*({OLD_NUMBER})"),
    re.compile(rf"(?i:the[ \t]+(?:final[ \t]+)?answer[ \t]+is)[ \t]*:?[ \t]*\$?[ \t]*({OLD_NUMBER})"),
    re.compile(rf"\\boxed\{{[ \t]*\$?[ \t]*({OLD_NUMBER})[ \t]*\}}"),
)
OLD_ANSWER_PHRASE = re.compile(
    r"(?i:answer[ \t]*(?:is|:)|option[ \t]+is|choice[ \t]+is)[ \t]*:?[ \t]*\(?([A-J])\)?(?![A-Za-z])")
OLD_LEADING_LETTER = re.compile(r"[*_ \t]*\(?([A-J])(?:[).:*]|[ \t]*$)")
LABELS = "ABCD"


def old_strict_answer(completion: str) -> str | None:
    region = completion.rsplit("</think>", 1)[-1]
    best: tuple[int, str] | None = None
    for pattern in OLD_MARKERS:
        for match in pattern.finditer(region):
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group(1))
    return None if best is None else best[1]


def old_extract_letter(completion: str, labels: str) -> str | None:
    chosen = [m.group(1) for m in OLD_ANSWER_PHRASE.finditer(completion) if m.group(1) in labels]
    if chosen:
        return chosen[-1]
    match = OLD_LEADING_LETTER.match(completion.strip().split("\n", 1)[0])
    return match.group(1) if match and match.group(1) in labels else None


MARKERS = ("####", "#### ", "The answer is", "the answer is:", "The final answer is", "THE ANSWER IS", "\\boxed{",
           "\\boxed{ ", "Answer:", "answer :", "answer is", "The correct option is", "my choice is", "Answer: (",
           "</think>", "<think>")
NUMBERS = ("18", "2,125", "$18", "$ 18", "-3.5", "-$4", "0.25", "1,000,000", "7.", "42", "$$5", "12,")
WORDS = ("so", "she", "makes", "dollars", "total", "Let", "me", "check", "Wait", "A", "B", "C", "D", "E", "I", "a",
         "good", "Because", "gravity", "(B)", "(C).", "**A**", "D.", "K", "x", "is", "the", "final", "option")
GLUE = (" ", "  ", "\t", " \t ", "", ":", ": ", " : ", "$", " $ ", "\n", "\n\n", ".", "(", ")", "}", " }", "{")


def realistic_completions(count: int, seed: int = 0) -> list[str]:
    """`count` seeded random completions of 3-30 pieces; short runs of blanks only (realistic, fast)."""
    rng = random.Random(seed)
    kinds = (MARKERS, NUMBERS, WORDS, GLUE)
    texts = []
    for _ in range(count):
        pieces = [rng.choice(rng.choice(kinds)) for _ in range(rng.randint(3, 30))]
        texts.append("".join(pieces))
    return texts


HAND_WRITTEN = [
    "9 + 9 = 18\n#### 18", "So she makes $18 a day.\nThe answer is 18.", "The answer is: $18", "The answer is : $ 18",
    "Therefore the final answer is \\boxed{18}.", "\\boxed{ $ 2,125 }", "\\boxed{18 x}", "#### 17\nThe answer is 18",
    "<think>#### 18</think>\nThe answer is 17", "#### $-3", "####\t\t$\t7", "The answer is $$5", "the answer is:5",
    "The answer is (B).", "Answer: D", "answer : : C", "the correct option is B because", "(C)", "**A**", "  B  ",
    "Answer: (B)x", "Answer: Bx", "answer is\t( D )", "The answer is Because", "D. Planetary gravity", "A good idea",
]


@pytest.mark.parametrize("completion", HAND_WRITTEN)
def test_hand_written_completions_extract_as_before(completion: str) -> None:
    assert strict_answer(completion) == old_strict_answer(completion)
    assert extract_letter(completion, LABELS) == old_extract_letter(completion, LABELS)


def test_random_realistic_completions_extract_as_before() -> None:
    texts = realistic_completions(4000)
    strict_found = sum(old_strict_answer(t) is not None for t in texts)
    letters_found = sum(old_extract_letter(t, LABELS) is not None for t in texts)
    assert strict_found > 400 and letters_found > 400, "the corpus must exercise the markers it compares"
    for text in texts:
        assert strict_answer(text) == old_strict_answer(text), text
        assert extract_letter(text, LABELS) == old_extract_letter(text, LABELS), text
        assert extract_letter(text, "ABCDEFGHIJ") == old_extract_letter(text, "ABCDEFGHIJ"), text


def test_numeric_reward_and_gsm8k_helpers_agree_with_the_reference(tmp_path) -> None:
    """The jsonl numeric reward is strict-else-flexible extraction: same verdicts as with the old patterns."""
    path = tmp_path / "items.jsonl"
    path.write_text('{"prompt": "p", "answer": "18"}\n', encoding="utf-8")
    task = JsonlTask(name="num", jsonl=str(path), reward_kind="numeric")
    example = task.eval_examples()[0]
    for text in realistic_completions(1500, seed=1) + HAND_WRITTEN:
        said = old_strict_answer(text) or flexible_answer(text)
        expected = said is not None and parse_number(said) == 18.0
        assert task.score(text, example) == float(expected), text
        assert format_reward(text) in (0.0, 1.0)


def old_exact(completion: str, answer: str) -> bool:
    """The jsonl `exact` reward before the change (its index into `lower()` drifts on text lower() lengthens)."""
    lines = [line for line in completion.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    marker = completion.lower().rfind("answer:")
    after = completion[marker + len("answer:"):] if marker != -1 else None
    gold = _normal(answer)
    return any(_normal(c) == gold for c in (completion, last, after) if c is not None)


def test_exact_reward_agrees_with_the_reference_and_survives_lengthening_case_folds() -> None:
    texts = realistic_completions(1500, seed=2) + HAND_WRITTEN
    texts += [f"{text}\n{marker} b." for text, marker in zip(texts[:300], ("Answer:", "ANSWER:", "answer:") * 100)]
    golds = ("B", "18", "C", "the answer is 18", "so")
    agreed = sum(_exact(t, g) == old_exact(t, g) for t in texts for g in golds)
    assert agreed == len(texts) * len(golds) and sum(_exact(t, g) for t in texts for g in golds) >= 300
    # "\u0130".lower() is two characters, so the old index pointed one character early ("\u0130 Answer: Paris")
    assert _exact("\u0130\u0130 Answer: Paris", "Paris") and not old_exact("\u0130\u0130 Answer: Paris", "Paris")
