"""The procedurally generated arithmetic tasks: answers, the fixed operand split, registry wiring."""

from __future__ import annotations

import pytest

from esft.errors import EsftError
from esft.tasks.arithmetic import N_HELD_OUT, operand_split
from esft.tasks.base import Task
from esft.tasks.registry import available, build_task

TASKS = ("add", "add_reversed", "reverse", "copy", "subtract")


@pytest.mark.parametrize(
    ("task", "a", "b", "prompt", "answer"),
    [
        ("add", 12, 34, "12+34=", "046"),
        ("add", 99, 99, "99+99=", "198"),
        ("add", 0, 0, "00+00=", "000"),
        ("add_reversed", 12, 34, "12+34=", "640"),
        ("reverse", 12, 34, "1234|>", "432"),
        ("copy", 12, 34, "1234|>", "123"),
        ("reverse", 5, 7, "0507|>", "705"),
        ("subtract", 12, 34, "12-34=", "-22"),
        ("subtract", 34, 12, "34-12=", "+22"),
        ("subtract", 7, 7, "07-07=", "+00"),
        ("subtract", 0, 99, "00-99=", "-99"),
    ],
)
def test_hand_picked_answers(task: str, a: int, b: int, prompt: str, answer: str) -> None:
    example = build_task(task).example(a, b)
    assert (example.prompt, example.answer) == (prompt, answer)
    assert example.meta == {"a": a, "b": b}


def test_registry_builds_every_task() -> None:
    assert set(TASKS) <= set(available())
    for name in TASKS:
        task = build_task(name, data_dir="/nonexistent", seed=3)
        assert isinstance(task, Task) and task.name == name
        assert task.exact_answer and task.max_new_tokens == 3 and task.stop == ()
        assert task.describe()["train"] == 9000 and task.describe()["eval"] == N_HELD_OUT


def test_shapes_are_six_plus_three_characters() -> None:
    for name in TASKS:
        task = build_task(name)
        for example in (*task.train_examples()[:50], *task.eval_examples()[:50]):
            assert len(example.prompt) == 6 and len(example.answer) == 3, (name, example)


def test_split_is_disjoint_complete_and_shared() -> None:
    train, held_out = operand_split()
    assert len(train) == 9000 and len(held_out) == 1000
    assert not set(train) & set(held_out)
    assert len(set(train) | set(held_out)) == 100 * 100
    for name in TASKS:
        task = build_task(name)
        assert [tuple(e.meta.values()) for e in task.eval_examples()] == list(held_out)
        assert [tuple(e.meta.values()) for e in task.train_examples()] == list(train)


def test_eval_subset_is_fixed_across_seeds_and_prefix_by_size() -> None:
    full = build_task("add", seed=0).eval_examples()
    assert build_task("add", seed=123).eval_examples() == full
    assert build_task("add", seed=7).train_examples() == build_task("add", seed=0).train_examples()
    small = build_task({"name": "add", "eval_size": 10}, seed=5).eval_examples()
    assert list(small) == list(full[:10])


def test_score_is_exact_match() -> None:
    task = build_task("subtract")
    example = task.example(12, 34)
    assert task.score("-22", example) == 1.0
    assert task.score(" -22\n", example) == 1.0
    assert task.score("+22", example) == 0.0
    assert task.score("-2", example) == 0.0
    assert task.reward("-22", example) == 1.0


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(EsftError, match="unknown option"):
        build_task({"name": "add", "n_digits": 3})
    with pytest.raises(EsftError, match="eval_size"):
        build_task({"name": "add", "eval_size": 0})
    with pytest.raises(EsftError, match="eval_size"):
        build_task({"name": "reverse", "eval_size": N_HELD_OUT + 1})
