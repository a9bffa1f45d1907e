"""The paper's prior (evaluation-only) tasks: zero-shot multiple choice answered with a letter.

ARC-Challenge (allenai/ai2_arc, test), PIQA (ybisk/piqa, validation), MMLU-Pro (TIGER-Lab/MMLU-Pro, test) and
HellaSwag (Rowan/hellaswag, validation). The paper scores a seeded subset of 2,048 items of each (subset seed
2357; ARC's 1,172 and PIQA's 1,838 items are all used), greedy, up to 1,024 new tokens; accuracy is 1 when
the letter extracted from the completion is the gold one. The reward is the accuracy: these tasks are measured,
never trained (`train_examples()` is empty).

Prompts. ARC and MMLU-Pro use es-awd's user text ("The following are multiple choice ... questions ... finish
your answer with "The answer is (X)"", then Question / Options / "Answer:"). es-awd asks PIQA (1 / 2) and
HellaSwag (0-3) for option *numbers*; here all four use letters (A, B, ...) so that one extractor serves every
prior task, and the instruction that es-awd puts in the system message ends the user message instead. es-awd's
MMLU-Pro prompt carries 5 chain-of-thought examples per category from the validation split; the paper calls
its prompts zero-shot, so `few_shot` defaults to 0 (set 5 for es-awd's prompt).

Extraction: the last "answer is (X)" / "answer: X" / "option is X" (X a valid label, capital), else a
completion that starts with the letter ("B", "(B)", "B. ...", but not "A good idea"). es-awd's last resort --
the first stand-alone capital letter anywhere -- is dropped: it reads "I think" as option I.

Log-likelihood scoring (`scoring: loglik`, esft/evaluation/evaluator.py): `loglik_request` turns an item into
lm-evaluation-harness's request -- a short "Question: ...\nAnswer:" context (HellaSwag: "activity: context")
continued by each option's text, no option list and no letters -- so acc / acc_norm are the harness's numbers.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example
from esft.tasks.data import Rows, SplitTask, load_split, require_fields
from esft.tasks.registry import register

LETTERS = "ABCDEFGHIJ"
# `[ \t]*(?::[ \t]*)?` rather than `[ \t]*:?[ \t]*`: the same strings, but one way to split a run of blanks, so a
# phrase followed by n blanks and no letter fails in O(n) instead of O(n^2) ("answer is" + 20,000 spaces took
# seconds). Every attempt starts at a literal keyword and scans only the blanks right after it: linear overall.
_ANSWER_PHRASE = re.compile(
    r"(?i:answer[ \t]*(?:is|:)|option[ \t]+is|choice[ \t]+is)[ \t]*(?::[ \t]*)?\(?([A-J])\)?(?![A-Za-z])")
_LEADING_LETTER = re.compile(r"[*_ \t]*\(?([A-J])(?:[).:*]|[ \t]*$)")
_SCIENCE_HEADER = ("The following are multiple choice science questions. Think step by step and then finish your "
                   'answer with "The answer is (X)" where X is the correct letter choice.\n\n')
_MMLU_HEADER = ("The following are multiple choice questions (with answers) about {category}. Think step by step "
                'and then finish your answer with "The answer is (X)" where X is the correct letter choice.\n\n')


def extract_letter(completion: str, labels: Sequence[str]) -> str | None:
    """The option letter a completion commits to (see the module docstring), or None."""
    chosen = [m.group(1) for m in _ANSWER_PHRASE.finditer(completion) if m.group(1) in labels]
    if chosen:
        return chosen[-1]
    first_line = completion.strip().split("\n", 1)[0]
    match = _LEADING_LETTER.match(first_line)
    return match.group(1) if match and match.group(1) in labels else None


def options_block(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


@dataclass(frozen=True)
class Item:
    """A normalised multiple-choice row: the options in display order and the gold option's index."""

    question: str
    options: list[str]
    gold: int
    extra: dict[str, Any] = field(default_factory=dict)


