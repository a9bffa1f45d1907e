"""Every task's reward and score runs in time linear in the completion length, on hostile model output.

A policy under ES or RL can emit anything: runs of blanks after an answer marker, the same near-miss phrase
thousands of times, unbalanced braces, thousands of parentheses, long digit runs, unicode digits, NUL bytes.
Before the rewrite a single such completion took seconds to minutes to score ("####" + 20,000 spaces + "x":
the gsm8k marker's two adjacent `[ \\t]*` split the run n ways; "The answer is" + blanks: three runs, n^2 ways),
stalling a whole ES step. Here a generated list of hostile completions, up to the base Task's 100,000-character
cap, is scored by every built-in task (and every custom reward kind, and through the TRL reward functions), each
completion within `BOUND_S`. The bound is generous for a loaded 2-core machine (a linear scorer takes about
10-60 ms per 100,000 characters) yet far below what the old patterns took on the same inputs. A per-call alarm
(`HANG_S`) turns a regression into a fast failure rather than a hung test run.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esft.tasks.base import MAX_COMPLETION_CHARS, Example, Task
from esft.tasks.custom import JsonlTask
from esft.tasks.registry import build_task
from esft.tasks.safe_math import parse_number, safe_eval
from esft.tasks.trl_rewards import trl_reward_fn, trl_rows

BOUND_S = 0.5  # per completion, score + reward together
HANG_S = 5.0  # a call still running after this long is a regression; stop it rather than wait
RUN_CHARS = 8_000  # size of the keyword x filler families (the old patterns took 2-3 s, or hung, at this size)

#: every literal some extractor keys on, plus none at all
KEYWORDS = ("", "####", "The answer is", "the final answer is", "\\boxed{", "answer is", "Answer:", "option is",
            "choice is", "answer", "<answer>", "</think>\n<answer>", "<think>", "Final answer is", "True", "$")
#: what follows the keyword, repeated: blanks of every kind, separators, digits (ASCII, grouped, Arabic-Indic),
#: NUL, openers without closers, a letter that is no option
FILLERS = (" ", "\t", " \t", "\n", "\r\n", "\n \n", ": ", "$ ", "9", "9,", "\u0663", "\x00", "(", "{", "x", "*")
TAILS = ("x", "1", "B", "}", "", ")")


def _fill(prefix: str, unit: str, tail: str, size: int) -> str:
    """prefix + unit repeated + tail, `size` characters long (the unit is cut to fit)."""
    body = size - len(prefix) - len(tail)
    return prefix + (unit * (body // len(unit) + 1))[:body] + tail


def family_completions() -> list[tuple[str, str]]:
    """(label, completion): every keyword followed by a run of every filler, and every near miss repeated."""
    cases: list[tuple[str, str]] = []
    for i, keyword in enumerate(KEYWORDS):
        for j, filler in enumerate(FILLERS):
            tail = TAILS[(i + j) % len(TAILS)]
            cases.append((f"run {keyword!r}+{filler!r}*+{tail!r}", _fill(keyword, filler, tail, RUN_CHARS)))
            near_miss = keyword + filler * 3 + "x"
            cases.append((f"repeat ({near_miss!r})*", _fill("", near_miss, "", RUN_CHARS)))
    return cases


def cap_completions() -> list[tuple[str, str]]:
    """(label, completion): the issue's cases and other hostile shapes, each filling the 100,000-character cap."""
    cap = MAX_COMPLETION_CHARS
    half = (cap - len("<answer>1</answer>")) // 2
    special = {
        "issue: the answer is + spaces": _fill("The answer is", " ", "x", cap),
        "issue: #### + spaces": _fill("####", " ", "x", cap),
        "issue: boxed + spaces": _fill("\\boxed{", " ", "x", cap),
        "issue: answer is + spaces + 1": _fill("answer is ", " ", "1", cap),
        "issue: (The answer isx)*": _fill("", "The answer isx", "", cap),
        "tabs and spaces after every marker": _fill("", "#### \t The answer is \t \\boxed{ \t Answer: \t ", "", cap),
        "blank lines then answer": _fill("", "\n", "answer: maybe", cap),
        "crlf lines": _fill("", "Answer:\r\n", "", cap),
        "deep parentheses in answer tags": "<answer>" + "(" * half + "1" + ")" * half + "</answer>",
        "unbalanced parentheses": _fill("<answer>", "(", "", cap),
        "unbalanced braces": _fill("", "\\boxed{", "", cap),
        "nested braces": _fill("", "\\boxed{{", "18", cap),
        "long digit run": "9" * cap,
        "long digit run after marker": _fill("#### ", "9", "", cap),
        "long grouped number": _fill("The answer is ", "1,", "1", cap),
        "long decimal": _fill("#### 1.", "5", "", cap),
        "dotted digits": _fill("", "1.", "", cap),
        "unicode digits": _fill("#### ", "\u0663", "", cap),
        "unicode digits everywhere": _fill("", "The answer is \u0663\u0664 ", "", cap),
        "nul bytes": "\x00" * cap,
        "nul bytes after marker": _fill("The answer is", "\x00", "18", cap),
        "repeated open answer tags": _fill("", "<answer>", "", cap),
        "repeated think/answer joints": _fill("", "</think>\n<answer>", "", cap),
        "answer tags of operators": _fill("", "<answer>9*9*9</answer>", "", cap),
        "power tower in tags": _fill("<answer>", "9**", "9</answer>", cap),
        "chained sum in tags": _fill("<answer>" + "1+" * 499 + "1</answer>", " ", "", cap),
        "many labels": _fill("", "true false unknown ", "", cap),
        "final answer lines": _fill("", "Final answer is ", "", cap),
        "option letters": _fill("", "(A) (B) (C) ", "", cap),
        "answer phrases without letter": _fill("", "answer is (", "", cap),
        "mixed whitespace": _fill("", " \t\n\r\x0b\x0c\u2028\u00a0", "", cap),
        "exactly at the cap": _fill("", " ", "#### 18", cap),
    }
    assert all(len(text) == cap for text in special.values())
    return list(special.items())


