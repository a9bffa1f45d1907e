"""Rebuild the test-data fixture in this folder from the paper's full splits (../shared/data by default).

Usage: python tests/data/build_fixture.py [SOURCE_DIR]

The fixture holds a few dozen verbatim rows per benchmark in the exact file layout the loaders read from
`data_dir` (esft/tasks/data.py: `<task>/<split>.parquet` or `<task>/<split>-*.parquet`), with the source files'
own schema, so the scoring and loading tests run on a bare clone. Which rows: fixed rules below (the first rows
of each split, plus, for Countdown, the items whose reference solution is missing or reuses a number, and for
MMLU-Pro three categories with their five validation rows each, for the few-shot prompt). Rows keep their
source order, so an evaluation subset larger than the file is the whole file in order, as with the full data.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1] / ".." / "shared" / "data"
FIRST_TRAIN, FIRST_TEST = 12, 30
MMLU_CATEGORIES = ("business", "law", "physics")
MMLU_PER_CATEGORY = 10


def first(count: int) -> Callable[[list[dict]], list[int]]:
    return lambda rows: list(range(min(count, len(rows))))


def countdown_test(rows: list[dict]) -> list[int]:
    """The first rows plus three items without a reference and three whose reference reuses a number."""
    def numbers_of(row: dict) -> list[int]:
        return sorted(int(n) for n in row["extra_info"]["numbers"])

    def reuses(row: dict) -> bool:
        solution = row["extra_info"].get("solution")
        return solution is not None and sorted(int(n) for n in re.findall(r"\d+", solution)) != numbers_of(row)

    missing = [i for i, r in enumerate(rows) if r["extra_info"].get("solution") is None][:3]
    broken = [i for i, r in enumerate(rows) if reuses(r)][:3]
    return sorted(set(range(FIRST_TEST - 6)) | set(missing) | set(broken))


def mmlu_test(rows: list[dict]) -> list[int]:
    picked: list[int] = []
    for category in MMLU_CATEGORIES:
        picked += [i for i, r in enumerate(rows) if r["category"] == category][:MMLU_PER_CATEGORY]
    return sorted(picked)


def mmlu_validation(rows: list[dict]) -> list[int]:
    return [i for i, r in enumerate(rows) if r["category"] in MMLU_CATEGORIES]


#: (folder, file name, which rows)
PLAN: Sequence[tuple[str, str, Callable[[list[dict]], list[int]]]] = (
    ("countdown", "train.parquet", first(FIRST_TRAIN)),
    ("countdown", "test.parquet", countdown_test),
    ("gsm8k", "train.parquet", first(FIRST_TRAIN)),
    ("gsm8k", "test.parquet", first(FIRST_TEST)),
    ("proofwriter", "train.parquet", first(FIRST_TRAIN)),
    ("proofwriter", "test.parquet", first(FIRST_TEST)),
    ("arc_challenge", "test-00000-of-00001.parquet", first(FIRST_TEST)),
    ("arc_challenge", "validation-00000-of-00001.parquet", first(10)),
    ("piqa", "validation-00000-of-00001.parquet", first(FIRST_TEST)),
    ("mmlu_pro", "test-00000-of-00001.parquet", mmlu_test),
    ("mmlu_pro", "validation-00000-of-00001.parquet", mmlu_validation),
)


def build(source: Path, target: Path = HERE) -> int:
    """Write every fixture file; returns the total size in bytes."""
    total = 0
    for folder, name, rule in PLAN:
        table = pq.read_table(source / folder / name)
        indices = rule(table.to_pylist())
        (target / folder).mkdir(parents=True, exist_ok=True)
        out = target / folder / name
        pq.write_table(table.take(pa.array(indices, type=pa.int64())), out, compression="zstd")
        total += out.stat().st_size
        print(f"{folder}/{name}: {len(indices)} of {table.num_rows} rows, {out.stat().st_size:,} bytes")
    return total


if __name__ == "__main__":
    size = build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
    print(f"total {size:,} bytes")
