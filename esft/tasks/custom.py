"""User tasks without Python: a local JSONL file plus a built-in reward kind.

A task spec with a `jsonl` key builds a `JsonlTask` (see the README section "Adding a task without editing
esft" and conf/task/example_jsonl.yaml):

    name: my_qa
    jsonl: data/my_qa.jsonl            # or {train: data/train.jsonl, eval: data/eval.jsonl}
    reward_kind: exact                 # exact | numeric | choice

Each line is a JSON object with a prompt and an answer field (names configurable). One file serves as both the
training and the evaluation pool; give {train:, eval:} to hold items out (a mapping without `train` makes an
evaluation-only task). Relative paths are looked up in the working directory, then under `data_dir`; a path
`esft://NAME` names a file esft ships in esft/tasks/bundled/ (the presets' own data), so a preset works from
any working directory and from an installed wheel, not only from a clone.

Reward kinds (reward = score, in [0, 1]; there is no format bonus):
- exact: the completion, its last non-empty line, or the text after a final "Answer:" equals the answer,
  ignoring case, surrounding space and a trailing period;
- numeric: the answer is a number or a +-*/ expression ("3/4", evaluated by safe_math); the completion's
  explicit final answer ("#### N", "The answer is N", \\boxed{N}) or else its last number must equal it
  within `tolerance` (relative to max(1, |answer|));
- choice: the answer is a letter (or a 0-based index into the item's `choices` list, which is then appended
  to the prompt as lettered options); the letter is extracted as for the paper's prior tasks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.data import Rows, SplitTask, read_rows
from esft.tasks.gsm8k import flexible_answer, strict_answer
from esft.tasks.multiple_choice import LETTERS, extract_letter, options_block
from esft.tasks.safe_math import parse_number, safe_eval

REWARD_KINDS = ("exact", "numeric", "choice")
BUNDLED_PREFIX = "esft://"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class JsonlTask(SplitTask):
    """A task read from local JSONL file(s), scored by one of the built-in reward kinds."""

    eval_split = "eval"  # the `jsonl` mapping's keys: train, eval

    def __init__(self, data_dir: Any = None, seed: int = 0, *, name: str, jsonl: str | Mapping[str, str],
                 reward_kind: str = "exact", prompt_field: str = "prompt", answer_field: str = "answer",
                 choices_field: str = "choices", tolerance: float = 1e-6, scoring: str | None = None,
                 **options: Any) -> None:
        self.name = str(name)
        super().__init__(data_dir, seed, **options)
        if reward_kind not in REWARD_KINDS:
            raise EsftError(f"task '{name}': reward_kind={reward_kind!r} must be one of {', '.join(REWARD_KINDS)}")
        self.reward_kind, self.tolerance = reward_kind, float(tolerance)
        if scoring not in (None, "generate", "loglik") or (scoring == "loglik" and reward_kind != "choice"):
            raise EsftError(f"task '{name}': scoring={scoring!r} must be generate, or loglik for reward_kind=choice")
        self.scoring = scoring  # None: eval.scoring decides (esft/evaluation/evaluator.py)
        self.prompt_field, self.answer_field, self.choices_field = prompt_field, answer_field, choices_field
        if not _valid_jsonl_option(jsonl):
            raise EsftError(f"task '{name}': jsonl must be a path or a mapping with train and/or eval paths, "
                            f"got {jsonl!r}")
        self.jsonl = jsonl  # resolved on first use, so building the task reads nothing

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("jsonl", "reward_kind", "prompt_field", "answer_field", "choices_field", "tolerance", "scoring",
                *super().option_names())

    def _files(self) -> dict[str, str]:
        if isinstance(self.jsonl, str):
            return {"train": self.jsonl, "eval": self.jsonl}
        return {split: str(path) for split, path in self.jsonl.items()}

    def _resolve(self, path: str) -> Path:
        """A path as given, relative to the working directory, or relative to data_dir; `esft://NAME` is a file
        of esft's bundled data."""
        if path.startswith(BUNDLED_PREFIX):
            bundled = BUNDLED_DIR / path[len(BUNDLED_PREFIX):]
            if bundled.is_file() and bundled.resolve().parent == BUNDLED_DIR:
                return bundled
            shipped = ", ".join(BUNDLED_PREFIX + p.name for p in sorted(BUNDLED_DIR.glob("*.jsonl")))
            raise EsftError(f"task '{self.name}': {path} is not a file esft ships; bundled files: {shipped}")
        candidates = [Path(path)]
        if self.data_dir and not Path(path).is_absolute():
            candidates.append(Path(self.data_dir) / path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        where = " or ".join(str(c) for c in candidates)
        raise EsftError(f"task '{self.name}': jsonl file not found at {where}; fix the path (relative paths "
                        "are tried in the working directory, then under data_dir)")

    def _rows(self, split: str) -> Rows:
        """The split's rows with their source line attached, validated against the reward kind."""
        files = self._files()
        if split not in files:
            return Rows([], "")
        path = self._resolve(files[split])
        rows = Rows([{**row, "_line": number} for number, row in enumerate(read_rows(path), 1)], str(path))
        if not rows:  # an empty pool would fail at the first sampled step or score 0/0
            raise EsftError(f"task '{self.name}': {path} holds no items; add one JSON object per line")
        for row in rows:
            self._check(row, path)
        return rows

    def _check(self, row: Mapping[str, Any], path: Path) -> None:
        where = f"{path}:{row['_line']}"
        for key in (self.prompt_field, self.answer_field):
            if row.get(key) is None:
                raise EsftError(f"{where} has no '{key}' field; add it or set prompt_field/answer_field")
        if self.reward_kind == "numeric" and safe_eval(str(row[self.answer_field])) is None:
            raise EsftError(f"{where}: answer {row[self.answer_field]!r} is not a number or +-*/ expression")
        if self.reward_kind == "choice":
            self._choice_answer(row, where)

    def _choice_answer(self, row: Mapping[str, Any], where: str) -> str:
        """The gold letter: a letter among the options, or a 0-based index into `choices`."""
        answer, choices = row[self.answer_field], row.get(self.choices_field)
        if isinstance(choices, list) and not 2 <= len(choices) <= len(LETTERS):
            raise EsftError(f"{where}: '{self.choices_field}' must list 2 to {len(LETTERS)} options")
        count = len(choices) if isinstance(choices, list) else len(LETTERS)
        if isinstance(answer, int) and not isinstance(answer, bool) and isinstance(choices, list):
            letter = LETTERS[answer] if 0 <= answer < count else ""
        else:
            letter = str(answer).strip().strip("()").upper()
        if len(letter) != 1 or letter not in LETTERS[:count]:
            raise EsftError(f"{where}: choice answer {answer!r} must be a letter A-{LETTERS[count - 1]} "
                            "or a 0-based index into choices")
        return letter

    def _example(self, row: Mapping[str, Any]) -> Example:
        prompt, meta = str(row[self.prompt_field]), {"line": row["_line"]}
        if self.reward_kind != "choice":
            return Example(prompt=prompt, answer=str(row[self.answer_field]).strip(), meta=meta)
        choices = row.get(self.choices_field)
        if isinstance(choices, list):
            options = options_block([str(c) for c in choices])
            prompt = f"{prompt}\n{options}\nAnswer with the letter of the correct option."
        meta["labels"] = list(LETTERS[: len(choices) if isinstance(choices, list) else len(LETTERS)])
        return Example(prompt=prompt, answer=self._choice_answer(row, f"line {row['_line']}"), meta=meta)

    def score(self, completion: str, example: Example) -> float:
        text = completion  # within the base Task's length cap (esft/tasks/base.py)
        if self.reward_kind == "exact":
            return float(_exact(text, example.answer))
        if self.reward_kind == "numeric":
            return float(self._numeric(text, example.answer))
        return float(extract_letter(text, example.meta["labels"]) == example.answer)

    def _numeric(self, completion: str, answer: str) -> bool:
        gold, said = safe_eval(answer), strict_answer(completion) or flexible_answer(completion)
        value = parse_number(said) if said else None
        return gold is not None and value is not None and abs(value - gold) <= self.tolerance * max(1.0, abs(gold))


def _valid_jsonl_option(jsonl: Any) -> bool:
    if isinstance(jsonl, str):
        return bool(jsonl)
    return isinstance(jsonl, Mapping) and bool(jsonl) and set(jsonl) <= {"train", "eval"}


_ANSWER_MARKER = re.compile("answer:", re.IGNORECASE)


def _normal(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().casefold()


def _exact(completion: str, answer: str) -> bool:
    """The whole completion, its last non-empty line, or what follows its last "Answer:" equals the answer."""
    lines = [line for line in completion.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    # the last "answer:" in any case; not completion.lower().rfind(), whose index drifts on text such as "İ"
    # that lower() lengthens
    markers = [m.end() for m in _ANSWER_MARKER.finditer(completion)]
    after = completion[markers[-1]:] if markers else None
    gold = _normal(answer)
    return any(_normal(c) == gold for c in (completion, last, after) if c is not None)
