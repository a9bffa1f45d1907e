"""Countdown on the paper's data: every reference solution earns the full reward, wrong answers earn none."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import DATA_DIRS, SHARED_DATA, is_paper_data, needs_paper_data

from esft.tasks.base import Example
from esft.tasks.countdown import Countdown, format_reward, last_answer
from esft.tasks.registry import build_task
from esft.tasks.safe_math import safe_eval


@pytest.fixture(scope="module", params=DATA_DIRS)
def task(request: pytest.FixtureRequest) -> Countdown:
    """countdown on the tests/data rows, and on the paper's full splits where they are present."""
    return build_task("countdown", data_dir=str(request.param))


@pytest.fixture(scope="module")
def paper_task() -> Countdown:
    return build_task("countdown", data_dir=str(SHARED_DATA))


def solved(solution: str) -> str:
    """A completion after the paper's prefill "...\\n<think>": reasoning, close think, answer."""
    return f" I combine the numbers step by step.</think>\n<answer>{solution}</answer>"


def all_examples(task: Countdown) -> list[Example]:
    return [*task.train_examples(), *task.eval_examples()]


@needs_paper_data
def test_item_counts_follow_the_paper(paper_task: Countdown) -> None:
    task = paper_task
    assert len(task.train_examples()) == 200 and len(task.eval_examples()) == 2000
    assert task.max_new_tokens == 1024 and task.stop == ()


def reuses_no_number(solution: str | None, numbers: list[int]) -> bool:
    return solution is not None and sorted(map(int, re.findall(r"\d+", solution))) == sorted(numbers)


def solve(numbers: list[int], target: float) -> str | None:
    """Exhaustive search over + - * / (and unary minus) using every number once: an answer, or None."""
    seen: set[tuple[float, ...]] = set()

    def search(items: list[tuple[float, str]]) -> str | None:
        key = tuple(sorted(round(v, 9) for v, _ in items))
        if key in seen:
            return None
        seen.add(key)
        if len(items) == 1:
            value, text = items[0]
            return text if abs(value - target) < 1e-5 else (f"-{text}" if abs(value + target) < 1e-5 else None)
        for i, j in itertools.permutations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            (b, tb) = items[j]
            for a, ta in (items[i], (-items[i][0], f"(-{items[i][1]})")):
                options = [(a + b, f"({ta} + {tb})"), (a - b, f"({ta} - {tb})"), (a * b, f"({ta} * {tb})")]
                options += [(a / b, f"({ta} / {tb})")] if b else []
                for option in options:
                    if (found := search([*rest, option])) is not None:
                        return found
        return None

    return search([(float(n), str(n)) for n in numbers])


def test_every_valid_reference_solution_scores_full_reward(task: Countdown) -> None:
    examples = all_examples(task)
    valid = [e for e in examples if reuses_no_number(e.meta["solution"], e.meta["numbers"])]
    passed = sum(task.reward(solved(e.meta["solution"]), e) == pytest.approx(1.1)
                 and task.score(solved(e.meta["solution"]), e) == 1.0 for e in valid)
    broken = [e for e in examples
              if e.meta["solution"] is not None and not reuses_no_number(e.meta["solution"], e.meta["numbers"])]
    refused = sum(task.score(solved(e.meta["solution"]), e) == 0.0 for e in broken)
    print(f"\ncountdown: {passed}/{len(valid)} valid reference solutions score reward 1.1 and accuracy 1; "
          f"{refused}/{len(broken)} references that reuse a number score 0; "
          f"{sum(e.meta['solution'] is None for e in examples)} items have no reference")
    assert passed == len(valid) > 0 and refused == len(broken) > 0
    if is_paper_data(task.data_dir):
        assert (len(valid), len(broken)) == (2166, 15)


def test_every_solvable_item_has_a_full_reward_answer(task: Countdown) -> None:
    """Items without a usable reference get one by exhaustive search; the 14 with none are data defects."""
    examples = all_examples(task)
    unsolvable, passed = [], 0
    for e in examples:
        answer = e.meta["solution"] if reuses_no_number(e.meta["solution"], e.meta["numbers"]) else None
        answer = answer or solve(e.meta["numbers"], float(e.answer))
        if answer is None:
            unsolvable.append(e)
            continue
        passed += task.reward(solved(answer), e) == pytest.approx(1.1) and task.score(solved(answer), e) == 1.0
    solvable = len(examples) - len(unsolvable)
    print(f"\ncountdown: {passed}/{solvable} solvable items score reward 1.1 and accuracy 1 "
          f"({len(unsolvable)} test items have no valid answer: "
          f"{[(e.meta['numbers'], e.answer) for e in unsolvable][:3]} ...)")
    assert passed == solvable > 0
    test_items = {id(e) for e in task.eval_examples()}
    assert all(id(e) in test_items for e in unsolvable)
    if is_paper_data(task.data_dir):
        assert (solvable, len(unsolvable)) == (2186, 14)