class MultipleChoiceTask(SplitTask):
    """Shared letter-choice machinery; subclasses name their data and turn rows into Items and prompts."""

    hub_id: str = ""
    hub_config: str | None = None
    folder: str = ""
    default_split: str = "validation"
    fields: tuple[str, ...] = ()
    paper_eval_size = 2048

    def __init__(self, data_dir: Any = None, seed: int = 0, *, split: str | None = None,
                 scoring: str | None = None, **options: Any) -> None:
        super().__init__(data_dir, seed, **options)
        self.split = split or self.default_split
        if scoring not in (None, "generate", "loglik"):
            raise EsftError(f"task '{self.name}': scoring={scoring!r} must be generate or loglik")
        self.scoring = scoring  # None: eval.scoring decides (esft/evaluation/evaluator.py)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("eval_size", "subset_seed", "max_new_tokens", "stop", "split", "scoring")

    def train_examples(self) -> Sequence[Example]:
        return ()

    def _train_rows(self) -> Sequence[Mapping[str, Any]]:
        return ()

    def _eval_rows(self) -> Sequence[Mapping[str, Any]]:
        rows = load_split(self.hub_id, self.hub_config, self.split, self.folder, self.data_dir)
        require_fields(rows, self.fields, rows.source, f"{self.name} rows need {', '.join(self.fields)}")
        return rows

    @abstractmethod
    def _item(self, row: Mapping[str, Any]) -> Item:
        """One raw row (hub schema or the paper's local export) as an Item."""

    @abstractmethod
    def _render(self, item: Item) -> str:
        """The user message for an item."""

    def _example(self, row: Mapping[str, Any]) -> Example:
        item = self._item(row)
        if not 0 <= item.gold < len(item.options) <= len(LETTERS):
            raise EsftError(f"{self.name}: item {item.question[:60]!r} has gold option {item.gold} of "
                            f"{len(item.options)}; fix the data")
        meta = {"labels": list(LETTERS[: len(item.options)]), "options": item.options, "question": item.question,
                **item.extra}
        return Example(prompt=self._render(item), answer=LETTERS[item.gold], meta=meta)

    def loglik_request(self, example: Example) -> tuple[str, list[str], int]:
        """(context, option texts, gold index): the harness's log-likelihood request for one item."""
        options = [str(o) for o in example.meta["options"]]
        return self._loglik_context(example), options, LETTERS.index(example.answer)

    def _loglik_context(self, example: Example) -> str:
        """The context the options continue (lm-evaluation-harness's ARC and PIQA form)."""
        return f"Question: {example.meta['question']}\nAnswer:"

    def score(self, completion: str, example: Example) -> float:
        return float(extract_letter(completion, example.meta["labels"]) == example.answer)


def _label_index(label: Any, labels: Sequence[str]) -> int:
    """Index of a gold label among option labels; numeric ARC labels "1".."5" mean A..E."""
    text = str(label).strip().upper()
    text = LETTERS[int(text) - 1] if text.isdigit() and 1 <= int(text) <= len(LETTERS) else text
    normalised = [LETTERS[int(x) - 1] if str(x).isdigit() else str(x).strip().upper() for x in labels]
    if text not in normalised:
        raise EsftError(f"gold label {label!r} is not among the option labels {list(labels)}; fix the data")
    return normalised.index(text)


@register("arc_challenge")
class ArcChallenge(MultipleChoiceTask):
    """ARC-Challenge science questions (test split, 1,172 items; 3-5 options)."""

    name = "arc_challenge"
    hub_id, hub_config, folder, default_split = "allenai/ai2_arc", "ARC-Challenge", "arc_challenge", "test"
    fields = ("question",)

    def _item(self, row: Mapping[str, Any]) -> Item:
        if "choices" in row:  # hub schema: choices {text, label}, answerKey
            options, labels, gold = list(row["choices"]["text"]), list(row["choices"]["label"]), row["answerKey"]
        else:  # es-awd export: options, option_labels, answer
            options, labels, gold = list(row["options"]), list(row["option_labels"]), row["answer"]
        ident = row.get("id", row.get("question_id"))
        return Item(str(row["question"]), options, _label_index(gold, labels), {"id": ident})

    def _render(self, item: Item) -> str:
        return f"{_SCIENCE_HEADER}\nQuestion: {item.question}\nOptions:\n{options_block(item.options)}\nAnswer:"


@register("piqa")
class Piqa(MultipleChoiceTask):
    """PIQA physical commonsense (validation split, 1,838 items; two solutions)."""

    name = "piqa"
    hub_id, folder, default_split = "ybisk/piqa", "piqa", "validation"
    fields = ("goal", "sol1", "sol2", "label")

    def _item(self, row: Mapping[str, Any]) -> Item:
        # The hub stores 0/1 (int); es-awd's export stores "1"/"2" (str). The type tells them apart.
        label = row["label"]
        gold = int(label) - 1 if isinstance(label, str) else int(label)
        return Item(str(row["goal"]), [str(row["sol1"]), str(row["sol2"])], gold)

    def _render(self, item: Item) -> str:
        return (f"Goal: {item.question}\n\nPossible solutions:\n{options_block(item.options)}\n\n"
                "Which solution is more likely to work? Reply with only the option letter: A or B.")