OVER_CAP = {
    "one over the cap": "#### 18" + " " * (MAX_COMPLETION_CHARS - 6),
    "10 MB of digits": "9" * 10_000_000,
    "10 MB of blanks after a marker": "The answer is" + " " * 10_000_000,
}


class _Hang(Exception):
    """A scorer ran past HANG_S."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt a runaway regular expression (the re module checks for signals) where SIGALRM exists."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    try:
        with _alarm(HANG_S):
            function()
    except _Hang:
        return math.inf
    return time.perf_counter() - start


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Task, Example]]:
    """Every built-in task and every custom reward kind, each with one example (no data files are read)."""
    labels = {"labels": list("ABCD")}
    built = {
        "countdown": (build_task("countdown"), Example("p", "24", {"numbers": [3, 4, 5, 9]})),
        "gsm8k": (build_task("gsm8k"), Example("p", "18", {})),
        "gsm8k_flexible": (build_task({"name": "gsm8k", "answer_mode": "flexible"}), Example("p", "18", {})),
        "proofwriter": (build_task("proofwriter"), Example("p", "True", {})),
        **{name: (build_task(name), Example("p", "B", labels))
           for name in ("arc_challenge", "piqa", "mmlu_pro", "hellaswag")},
        **{name: (build_task(name), Example("p", "046", {})) for name in ("add", "add_reversed", "reverse", "copy")},
        "subtract": (build_task("subtract"), Example("p", "+22", {})),
    }
    folder = tmp_path_factory.mktemp("custom")
    specs = {
        "jsonl_exact": ("exact", [{"prompt": "capital of France?", "answer": "Paris"}]),
        "jsonl_numeric": ("numeric", [{"prompt": "3/4 of 24?", "answer": "3/4*24"}]),
        "jsonl_choice": ("choice", [{"prompt": "pick", "answer": 1, "choices": ["a", "b", "c", "d"]}]),
        "jsonl_choice_letter": ("choice", [{"prompt": "pick", "answer": "J"}]),
    }
    for name, (kind, rows) in specs.items():
        task = JsonlTask(name=name, jsonl=_write_jsonl(folder / f"{name}.jsonl", rows), reward_kind=kind)
        built[name] = (task, task.eval_examples()[0])
    return built


SCORERS = ("countdown", "gsm8k", "gsm8k_flexible", "proofwriter", "arc_challenge", "piqa", "mmlu_pro", "hellaswag",
           "add", "add_reversed", "reverse", "copy", "subtract", "jsonl_exact", "jsonl_numeric", "jsonl_choice",
           "jsonl_choice_letter")
AT_CAP = cap_completions()
HOSTILE = family_completions() + AT_CAP


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("eval()/exec() was called while scoring a completion")


@pytest.mark.parametrize("name", SCORERS)
def test_every_hostile_completion_is_scored_in_bounded_time(name: str, scorers: dict,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    task, example = scorers[name]
    monkeypatch.setattr(builtins, "eval", _forbidden)  # model output is parsed (ast), never executed
    monkeypatch.setattr(builtins, "exec", _forbidden)
    slow, slowest = [], 0.0
    for label, completion in HOSTILE:
        values: list[float] = []
        elapsed = _timed(lambda: values.extend((task.score(completion, example), task.reward(completion, example))))
        slowest = max(slowest, elapsed)
        if elapsed >= BOUND_S:
            slow.append(f"{label} ({len(completion)} chars): {elapsed:.2f}s")
            continue
        score, reward = values
        assert 0.0 <= score <= 1.0 and math.isfinite(reward), (label, score, reward)
    assert not slow, f"{name}: {len(slow)} of {len(HOSTILE)} completions over {BOUND_S}s: {slow[:5]}"
    assert slowest < BOUND_S


@pytest.mark.parametrize("name", SCORERS)
def test_trl_reward_functions_stay_bounded(name: str, scorers: dict) -> None:
    """The GRPO baseline scores through trl_rewards: the same bound per completion, in one batched call."""
    task, example = scorers[name]
    row = trl_rows(task, [example])[0]
    batch = AT_CAP
    completions = [[{"role": "assistant", "content": text}] for _, text in batch]
    kwargs = {"answer": [row["answer"]] * len(batch), "meta": [row["meta"]] * len(batch)}
    for metric in ("reward", "score"):
        function = trl_reward_fn(task, metric=metric)
        rewards: list[float] = []
        elapsed = _timed(lambda: rewards.extend(function([row["prompt"]] * len(batch), completions, **kwargs)))
        assert elapsed < BOUND_S * len(batch), f"{name} {metric}: {elapsed:.2f}s for {len(batch)} completions"
        assert len(rewards) == len(batch) and all(math.isfinite(r) for r in rewards)


@pytest.mark.parametrize("name", SCORERS)
def test_over_the_cap_scores_zero_unparsed(name: str, scorers: dict) -> None:
    task, example = scorers[name]
    for label, completion in OVER_CAP.items():
        values: list[float] = []
        elapsed = _timed(lambda: values.extend((task.score(completion, example), task.reward(completion, example))))
        assert values == [0.0, 0.0] and elapsed < BOUND_S, (label, values, elapsed)
    assert task.score(None, example) == 0.0  # type: ignore[arg-type]  # not a string: 0, not a crash


def test_the_cap_is_inclusive() -> None:
    """A correct answer padded to exactly the cap is still read; one more character and it scores 0."""
    task, example = build_task("gsm8k"), Example("p", "18", {})
    at_cap = " " * (MAX_COMPLETION_CHARS - len("#### 18")) + "#### 18"
    assert task.score(at_cap, example) == 1.0 and task.reward(at_cap, example) == pytest.approx(1.1)
    assert task.score(" " + at_cap, example) == 0.0 and task.reward(" " + at_cap, example) == 0.0


class _UserTask(Task):
    """A task written outside esft, without any length check of its own."""

    name = "user"
    calls = 0

    def train_examples(self) -> list[Example]:
        return []

    def eval_examples(self) -> list[Example]:
        return []

    def score(self, completion: str, example: Example) -> float:
        type(self).calls += 1
        return float(completion.endswith(example.answer))


class _UserTaskWithReward(_UserTask):
    def reward(self, completion: str, example: Example) -> float:
        type(self).calls += 1
        return 2 * self.score(completion, example)


def test_user_tasks_get_the_cap_from_the_base_class() -> None:
    """The cap lives in Task itself: a subclass's own score/reward never sees an over-cap completion."""
    example = Example("p", "7", {})
    for cls in (_UserTask, _UserTaskWithReward):
        task, cls.calls = cls(), 0
        assert task.score("x" * (MAX_COMPLETION_CHARS + 1), example) == 0.0
        assert task.reward("x" * (MAX_COMPLETION_CHARS + 1), example) == 0.0
        assert cls.calls == 0
        assert task.score("the answer is 7", example) == 1.0 and cls.calls == 1
    assert _UserTaskWithReward().reward("7", example) == 2.0
    assert _UserTask.score.__name__ == "score" and _UserTask.score.__doc__ is None  # functools.wraps


