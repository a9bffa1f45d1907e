"""The paper's tasks through the seams: conf/task/*.yaml, the registry, loaders' errors, TRL rewards, hostile input."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from support import TASK_DATA, needs_paper_data

from esft.errors import EsftError
from esft.tasks.base import Task
from esft.tasks.data import load_split, seeded_subset
from esft.tasks.registry import available, build_task
from esft.tasks.trl_rewards import completion_text, trl_reward_fn, trl_rows

REPO = Path(__file__).resolve().parents[2]
DATA = TASK_DATA  # the paper's full splits beside the repository, else the rows in tests/data
PAPER_TASKS = ("countdown", "gsm8k", "proofwriter", "arc_challenge", "piqa", "mmlu_pro", "hellaswag")
LOCAL_TASKS = PAPER_TASKS[:-1]  # hellaswag is neither in ../shared/data nor in tests/data


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: build_task(OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml"), data_dir=str(DATA))
            for name in LOCAL_TASKS}


def test_every_paper_task_is_registered_and_configured() -> None:
    assert set(PAPER_TASKS) <= set(available())
    for name in PAPER_TASKS:
        cfg = OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")
        task = build_task(cfg, data_dir="/nonexistent")  # lazy: building reads nothing
        assert cfg.name == name and task.name == name and task.max_new_tokens == 1024 and task.stop == ()


def test_unknown_options_and_bad_values_are_user_errors() -> None:
    with pytest.raises(EsftError, match="unknown option.*colour.*takes train_size"):
        build_task({"name": "gsm8k", "colour": "red"})
    with pytest.raises(EsftError, match="eval_size=0 must be a positive integer"):
        build_task({"name": "countdown", "eval_size": 0})
    with pytest.raises(EsftError, match="unknown task 'gsm9k'"):
        build_task("gsm8k".replace("8", "9"))


@needs_paper_data
def test_configured_tasks_load_the_paper_item_counts(tasks: dict[str, Task]) -> None:
    counts = {name: (len(task.train_examples()), len(task.eval_examples())) for name, task in tasks.items()}
    print(f"\nitem counts (train, eval): {counts}")
    assert counts == {"countdown": (200, 2000), "gsm8k": (200, 500), "proofwriter": (200, 1000),
                      "arc_challenge": (0, 1172), "piqa": (0, 1838), "mmlu_pro": (0, 2048)}


def test_sizes_and_subset_seed_are_configurable() -> None:
    small = build_task({"name": "gsm8k", "train_size": 10, "eval_size": 20}, data_dir=str(DATA))
    assert len(small.train_examples()) == 10 and len(small.eval_examples()) == 20
    full = build_task("gsm8k", data_dir=str(DATA)).eval_examples()
    assert list(small.eval_examples()) == seeded_subset(full, 20, 2357)
    by_run_seed = build_task({"name": "gsm8k", "eval_size": 20, "subset_seed": None}, data_dir=str(DATA), seed=5)
    assert list(by_run_seed.eval_examples()) == seeded_subset(full, 20, 5)


def test_unreachable_hub_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(EsftError) as error:
        build_task("gsm8k").train_examples()
    message = str(error.value)
    assert "openai/gsm8k" in message and "data_dir=DIR" in message and "network" in message
    assert "\n" not in message


def test_missing_local_file_and_fields_are_named(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(EsftError, match=r"no 'train' file in .*gsm8k .*train.parquet"):
        load_split("openai/gsm8k", "main", "train", "gsm8k", tmp_path)
    pq.write_table(pa.Table.from_pylist([{"question": "q?"}]), tmp_path / "gsm8k" / "train.parquet")
    with pytest.raises(EsftError, match=r"train.parquet: row 0 lacks field\(s\) answer") as error:
        build_task("gsm8k", data_dir=str(tmp_path)).train_examples()
    assert "\n" not in str(error.value)
    (tmp_path / "gsm8k" / "test.parquet").write_text("not parquet")
    with pytest.raises(EsftError, match=r"cannot read .*test.parquet"):
        build_task("gsm8k", data_dir=str(tmp_path)).eval_examples()


def test_trl_reward_fn_matches_the_task_reward(tasks: dict[str, Task]) -> None:
    for name in ("countdown", "gsm8k", "proofwriter", "arc_challenge"):
        task = tasks[name]
        examples = list(task.eval_examples()[:4])
        rows = trl_rows(task, examples)
        completions = [[{"role": "assistant", "content": _good(name, e)}] for e in examples]
        kwargs = {"answer": [r["answer"] for r in rows], "meta": [r["meta"] for r in rows]}
        fn = trl_reward_fn(task)
        rewards = fn([r["prompt"] for r in rows], completions, completion_ids=None, **kwargs)
        assert rewards == [task.reward(_good(name, e), e) for e in examples] and min(rewards) >= 1.0
        assert fn.__name__ == f"{name}_reward"
        plain = trl_reward_fn(task, metric="score")([r["prompt"] for r in rows], ["nonsense"] * 4, **kwargs)
        assert plain == [0.0] * 4
        assert json.loads(rows[0]["meta"]) == json.loads(json.dumps(dict(examples[0].meta)))
    with pytest.raises(EsftError, match="answer"):
        trl_reward_fn(tasks["gsm8k"])(["p"], ["c"])
    assert completion_text("x") == "x" and completion_text([{"role": "assistant", "content": "y"}]) == "y"


def _good(name: str, example) -> str:
    if name == "countdown":
        return f"ok</think>\n<answer>{example.meta['solution']}</answer>"
    return {"gsm8k": f"#### {example.answer}", "proofwriter": f"Answer: {example.answer}"}.get(
        name, f"The answer is ({example.answer}).")


def _forbidden(builtin: str):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{builtin}() was called while scoring a completion")

    return refuse


HOSTILE = {
    "import": "__import__('os').system('touch pwned')",
    "import_in_tags": "<think>x</think>\n<answer>__import__('os').system('touch pwned')</answer>",
    "exec_in_marker": "#### exec(\"open('pwned','w')\")\nAnswer: eval('1')\nThe answer is (open('pwned'))",
    "power_tower": "<think>x</think>\n<answer>7**7**7**7</answer>\n#### 7**7**7**7",
    "huge_product": "<answer>" + "*".join(["9" * 300] * 3) + "</answer>",
    "deep_parens_in_bounds": "<answer>" + "(" * 30_000 + "1" + ")" * 30_000 + "</answer>",
    "deep_parens_10mb": "<answer>" + "(" * 5_000_000 + "1" + ")" * 5_000_000 + "</answer>",
    "many_open_tags": "<answer>" * 12_000,
    "many_think_answer_joints": "</think>\n<answer>" * 5_000,
    "newlines_then_answer": "\n" * 99_000 + "answer: maybe",
    "long_numbers": "The answer is " + "9" * 50_000 + "\n#### " + "7" * 40_000,
    "repeated_phrases": "The answer is (" * 6_000 + "Answer: " * 1_000,
    "digits_10mb": "9" * 10_000_000,
    "tags_10mb": "<answer>" * 1_250_000,
    "newlines_10mb": "\n" * 10_000_000,
}


@pytest.mark.parametrize("name", LOCAL_TASKS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_completions_score_zero_quickly(name: str, case: str, tasks: dict[str, Task], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    task, completion = tasks[name], HOSTILE[case]
    example = task.eval_examples()[0]
    monkeypatch.chdir(tmp_path)
    for builtin in ("eval", "exec"):  # scoring must never hand text to the interpreter (ast.parse only parses)
        monkeypatch.setattr(builtins, builtin, _forbidden(builtin))
    start = time.perf_counter()
    score, reward = task.score(completion, example), task.reward(completion, example)
    elapsed = time.perf_counter() - start
    monkeypatch.undo()
    assert score == 0.0 and reward <= 0.1 + 1e-12, (score, reward)  # at most the format bonus, never the answer
    assert elapsed < 1.0, f"{name}/{case} took {elapsed:.2f}s"
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()