def test_wrong_answers_score_zero(task: Countdown) -> None:
    examples = all_examples(task)
    wrong_value = checked = 0
    for e in examples:
        expression = " + ".join(str(n) for n in e.meta["numbers"])
        if abs(safe_eval(expression) - float(e.answer)) < 1e-5:
            continue  # the plain sum happens to be right for this item
        checked += 1
        completion = solved(expression)
        wrong_value += task.score(completion, e) == 0.0 and task.reward(completion, e) == pytest.approx(0.1)
    extra = [e for e in examples if e.meta["solution"]]
    extra_number = sum(task.score(solved(e.meta["solution"] + " + 1"), e) == 0.0 for e in extra)
    print(f"\ncountdown: {wrong_value}/{checked} wrong-valued answers and {extra_number}/{len(extra)} answers "
          "with an extra number score 0")
    assert wrong_value == checked > 0.9 * len(examples) and extra_number == len(extra) > 0


def test_prompts_reproduce_the_paper_parquet(task: Countdown) -> None:
    rows = pq.read_table(Path(task.data_dir) / "countdown" / "test.parquet").to_pylist()
    examples = task.eval_examples()
    assert [e.meta["messages"] for e in examples] == [r["prompt"] for r in rows]
    assert all(e.prompt == r["prompt"][1]["content"] for e, r in zip(examples, rows))
    assert all(e.answer == r["extra_info"]["target"] for e, r in zip(examples, rows))


@needs_paper_data
def test_countdown_json_fallback_gives_the_same_items(paper_task: Countdown, tmp_path: Path) -> None:
    """countdown.json, sliced 200 / 2,000, holds the parquet splits' items (the whole file: no fixture copy)."""
    task = paper_task
    (tmp_path / "countdown").mkdir()
    shutil.copy(SHARED_DATA / "countdown" / "countdown.json", tmp_path / "countdown" / "countdown.json")
    from_json = build_task("countdown", data_dir=str(tmp_path))
    assert from_json.train_examples() == task.train_examples()
    assert from_json.eval_examples() == task.eval_examples()


@needs_paper_data
def test_hub_rows_are_sliced_like_the_paper(paper_task: Countdown, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without data_dir the hub's first 2,200 rows are used, 200 / 2,000 (a fake hub serves the json rows)."""
    import datasets

    task = paper_task
    items = json.loads((SHARED_DATA / "countdown" / "countdown.json").read_text())
    hub_rows = [{"target": i["target"], "nums": i["numbers"]} for i in items] + [{"target": "1", "nums": [1]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(hub_rows))
    hub = build_task("countdown")
    assert [(e.prompt, e.answer) for e in hub.eval_examples()] == [(e.prompt, e.answer) for e in task.eval_examples()]
    assert len(hub.train_examples()) == 200


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("x</think>\n<answer>1</answer>", 1.0),
        ("<think>x</think>\n<answer>1</answer>", 1.0),  # no prefill: the model opened the tag itself
        ("x</think>\n<answer>1</answer>\n", 1.0),
        ("x</think> <answer>1</answer>", 0.6),  # both pairs, but not the exact layout
        ("no tags at all", 0.0),
        ("<answer>1</answer>", 0.5),  # "<think>" + this has no </think>
        ("x</think>", 0.1),
        ("x</think>\n<answer>1</answer> trailing", 0.6),
    ],
)
def test_format_reward_matches_the_reference(completion: str, expected: float) -> None:
    assert format_reward(completion) == pytest.approx(expected)


def test_answer_rules() -> None:
    task = Countdown()
    example = Example("p", "98", {"numbers": [44, 19, 35]})
    assert task.score(solved("44 + 19 + 35"), example) == 1.0
    assert task.score("<answer>1</answer> then <answer>44+19+35</answer>", example) == 1.0  # the last answer counts
    assert task.score("<answer>44+19+35</answer> then <answer>1</answer>", example) == 0.0
    assert task.score(solved("44 + 19 + 35 + 35 - 35"), example) == 0.0  # 35 used twice
    assert task.score(solved("44 + 54"), example) == 0.0  # numbers not the given ones
    assert task.score(solved("44 + 19 + 35 = 98"), example) == 0.0  # "=" is not an admitted character
    assert task.score(solved("(44 * 19 + 35)"), example) == 0.0  # wrong value
    assert last_answer("<answer>x <answer>y</answer>") == "x <answer>y"  # same pairing as re.findall


def test_building_is_lazy() -> None:
    task = build_task("countdown", data_dir="/nonexistent/data")
    assert task.name == "countdown"  # nothing read yet; the first use reports the missing folder
