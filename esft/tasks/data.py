"""Where task data comes from, and the lazy split machinery the paper's tasks share.

Two sources, one row format (a list of plain dicts):
- the Hugging Face hub through `datasets.load_dataset(hub_id, config, split=...)` (the default, the ids the
  paper used), or
- a local directory (`data_dir=`) holding one folder per task with the files the paper's code reads, e.g.
  `DATA/gsm8k/test.parquet`, `arc_challenge/test-00000-of-00001.parquet`, `countdown/countdown.json` (tests/data
  is a small example).

Every failure a user can fix (missing folder or file, unreadable file, unreachable hub, missing fields) is an
`EsftError` with one line naming the file or hub id and the fix.

`seeded_subset` is es-awd's evaluation subset verbatim (`random.Random(seed).sample(range(n), k)`, the whole
list in order when k >= n), so with `subset_seed=2357` the prior tasks are scored on the paper's very items.
`SplitTask` holds what the paper's tasks have in common: train/eval sizes, lazy cached example lists (building a
task reads nothing), the generation budget. (The length cap on completions is the base Task's, esft/tasks/base.py.)
"""

from __future__ import annotations

import json
import random
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example, Task

#: file names tried, in order, for split `{split}` inside `data_dir/<folder>/`
LOCAL_PATTERNS = ("{split}.parquet", "{split}-*.parquet", "{split}.jsonl", "{split}.json")
#: the es-awd evaluation-subset seed (evaluation/evaluate_forgetting.py)
PAPER_SUBSET_SEED = 2357


class Rows(list):
    """A list of row dicts that remembers where it came from (a file path or a hub id), for error messages."""

    def __init__(self, rows: Iterable[dict[str, Any]], source: str) -> None:
        super().__init__(rows)
        self.source = source


# -- loading -------------------------------------------------------------------------------------------------


def load_split(hub_id: str, config: str | None, split: str, data_dir_subfolder: str, data_dir: str | Path | None,
               *, limit: int | None = None, shuffle_seed: int | None = None) -> Rows:
    """Rows of one split: from `data_dir/<data_dir_subfolder>/` when `data_dir` is given, else from the hub.

    `shuffle_seed` (hub only) reproduces splits the paper cut from a shuffled hub split (`Dataset.shuffle`);
    local files already are the cut. `limit` keeps the first rows (after the shuffle).
    """
    if data_dir is not None:
        rows = read_local_split(Path(data_dir), data_dir_subfolder, split)
        return Rows(rows[:limit] if limit is not None else rows, rows.source)
    return _load_hub(hub_id, config, split, data_dir_subfolder, limit, shuffle_seed)


def has_local_split(data_dir: str | Path, folder: str, split: str) -> bool:
    """Whether `data_dir/folder` holds a file for `split` (lets a task fall back to another file layout)."""
    return any(_matches(Path(data_dir) / folder, split, pattern) for pattern in LOCAL_PATTERNS)


def read_local_split(data_dir: Path, folder: str, split: str) -> Rows:
    """Read `data_dir/folder/<split file>`; shards `split-*.parquet` are read in name order and concatenated."""
    directory = data_dir / folder
    if not directory.is_dir():
        raise EsftError(f"data_dir {data_dir} has no folder '{folder}'; point data_dir at a folder with "
                        f"{folder}/{split}.parquet (README: Getting the benchmark data) or set data_dir=null "
                        "for the hub")
    for pattern in LOCAL_PATTERNS:
        paths = _matches(directory, split, pattern)
        if paths:
            rows: list[dict[str, Any]] = []
            for path in paths:
                rows.extend(read_rows(path))
            return Rows(rows, str(paths[0]) if len(paths) == 1 else f"{directory}/{pattern.format(split=split)}")
    tried = ", ".join(p.format(split=split) for p in LOCAL_PATTERNS)
    raise EsftError(f"no '{split}' file in {directory} (looked for {tried}); "
                    "add it or set data_dir=null to use the hub")


def _matches(directory: Path, split: str, pattern: str) -> list[Path]:
    return sorted(p for p in directory.glob(pattern.format(split=split)) if p.is_file())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one parquet, jsonl or json file as plain Python objects (lists, not numpy arrays)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix == ".jsonl":
            return [_json_object(line, path, n) for n, line in enumerate(path.open(encoding="utf-8"), 1)
                    if line.strip()]
        data = json.loads(path.read_text(encoding="utf-8"))
    except EsftError:
        raise
    except Exception as exc:  # corrupt parquet, bad encoding, invalid JSON: all a problem with the file
        raise EsftError(f"cannot read {path} ({type(exc).__name__}: {exc}); replace the file") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise EsftError(f"{path} must hold a JSON list of objects (one per item); convert it or use .jsonl")
    return data


