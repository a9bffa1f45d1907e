"""ProofWriter on the paper's data: the gold label earns the full reward, the other labels earn none."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import DATA_DIRS, SHARED_DATA, is_paper_data, needs_paper_data

from esft.tasks.base import Example
from esft.tasks.proofwriter import ProofWriter, canonical_label, format_reward, predicted_label
from esft.tasks.registry import build_task

LABELS = ("True", "False", "Unknown")


@pytest.fixture(scope="module", params=DATA_DIRS)
def task(request: pytest.FixtureRequest) -> ProofWriter:
    """proofwriter on the tests/data rows, and on the paper's full splits where they are present."""
    return build_task("proofwriter", data_dir=str(request.param))


def answered(label: str) -> str:
    """A completion after the paper's prefill "Reasoning:": a line of reasoning, then the label line."""
    return f" The theory states the facts needed; applying the rules settles the question.\nAnswer: {label}"


@needs_paper_data
def test_item_counts_and_labels() -> None:
    task = build_task("proofwriter", data_dir=str(SHARED_DATA))
    assert len(task.train_examples()) == 200 and len(task.eval_examples()) == 1000
    counts = Counter(e.answer for e in task.eval_examples())
    assert set(counts) == set(LABELS) and counts == {"Unknown": 442, "True": 284, "False": 274}


def test_every_gold_label_scores_full_reward(task: ProofWriter) -> None:
    examples = [*task.train_examples(), *task.eval_examples()]
    passed = sum(task.reward(answered(e.answer), e) == pytest.approx(1.1) and task.score(answered(e.answer), e) == 1.0
                 for e in examples)
    print(f"\nproofwriter: {passed}/{len(examples)} gold answers score reward 1.1 and accuracy 1")
    assert passed == len(examples) > 0
    if is_paper_data(task.data_dir):
        assert len(examples) == 1200


def test_every_wrong_label_scores_zero(task: ProofWriter) -> None:
    examples = [*task.train_examples(), *task.eval_examples()]
    trials = [(e, label) for e in examples for label in LABELS if label != e.answer]
    passed = sum(task.score(answered(label), e) == 0.0 and task.reward(answered(label), e) == pytest.approx(0.1)
                 for e, label in trials)
    print(f"\nproofwriter: {passed}/{len(trials)} wrong labels score 0 (reward 0.1 for the format)")
    assert passed == len(trials) == 2 * len(examples) > 0


def test_prompts_reproduce_the_paper_parquet(task: ProofWriter) -> None:
    rows = pq.read_table(Path(task.data_dir) / "proofwriter" / "test.parquet").to_pylist()
    examples = task.eval_examples()
    assert [e.meta["messages"] for e in examples] == [r["prompt"] for r in rows]
    assert [e.answer for e in examples] == [r["reward_model"]["ground_truth"] for r in rows]


@pytest.mark.parametrize(
    ("completion", "label", "format_"),
    [
        ("reasoning\nAnswer: True", "True", 1.0),
        ("reasoning\nanswer:false", "False", 1.0),
        ("Answer: Unknown\nmore text", "Unknown", 0.0),  # the answer line need not be last for the label
        ("reasoning\nFinal answer is False.", "False", 0.0),
        ("It is true that Anne is nice, so the claim is false", "False", 0.0),  # last label word
        ("Answer: True\nAnswer: False", "False", 1.0),  # the last answer line wins
        ("reasoning\nAnswer: Maybe", None, 0.0),
        ("no label at all", None, 0.0),
    ],
)
def test_label_extraction_and_format(completion: str, label: str | None, format_: float) -> None:
    assert predicted_label(completion) == label
    assert format_reward(completion) == format_


def test_canonical_labels() -> None:
    assert [canonical_label(x) for x in ("true", " False. ", "UNKNOWN", "yes", True)] == ["True", "False", "Unknown",
                                                                                       None, "True"]
    task, example = ProofWriter(), Example("p", "Unknown", {})
    assert task.score("Answer: unknown", example) == 1.0
    assert task.reward("Answer: unknown", example) == pytest.approx(1.1)
