"""User tasks without editing esft: a `_target_` Task class, or a JSONL file with a built-in reward kind."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from esft.errors import EsftError
from esft.tasks.base import Example, Task
from esft.tasks.custom import JsonlTask
from esft.tasks.registry import build_task, task_name

REPO = Path(__file__).resolve().parents[2]


class EchoTask(Task):
    """A user task defined outside esft: the answer is the prompt reversed."""

    name = "echo"

    def __init__(self, data_dir: str | None = None, seed: int = 0, size: int = 3) -> None:
        self.data_dir, self.seed = data_dir, seed
        self.items = [Example(prompt=f"w{i}", answer=f"{i}w") for i in range(size)]

    def train_examples(self) -> Sequence[Example]:
        return self.items

    def eval_examples(self) -> Sequence[Example]:
        return self.items

    def score(self, completion: str, example: Example) -> float:
        return float(completion.strip() == example.answer)


class NoSeedTask(EchoTask):
    """A constructor that takes neither data_dir nor seed: they are simply not passed."""

    def __init__(self, size: int = 2) -> None:
        super().__init__(size=size)


class NotATask:
    """A class that is not a Task: refused."""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# -- _target_ ---------------------------------------------------------------------------------------------------


def test_target_builds_a_user_task_class() -> None:
    task = build_task({"_target_": f"{__name__}.EchoTask", "name": "my_echo", "size": 5}, data_dir="/d", seed=7)
    assert isinstance(task, EchoTask) and task.name == "my_echo"
    assert (task.data_dir, task.seed, len(task.eval_examples())) == ("/d", 7, 5)
    assert task.score("1w", task.eval_examples()[1]) == 1.0
    assert task_name({"_target_": f"{__name__}.EchoTask"}) == "echo"
    assert len(build_task({"_target_": f"{__name__}.NoSeedTask"}, data_dir="/d").eval_examples()) == 2


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("os.system", "not a subclass of esft.tasks.base.Task"),
        ("builtins.eval", "not a subclass of esft.tasks.base.Task"),
        ("subprocess.Popen", "not a subclass of esft.tasks.base.Task"),
        (f"{__name__}.NotATask", "not a subclass of esft.tasks.base.Task"),
        ("esft.tasks.base.Task", "abstract"),
        ("esft.tasks.data.SplitTask", "abstract"),
        ("no_such_module_xyz.Task", "cannot import"),
        ("Task", "dotted path"),
    ],
)
def test_target_refuses_anything_but_a_concrete_task(target: str, message: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EsftError, match=message) as error:
        build_task({"_target_": target, "name": "x", "args": "touch pwned"})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_target_with_unknown_options_is_a_user_error() -> None:
    with pytest.raises(EsftError, match="does not accept"):
        build_task({"_target_": f"{__name__}.EchoTask", "name": "e", "colour": "red"})


# -- jsonl ------------------------------------------------------------------------------------------------------


def test_exact_jsonl_task(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "capitals.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"},
                                                     {"prompt": "Capital of Italy?", "answer": "Rome"}])
    task = build_task({"name": "capitals", "jsonl": str(path)})
    assert isinstance(task, JsonlTask) and task.name == "capitals"
    assert len(task.train_examples()) == len(task.eval_examples()) == 2
    example = task.eval_examples()[0]
    for completion in ("Paris", " paris. ", "Let me think.\nParis", "The capital is well known. Answer: Paris"):
        assert task.score(completion, example) == 1.0 and task.reward(completion, example) == 1.0
    for completion in ("Rome", "Paris or Rome", ""):
        assert task.score(completion, example) == 0.0


def test_numeric_jsonl_task(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sums.jsonl", [{"question": "1/4 + 1/2?", "solution": "3/4"},
                                                 {"question": "How many?", "solution": 1200}])
    task = build_task({"name": "sums", "jsonl": str(path), "reward_kind": "numeric", "prompt_field": "question",
                       "answer_field": "solution"})
    quarter, many = task.eval_examples()
    assert task.score("It is 0.75", quarter) == 1.0 and task.score("#### 0.75\nI also saw 3", quarter) == 1.0
    assert task.score("It is 0.7", quarter) == 0.0
    assert task.score("There are 1,200 of them.", many) == 1.0 and task.score("1201", many) == 0.0


def test_choice_jsonl_task_with_choices_and_held_out_eval(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "2+2?", "choices": ["3", "4"], "answer": 1}])
    held = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "Sky colour?", "answer": "C"}])
    task = build_task({"name": "quiz", "jsonl": {"train": str(train), "eval": str(held)}, "reward_kind": "choice"})
    first = task.train_examples()[0]
    assert first.answer == "B" and "A. 3\nB. 4" in first.prompt
    assert task.score("The answer is (B).", first) == 1.0 and task.score("A", first) == 0.0
    assert task.score("C", task.eval_examples()[0]) == 1.0
    eval_only = build_task({"name": "q", "jsonl": {"eval": str(held)}, "reward_kind": "choice"})
    assert eval_only.train_examples() == () and len(eval_only.eval_examples()) == 1


def test_relative_paths_are_found_under_data_dir(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl", [{"prompt": "p", "answer": "a"}])
    task = build_task({"name": "t", "jsonl": "items.jsonl"}, data_dir=str(tmp_path))
    assert len(task.eval_examples()) == 1
    assert task_name({"jsonl": "items.jsonl"}) == "items"


@pytest.mark.parametrize(
    ("rows", "spec", "message"),
    [
        ([{"prompt": "p"}], {}, "has no 'answer' field"),
        ([{"prompt": "p", "answer": "x"}], {"reward_kind": "numeric"}, "not a number"),
        ([{"prompt": "p", "answer": "__import__('os')"}], {"reward_kind": "numeric"}, "not a number"),
        ([{"prompt": "p", "answer": "Z"}], {"reward_kind": "choice"}, "must be a letter"),
        ([{"prompt": "p", "answer": 5, "choices": ["a", "b"]}], {"reward_kind": "choice"}, "must be a letter"),
    ],
)
def test_bad_items_are_reported_with_file_and_line(rows: list[dict], spec: dict, message: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    task = build_task({"name": "bad", "jsonl": str(path), **spec})
    with pytest.raises(EsftError, match=message) as error:
        task.eval_examples()
    assert f"{path}:1" in str(error.value) and "\n" not in str(error.value)


def test_bad_options_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "answer": "a"}\nnot json\n')
    with pytest.raises(EsftError, match=r"broken.jsonl:2 is not valid JSON"):
        build_task({"name": "b", "jsonl": str(tmp_path / "broken.jsonl")}).eval_examples()
    with pytest.raises(EsftError, match="jsonl file not found"):
        build_task({"name": "m", "jsonl": "missing.jsonl"}, data_dir=str(tmp_path)).eval_examples()
    with pytest.raises(EsftError, match="reward_kind"):
        build_task({"name": "k", "jsonl": "x.jsonl", "reward_kind": "fuzzy"})
    with pytest.raises(EsftError, match="jsonl must be"):
        build_task({"name": "k", "jsonl": {"test": "x.jsonl"}})


def test_example_config_builds_once_pointed_at_a_file(tmp_path: Path) -> None:
    """conf/task/example_jsonl.yaml is a working spec: only its path needs to exist."""
    cfg = OmegaConf.load(REPO / "conf" / "task" / "example_jsonl.yaml")
    task = build_task(cfg, data_dir=str(tmp_path))  # building reads nothing
    assert task.name == "example_jsonl" and task.max_new_tokens == 256
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "example.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"}])
    assert task.score("Paris", task.eval_examples()[0]) == 1.0


def test_bundled_preset_data_loads_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    """experiment=smollm2_cpu names its sums task as esft://...: it must load outside a clone's root too."""
    monkeypatch.chdir(tmp_path)
    preset = OmegaConf.load(REPO / "conf" / "experiment" / "smollm2_cpu.yaml")
    task = build_task(preset.task, data_dir=str(tmp_path))
    train, held_out = task.train_examples(), task.eval_examples()
    assert len(train) == 200 and len(held_out) == 300
    assert not {e.prompt for e in train} & {e.prompt for e in held_out}
    example = train[0]
    assert task.score(f"The answer is {example.answer}.", example) == 1.0
    with pytest.raises(EsftError, match=r"not a file esft ships; bundled files: esft://smollm2_sums_eval.jsonl"):
        build_task({"name": "x", "jsonl": "esft://../custom.py"}).eval_examples()