def _json_object(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EsftError(f"{path}:{number} is not valid JSON ({exc.msg}); fix that line") from None
    if not isinstance(row, dict):
        raise EsftError(f"{path}:{number} must be a JSON object with the task's fields; fix that line")
    return row


def _load_hub(hub_id: str, config: str | None, split: str, folder: str, limit: int | None,
              shuffle_seed: int | None) -> Rows:
    where = f"'{hub_id}'" + (f" (config {config})" if config else "") + f" split '{split}'"
    try:
        import datasets

        dataset = datasets.load_dataset(hub_id, config, split=split)
        if shuffle_seed is not None:
            dataset = dataset.shuffle(seed=shuffle_seed)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        rows = dataset.to_list()
    except Exception as exc:  # offline, unknown id, auth, script datasets: the fix is the same
        raise EsftError(f"cannot load {where} from the Hugging Face hub ({type(exc).__name__}); pass data_dir=DIR, "
                        f"a folder with {folder}/{split}.parquet (README: Getting the benchmark data), or check "
                        "network access") from None
    return Rows(rows, f"hub:{hub_id}")


def require_fields(rows: Sequence[Mapping[str, Any]], fields: Iterable[str], source: str, hint: str = "") -> None:
    """Refuse rows that lack a field the task needs, naming the source, the row and the field."""
    needed = tuple(fields)
    for index, row in enumerate(rows):
        missing = [f for f in needed if f not in row or row[f] is None]
        if missing:
            raise EsftError(f"{source}: row {index} lacks field(s) {', '.join(missing)}; "
                            f"{hint or 'use the hub schema or the paper parquet layout'}")


def seeded_subset(items: Sequence[Any], size: int | None, seed: int) -> list[Any]:
    """es-awd's fixed evaluation subset: `random.Random(seed).sample(range(n), size)`, all items if size >= n."""
    if size is None or size >= len(items):
        return list(items)
    if size <= 0:
        raise EsftError(f"eval_size must be positive, got {size}")
    return [items[i] for i in random.Random(seed).sample(range(len(items)), k=size)]


# -- the shared task machinery ---------------------------------------------------------------------------------


class SplitTask(Task):
    """Base of the data-backed tasks: options with the paper's defaults and lazily built, cached examples.

    Subclasses set `name`, `paper_eval_size` and implement `_train_rows`, `_eval_rows` (rows of the training
    pool and the evaluation pool, in the paper's order) and `_example(row)`. The first `train_size` training
    rows are used (es-awd trains on the first 200) and a `seeded_subset` of `eval_size` evaluation rows.
    `subset_seed=None` draws the subset from the run seed instead of the paper's fixed 2357.
    """

    paper_train_size: int = 200
    paper_eval_size: int | None = 2048
    max_new_tokens = 1024  # the paper: greedy, at most 1024 new tokens for every task

    def __init__(self, data_dir: str | Path | None = None, seed: int = 0, *, train_size: int | None = None,
                 eval_size: int | None = None, subset_seed: int | None = PAPER_SUBSET_SEED,
                 max_new_tokens: int = 1024, stop: Sequence[str] = (), **unknown: Any) -> None:
        if unknown:
            raise EsftError(f"task '{self.name}' got unknown option(s) {', '.join(sorted(unknown))}; "
                            f"it takes {', '.join(self.option_names())}")
        self.data_dir = data_dir
        size = self.paper_train_size if train_size is None else train_size
        self.train_size = _positive("train_size", size, self.name)
        wanted = self.paper_eval_size if eval_size is None else eval_size
        self.eval_size = None if wanted is None else _positive("eval_size", wanted, self.name)
        self.subset_seed = int(seed if subset_seed is None else subset_seed)
        self.max_new_tokens = _positive("max_new_tokens", max_new_tokens, self.name)
        self.stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
        self._train: tuple[Example, ...] | None = None
        self._eval: tuple[Example, ...] | None = None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("train_size", "eval_size", "subset_seed", "max_new_tokens", "stop")

    #: the data splits behind the training and evaluation pools (`_rows` reads them)
    train_split = "train"
    eval_split = "test"

    def _train_rows(self) -> Sequence[Mapping[str, Any]]:
        """The training pool in the paper's order (may be empty for evaluation-only tasks)."""
        return self._rows(self.train_split)

    def _eval_rows(self) -> Sequence[Mapping[str, Any]]:
        """The evaluation pool in the paper's order (the subset is drawn from it)."""
        return self._rows(self.eval_split)

    def _rows(self, split: str) -> Sequence[Mapping[str, Any]]:
        """The rows of one split (tasks whose two pools come from `train_split` / `eval_split`)."""
        raise NotImplementedError(f"{type(self).__name__} reads no splits; it overrides _train_rows/_eval_rows")

    @abstractmethod
    def _example(self, row: Mapping[str, Any]) -> Example:
        """One row as an Example (prompt = the user message; the paper's chat messages go in meta)."""

    def train_examples(self) -> Sequence[Example]:
        if self._train is None:
            self._train = tuple(self._example(row) for row in list(self._train_rows())[: self.train_size])
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        if self._eval is None:
            rows = seeded_subset(self._eval_rows(), self.eval_size, self.subset_seed)
            self._eval = tuple(self._example(row) for row in rows)
        return self._eval


def _positive(option: str, value: Any, task: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool):
        raise EsftError(f"task '{task}': {option}={value!r} must be a positive integer")
    return number


def verl_fields(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw dataset fields of a row: `extra_info` in the paper's verl parquet layout, the row itself otherwise."""
    extra = row.get("extra_info")
    return extra if isinstance(extra, Mapping) else row
