"""The test-data fixture in tests/data: small, in the loaders' layout, and verbatim rows of the paper's splits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import FIXTURE_DATA, SHARED_DATA, needs_paper_data

from esft.tasks.registry import build_task

MAX_BYTES = 200_000
TRAINED = ("countdown", "gsm8k", "proofwriter")
EVAL_ONLY = ("arc_challenge", "piqa", "mmlu_pro")


def _builder():
    spec = importlib.util.spec_from_file_location("build_fixture", FIXTURE_DATA / "build_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet"))


def test_the_fixture_stays_small() -> None:
    size = sum(p.stat().st_size for p in _data_files(FIXTURE_DATA))
    assert 0 < size < MAX_BYTES, f"tests/data holds {size:,} bytes of data; keep it under {MAX_BYTES:,}"


@pytest.mark.parametrize("name", TRAINED + EVAL_ONLY)
def test_every_paper_task_loads_from_the_fixture(name: str) -> None:
    task = build_task(name, data_dir=str(FIXTURE_DATA))
    train, evaluation = task.train_examples(), task.eval_examples()
    assert len(evaluation) > 0 and (len(train) > 0) == (name in TRAINED)
    assert all(e.prompt and e.answer for e in (*train, *evaluation))


def test_mmlu_pro_few_shot_rows_cover_the_fixture_categories() -> None:
    categories = {r["category"] for r in pq.read_table(FIXTURE_DATA / "mmlu_pro" / "test-00000-of-00001.parquet")
                  .to_pylist()}
    shots = pq.read_table(FIXTURE_DATA / "mmlu_pro" / "validation-00000-of-00001.parquet").to_pylist()
    assert all(sum(r["category"] == c for r in shots) == 5 for c in categories)


@needs_paper_data
def test_the_build_script_reproduces_the_fixture_from_the_paper_splits(tmp_path: Path) -> None:
    """Every fixture row is a verbatim row of the paper's files, chosen by the documented rules."""
    builder = _builder()
    builder.build(SHARED_DATA, tmp_path)
    shipped = _data_files(FIXTURE_DATA)
    assert [p.relative_to(FIXTURE_DATA) for p in shipped] == [p.relative_to(tmp_path) for p in _data_files(tmp_path)]
    for path in shipped:
        relative = path.relative_to(FIXTURE_DATA)
        rows = pq.read_table(path)
        assert rows.to_pylist() == pq.read_table(tmp_path / relative).to_pylist(), relative
        assert rows.schema.equals(pq.read_schema(SHARED_DATA / relative)), relative
