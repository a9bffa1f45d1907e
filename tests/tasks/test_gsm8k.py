"""GSM8K on the paper's data: every reference solution earns the full reward; strict and flexible both reported."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import DATA_DIRS, SHARED_DATA, is_paper_data, needs_paper_data

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.gsm8k import GSM8K, gold_answer
from esft.tasks.registry import build_task


@pytest.fixture(scope="module", params=DATA_DIRS)
def task(request: pytest.FixtureRequest) -> GSM8K:
    """gsm8k on the tests/data rows, and on the paper's full splits where they are present."""
    return build_task("gsm8k", data_dir=str(request.param))


def wrong(example: Example) -> str:
    """The reference solution with its final line changed to gold + 1."""
    body = example.meta["solution"].rsplit("####", 1)[0]
    return f"{body}#### {int(float(example.answer)) + 1}"


@needs_paper_data
def test_item_counts_follow_the_paper() -> None:
    task = build_task("gsm8k", data_dir=str(SHARED_DATA))
    assert len(task.train_examples()) == 200 and len(task.eval_examples()) == 500
    assert task.answer_mode == "strict" and task.max_new_tokens == 1024


def test_every_reference_solution_scores_full_reward(task: GSM8K) -> None:
    examples = [*task.train_examples(), *task.eval_examples()]
    passed = 0
    for e in examples:
        details = task.match_details(e.meta["solution"], e)
        passed += (task.reward(e.meta["solution"], e) == pytest.approx(1.1) and task.score(e.meta["solution"], e) == 1.0
                   and details["strict"] and details["flexible"] and details["format"] == 1.0)
    print(f"\ngsm8k: {passed}/{len(examples)} reference solutions score reward 1.1, strict and flexible accuracy 1")
    assert passed == len(examples) > 0
    if is_paper_data(task.data_dir):
        assert len(examples) == 700


def test_wrong_answers_score_zero(task: GSM8K) -> None:
    examples = [*task.train_examples(), *task.eval_examples()]
    passed = sum(task.score(wrong(e), e) == 0.0 and task.reward(wrong(e), e) == pytest.approx(0.1)
                 and not task.match_details(wrong(e), e)["flexible"] for e in examples)
    print(f"\ngsm8k: {passed}/{len(examples)} wrong final answers score 0 (reward 0.1 for the format)")
    assert passed == len(examples) > 0


def test_gold_matches_the_paper_ground_truth_and_prompt(task: GSM8K) -> None:
    rows = pq.read_table(Path(task.data_dir) / "gsm8k" / "test.parquet").to_pylist()
    examples = task.eval_examples()
    assert [e.answer for e in examples] == [r["reward_model"]["ground_truth"].replace(",", "") for r in rows]
    assert [e.meta["messages"] for e in examples] == [r["prompt"] for r in rows]


@pytest.mark.parametrize(
    ("completion", "strict", "flexible", "format_"),
    [
        ("9 + 9 = 18\n#### 18", True, True, 1.0),
        ("So she makes $18 a day.\nThe answer is 18.", True, True, 0.0),
        ("The answer is: $18", True, True, 0.0),
        ("Therefore the final answer is \\boxed{18}.", True, True, 0.0),
        ("She makes 18 dollars.", False, True, 0.0),
        ("#### 18\nWait, 9 * 2 = 19", True, False, 0.0),
        ("#### 17\nThe answer is 18", True, True, 0.0),  # the last marker wins
        ("The answer is 18\n#### 17", False, False, 1.0),
        ("<think>#### 18</think>\nThe answer is 17", False, False, 0.0),  # strict looks after </think>
        ("#### 18.00", True, True, 1.0),
        ("no number", False, False, 0.0),
    ],
)
def test_strict_and_flexible_extraction(completion: str, strict: bool, flexible: bool, format_: float) -> None:
    task, example = GSM8K(), Example("p", "18", {})
    details = task.match_details(completion, example)
    assert (details["strict"], details["flexible"], details["format"]) == (strict, flexible, format_)


def test_answer_mode_switch() -> None:
    example = Example("p", "18", {})
    assert GSM8K().score("She makes 18 dollars.", example) == 0.0
    assert GSM8K(answer_mode="flexible").score("She makes 18 dollars.", example) == 1.0
    assert GSM8K(answer_mode="flexible").reward("She makes 18 dollars.", example) == 1.0
    with pytest.raises(EsftError, match="answer_mode"):
        GSM8K(answer_mode="loose")


def test_commas_and_signs_in_gold_and_prediction() -> None:
    assert gold_answer("... #### 2,125") == "2125"
    assert gold_answer("... #### -10") == "-10"
    assert GSM8K().score("The total is\n#### 2,125", Example("p", "2125", {})) == 1.0
    with pytest.raises(EsftError, match="####"):
        gold_answer("no marker")