HOSTILE_EXPRESSIONS = {
    "power tower": "9**9**9**9",
    "floor division": "9//2",
    "huge literal": "9" * 999,
    "huge product": "*".join(["9" * 300] * 3),
    "overflowing product": "*".join(["9" * 30] * 33),
    "deep parentheses": "(" * 499 + "1" + ")" * 499,
    "deep unary minus": "-" * 999 + "1",
    "long sum": "1+" * 499 + "1",
    "division by zero": "1/(2-2)",
    "inf via float": "1e999",
    "unicode digits": "\u0663+\u0664",
    "nul bytes": "1+\x002",
    "blank": " " * 999,
    "over max chars": "1+" * 5_000 + "1",
    "names": "__import__('os').system('x')",
}


@pytest.mark.parametrize("label", sorted(HOSTILE_EXPRESSIONS))
def test_safe_math_refuses_hostile_expressions_quickly(label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtins, "eval", _forbidden)
    text = HOSTILE_EXPRESSIONS[label]
    values: list[float | None] = []
    elapsed = _timed(lambda: values.extend((safe_eval(text), parse_number(text))))
    assert elapsed < BOUND_S, f"{label}: {elapsed:.2f}s"
    assert values == [None, None], (label, values)  # each is malformed, disallowed, too big or undefined
