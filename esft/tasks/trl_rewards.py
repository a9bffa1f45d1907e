"""Task rewards in TRL's reward-function shape, so the GRPO baseline trains on exactly what ES is scored on.

TRL (`GRPOTrainer(reward_funcs=...)`) calls `fn(prompts, completions, completion_ids=..., **columns)` where
`columns` are the other dataset columns, one list entry per completion, and expects a list of floats. The
dataset built by `trl_rows` carries `answer` (the Example's answer) and `meta` (its meta as a JSON string,
because Arrow tables want one type per column); `trl_reward_fn` rebuilds each Example from those columns and
calls the task's own `reward` (or `score`). Completions arrive as text or, for conversational datasets, as a
list of chat messages whose last assistant message is the completion.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Example, Task

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the content of the last message in a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    return ""


def _meta(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    try:
        meta = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        raise EsftError("the TRL dataset's 'meta' column must hold JSON objects; "
                        "build the dataset with trl_rows") from None
    return meta if isinstance(meta, Mapping) else {}


def trl_reward_fn(task: Task, *, metric: str = "reward") -> RewardFn:
    """A TRL reward function computing `task.reward` (or `task.score` with metric="score") per completion."""
    if metric not in ("reward", "score"):
        raise EsftError(f"trl_reward_fn metric={metric!r} must be reward or score")
    function = task.reward if metric == "reward" else task.score

    def reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        answers, metas = kwargs.get("answer"), kwargs.get("meta")
        if answers is None:
            raise EsftError("the TRL dataset has no 'answer' column; build it with esft.tasks.trl_rewards.trl_rows")
        metas = metas if metas is not None else [None] * len(completions)
        prompt_texts = [completion_text(p) for p in prompts] if prompts else [""] * len(completions)
        return [float(function(completion_text(c), Example(prompt=p, answer=str(a), meta=_meta(m))))
                for c, p, a, m in zip(completions, prompt_texts, answers, metas, strict=True)]

    reward_fn.__name__ = f"{task.name}_{metric}"  # TRL logs each reward function under its name
    return reward_fn


def trl_rows(task: Task, examples: Sequence[Example], *, conversational: bool = True) -> list[dict[str, Any]]:
    """Dataset rows for TRL: `prompt` (a user message list, or the plain text), `answer` and `meta` (JSON)."""
    rows = []
    for example in examples:
        text = task.prompt(example)
        prompt: Any = [{"role": "user", "content": text}] if conversational else text
        rows.append({"prompt": prompt, "answer": example.answer, "meta": json.dumps(dict(example.meta))})
    return rows
