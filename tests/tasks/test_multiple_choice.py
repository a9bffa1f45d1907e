"""Prior tasks on the paper's data: item counts, the gold letter scores 1, every other letter 0."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import DATA_DIRS, TASK_DATA, is_paper_data

from esft.errors import EsftError
from esft.tasks.multiple_choice import MultipleChoiceTask, extract_letter
from esft.tasks.registry import build_task

# name -> eval items the paper scores (a 2,048 subset where the split is larger)
EXPECTED = {"arc_challenge": 1172, "piqa": 1838, "mmlu_pro": 2048}


def check_letters(task: MultipleChoiceTask) -> tuple[int, int, int, int]:
    """(items, items whose gold letter scores 1 in three answer styles, other letters scoring 0, other letters)."""
    examples = task.eval_examples()
    gold_ok = other_ok = others = 0
    for e in examples:
        gold_ok += all(task.score(c, e) == 1.0 and task.reward(c, e) == 1.0
                       for c in (f"Thinking it through.\nThe answer is ({e.answer}).", e.answer, f"{e.answer}. text"))
        for letter in e.meta["labels"]:
            if letter != e.answer:
                others += 1
                other_ok += task.score(f"The answer is ({letter}).", e) == 0.0 and task.score(letter, e) == 0.0
    return len(examples), gold_ok, other_ok, others


@pytest.mark.parametrize("data_dir", DATA_DIRS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prior_task_counts_and_letters(name: str, data_dir: Path) -> None:
    task = build_task(name, data_dir=str(data_dir))
    items, gold_ok, other_ok, others = check_letters(task)
    print(f"\n{name}: {items} items; gold letter scores 1 on {gold_ok}/{items}; "
          f"{other_ok}/{others} other letters score 0")
    assert gold_ok == items > 0 and other_ok == others > 0
    assert items == EXPECTED[name] or not is_paper_data(data_dir)
    assert task.train_examples() == () and task.max_new_tokens == 1024


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_mmlu_pro_subset_is_es_awds(data_dir: Path) -> None:
    size = 2048 if is_paper_data(data_dir) else 10  # the paper's size; a subset of the fixture's rows
    task = build_task({"name": "mmlu_pro", "eval_size": size}, data_dir=str(data_dir))
    rows = pq.read_table(data_dir / "mmlu_pro" / "test-00000-of-00001.parquet").to_pylist()
    picked = random.Random(2357).sample(range(len(rows)), k=size)
    assert [e.meta["id"] for e in task.eval_examples()] == [rows[i]["question_id"] for i in picked]
    assert [e.answer for e in task.eval_examples()] == [rows[i]["answer"] for i in picked]
    other = build_task({"name": "mmlu_pro", "subset_seed": 1, "eval_size": 10}, data_dir=str(data_dir))
    assert len(other.eval_examples()) == 10 and other.eval_examples() != build_task(
        {"name": "mmlu_pro", "eval_size": 10}, data_dir=str(data_dir)).eval_examples()


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_options_and_gold_follow_the_local_export(data_dir: Path) -> None:
    task = build_task("arc_challenge", data_dir=str(data_dir))
    first = task.eval_examples()[0]
    assert first.answer == "C" and "C. Planetary days will become shorter." in first.prompt
    assert first.prompt.endswith("\nAnswer:") and '"The answer is (X)"' in first.prompt
    piqa = build_task("piqa", data_dir=str(data_dir))
    rows = pq.read_table(data_dir / "piqa" / "validation-00000-of-00001.parquet").to_pylist()
    assert [e.answer for e in piqa.eval_examples()] == ["AB"[int(r["label"]) - 1] for r in rows]
    validation = pq.read_metadata(data_dir / "arc_challenge" / "validation-00000-of-00001.parquet").num_rows
    assert validation == 299 or not is_paper_data(data_dir)
    assert build_task({"name": "arc_challenge", "split": "validation"}, data_dir=str(data_dir)).describe()["eval"] \
        == validation


@pytest.mark.parametrize("data_dir", DATA_DIRS)
def test_mmlu_pro_few_shot_prompt(data_dir: Path) -> None:
    task = build_task({"name": "mmlu_pro", "few_shot": 5, "eval_size": 3}, data_dir=str(data_dir))
    prompt = task.eval_examples()[0].prompt
    assert prompt.count("Question:") == 6 and prompt.count("Let's think step by step") == 5
    with pytest.raises(EsftError, match="few_shot"):
        build_task({"name": "mmlu_pro", "few_shot": 9})


def test_hellaswag_reads_a_local_hub_export(tmp_path: Path) -> None:
    """HellaSwag is not in ../shared/data; a parquet in the hub's schema under data_dir/hellaswag/ is read."""
    rows = [{"ind": i, "activity_label": "Cooking", "ctx": f"A man cracks egg {i} and", "label": str(i % 4),
             "endings": ["whisks it.", "sings.", "leaves.", "sleeps."]} for i in range(5)]
    (tmp_path / "hellaswag").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hellaswag" / "validation-00000-of-00001.parquet")
    task = build_task("hellaswag", data_dir=str(tmp_path))
    items, gold_ok, other_ok, others = check_letters(task)
    print(f"\nhellaswag (synthetic, hub schema): {items} items; gold scores 1 on {gold_ok}/{items}")
    assert items == 5 and gold_ok == 5 and other_ok == others == 15
    assert "D. sleeps." in task.eval_examples()[0].prompt and "A, B, C, or D" in task.eval_examples()[0].prompt


def test_hellaswag_without_local_data_names_the_folder() -> None:
    task = build_task("hellaswag", data_dir=str(TASK_DATA))
    with pytest.raises(EsftError, match="no folder 'hellaswag'.*data_dir=null") as error:
        task.eval_examples()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("completion", "letter"),
    [
        ("The answer is (B).", "B"),
        ("Let me think. The answer is (A). Wait, no: the answer is (C).", "C"),
        ("Answer: D", "D"),
        ("the correct option is B because", "B"),
        ("B", "B"),
        ("(C)", "C"),
        ("**A**", "A"),
        ("D. Planetary gravity", "D"),
        ("A good idea would be to measure.", None),
        ("I think so.", None),
        ("The answer is (K).", None),  # not a label of a four-option item
        ("The answer is Because of gravity", None),
        ("", None),
    ],
)
def test_letter_extraction(completion: str, letter: str | None) -> None:
    assert extract_letter(completion, ["A", "B", "C", "D"]) == letter