@register("mmlu_pro")
class MmluPro(MultipleChoiceTask):
    """MMLU-Pro (test split, 12,032 items, a 2,048-item seeded subset; 3-10 options)."""

    name = "mmlu_pro"
    hub_id, folder, default_split = "TIGER-Lab/MMLU-Pro", "mmlu_pro", "test"
    fields = ("question", "options", "answer_index", "category")

    def __init__(self, data_dir: Any = None, seed: int = 0, *, few_shot: int = 0, **options: Any) -> None:
        super().__init__(data_dir, seed, **options)
        if not 0 <= int(few_shot) <= 5:
            raise EsftError(f"task 'mmlu_pro': few_shot={few_shot!r} must be between 0 and 5 (es-awd used 5)")
        self.few_shot = int(few_shot)
        self._shots: dict[str, list[Mapping[str, Any]]] | None = None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return (*super().option_names(), "few_shot")

    def _item(self, row: Mapping[str, Any]) -> Item:
        extra = {"id": row.get("question_id"), "category": row["category"]}
        return Item(str(row["question"]), [str(o) for o in row["options"]], int(row["answer_index"]), extra)

    def _render(self, item: Item) -> str:
        header = _MMLU_HEADER.format(category=item.extra["category"])
        shots = "\n".join(self._shot_block(row) for row in self._shots_for(item.extra["category"]))
        return f"{header}{shots}\nQuestion: {item.question}\nOptions:\n{options_block(item.options)}\nAnswer:"

    def _loglik_context(self, example: Example) -> str:
        """The harness has no log-likelihood MMLU-Pro; this follows its MMLU wording, with option texts as
        continuations (10 options make letters alone a weak signal for a small model)."""
        return (f"The following are multiple choice questions about {example.meta['category']}.\n\n"
                f"Question: {example.meta['question']}\nAnswer:")

    def _shot_block(self, row: Mapping[str, Any]) -> str:
        return f"Question: {row['question']}\nOptions:\n{options_block(row['options'])}\nAnswer: {row['cot_content']}\n"

    def _shots_for(self, category: str) -> list[Mapping[str, Any]]:
        """es-awd's few-shot examples: the first `few_shot` validation items of the same category."""
        if self.few_shot == 0:
            return []
        if self._shots is None:
            rows: Rows = load_split(self.hub_id, None, "validation", self.folder, self.data_dir)
            require_fields(rows, ("question", "options", "cot_content", "category"), rows.source)
            self._shots = defaultdict(list)
            for row in rows:
                self._shots[row["category"]].append(row)
        return self._shots[category][: self.few_shot]


@register("hellaswag")
class HellaSwag(MultipleChoiceTask):
    """HellaSwag sentence completion (validation split, 10,042 items, a 2,048-item seeded subset; 4 endings)."""

    name = "hellaswag"
    hub_id, folder, default_split = "Rowan/hellaswag", "hellaswag", "validation"
    fields = ("ctx", "endings", "label")

    def _item(self, row: Mapping[str, Any]) -> Item:
        extra = {"id": row.get("ind"), "activity": row.get("activity_label")}
        return Item(str(row["ctx"]), [str(e) for e in row["endings"]], int(row["label"]), extra)

    def _loglik_context(self, example: Example) -> str:
        """The harness's HellaSwag context, "activity: ctx", with its WikiHow markup cleaned the same way."""
        return _hellaswag_clean(f"{example.meta['activity']}: {example.meta['question']}")

    def loglik_request(self, example: Example) -> tuple[str, list[str], int]:
        context, options, gold = super().loglik_request(example)
        return context, [_hellaswag_clean(o) for o in options], gold

    def _render(self, item: Item) -> str:
        return (f"Activity: {item.extra['activity']}\nContext: {item.question}\n\nPossible endings:\n"
                f"{options_block(item.options)}\n\nWhich ending best completes the scenario? "
                f"Reply with only the option letter: {', '.join(LETTERS[:len(item.options) - 1])}, "
                f"or {LETTERS[len(item.options) - 1]}.")


def _hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocess: " [title]" becomes ". ", other [markup] goes, spaces merge."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[[^\]]*\]", "", text)
    return text.replace("  ", " ")
