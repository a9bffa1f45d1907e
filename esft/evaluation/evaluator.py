"""Scoring tasks with a policy: the one path shared by ES fitness, RL rewards and checkpoint evaluation.

`score_examples` picks the cheapest *exact* way to know what greedy decoding would score: for exact-answer
tasks one teacher-forced forward (see Policy.exact_match) where that provably equals greedy decoding
(`Policy.exact_match_is_greedy`), otherwise generation plus the task's reward and score functions.

Multiple-choice tasks may instead be scored by log-likelihood (`scoring="loglik"`), the way
lm-evaluation-harness measures small models, which answer letter prompts at chance when asked to generate:
each option's summed log-probability as the continuation of the prompt (Policy.option_logprobs), and

    acc      = [argmax_i  log p(option_i | prompt)                  == gold]
    acc_norm = [argmax_i  log p(option_i | prompt) / bytes(option_i) == gold]

(the harness's acc_norm divides by the option's length in characters; bytes and characters agree on ASCII).
Ties go to the first option, as numpy's argmax (and the harness) does. `Evaluator` scores every task of the
curriculum plus eval-only tasks at a checkpoint, each by its `scoring` (the task's own `scoring` option, else
`eval.scoring`), and records the scoring in every evals.jsonl row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from esft.core.prompts import Prompt
from esft.errors import EsftError
from esft.policy import Policy
from esft.tasks.base import Example, Task

SCORINGS = ("generate", "loglik")
LOGLIK_METRICS = ("acc", "acc_norm")


@dataclass
class Scored:
    """Per-example accuracy and reward of one policy on a batch of examples."""

    accuracy: np.ndarray
    reward: np.ndarray
    completions: list[str] | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # loglik: per-example acc and acc_norm


@dataclass(frozen=True)
class ChoiceRequest:
    """One multiple-choice item as a log-likelihood request: the prompt, the option texts, the gold index."""

    prompt: str | Prompt
    options: list[str]
    gold: int


def supports_loglik(task: Task) -> bool:
    """Multiple-choice tasks: the built-in ones (they build their own requests) and `choice` jsonl tasks."""
    return callable(getattr(task, "loglik_request", None)) or getattr(task, "reward_kind", None) == "choice"


def choice_request(task: Task, example: Example) -> ChoiceRequest:
    """The task's own request when it defines one (the option texts after an lm-evaluation-harness style
    prompt), else the example's option letters as continuations of its rollout prompt -- how the harness
    scores MMLU, and all a jsonl `choice` task without option texts offers."""
    builder = getattr(task, "loglik_request", None)
    if callable(builder):
        prompt, options, gold = builder(example)
        return ChoiceRequest(prompt, list(options), int(gold))
    labels = list((example.meta or {}).get("labels") or [])
    if example.answer not in labels:
        raise EsftError(f"task '{task.name}' has no options to score by log-likelihood; use scoring=generate")
    return ChoiceRequest(task.rollout_prompt(example), labels, labels.index(example.answer))


def loglik_metrics(policy: Policy, task: Task, examples: Sequence[Example], batch_size: int = 64
                   ) -> dict[str, np.ndarray]:
    """Per-example acc and acc_norm (see the module docstring) from one pass of option log-probabilities."""
    requests = [choice_request(task, e) for e in examples]
    logprobs = policy.option_logprobs([r.prompt for r in requests], [r.options for r in requests], batch_size)
    acc, acc_norm = [], []
    for request, scores in zip(requests, logprobs):
        values = np.asarray(scores, dtype=np.float64)
        lengths = np.array([max(1, len(o.encode("utf-8"))) for o in request.options], dtype=np.float64)
        acc.append(float(int(np.argmax(values)) == request.gold))
        acc_norm.append(float(int(np.argmax(values / lengths)) == request.gold))
    return {"acc": np.array(acc, dtype=np.float64), "acc_norm": np.array(acc_norm, dtype=np.float64)}


def score_examples(policy: Policy, task: Task, examples: Sequence[Example], batch_size: int = 256,
                   generation_batch_size: int = 64, scoring: str = "generate",
                   loglik_metric: str = "acc_norm") -> Scored:
    """Score `examples`: greedy completions (exact-answer tasks take the teacher-forced shortcut where it is
    exact), or by log-likelihood with `scoring="loglik"` (accuracy and reward = `loglik_metric`)."""
    if scoring == "loglik":
        metrics = loglik_metrics(policy, task, examples, generation_batch_size)
        return Scored(metrics[loglik_metric], metrics[loglik_metric].copy(), None, metrics)
    prompts = [task.rollout_prompt(e) for e in examples]
    if task.exact_answer and policy.exact_match_is_greedy:
        matches = policy.exact_match(prompts, [e.answer for e in examples], task.max_new_tokens, batch_size)
        values = matches.numpy().astype(np.float64)
        return Scored(values, values.copy())
    completions = policy.generate(prompts, task.max_new_tokens, task.stop, generation_batch_size)
    accuracy = np.array([task.score(c, e) for c, e in zip(completions, examples)], dtype=np.float64)
    reward = np.array([task.reward(c, e) for c, e in zip(completions, examples)], dtype=np.float64)
    return Scored(accuracy, reward, completions)


def correct_bits(values: np.ndarray) -> str | None:
    """Per-item outcomes as a '0'/'1' string in eval order, or None when an item scored in between.

    Why: the eval subset is fixed for the whole run, so two evals of a task score the same items, and a drop
    between them can be tested *paired* (per-item differences) instead of as two independent proportions;
    with a few hundred items the paired margin is several times tighter (drift-report's "paired 95%")."""
    if not values.size or not np.all((values == 0.0) | (values == 1.0)):
        return None
    return "".join("1" if v else "0" for v in values.tolist())


def resolve_scoring(task: Task, default: str) -> str:
    """A task's scoring: its own `scoring` option, else `default` (eval.scoring) where the task supports it.

    A global `eval.scoring=loglik` leaves tasks without options (countdown, gsm8k, ...) generative; a task
    that asks for loglik itself but has no options is a configuration error."""
    own = getattr(task, "scoring", None)
    for value, what in ((own, f"task '{task.name}' scoring"), (default, "eval.scoring")):
        if value is not None and value not in SCORINGS:
            raise EsftError(f"{what}={value!r}; use {' or '.join(SCORINGS)}")
    if own == "loglik" and not supports_loglik(task):
        raise EsftError(f"task '{task.name}' sets scoring=loglik but is not multiple choice; use scoring=generate")
    if own is not None:
        return str(own)
    return default if default == "generate" or supports_loglik(task) else "generate"


class Evaluator:
    """Scores every task at a checkpoint; rows follow the evals.jsonl contract (esft/storage/rundir.py)."""

    def __init__(self, policy: Policy, tasks: Mapping[str, Task], roles: Mapping[str, str],
                 batch_size: int = 256, size: int | None = None, scoring: str = "generate",
                 loglik_metric: str = "acc_norm", loglik_batch_size: int = 64) -> None:
        if loglik_metric not in LOGLIK_METRICS:
            raise EsftError(f"eval.loglik_metric={loglik_metric!r}; use {' or '.join(LOGLIK_METRICS)}")
        self.policy = policy
        self.tasks = dict(tasks)
        self.roles = dict(roles)
        self.batch_size = batch_size
        self.size = size
        self.loglik_metric = loglik_metric
        self.loglik_batch_size = loglik_batch_size
        self.scoring = {name: resolve_scoring(task, scoring) for name, task in self.tasks.items()}

    def _examples(self, task: Task) -> Sequence[Example]:
        examples = task.eval_examples()
        return examples[: self.size] if self.size else examples

    def evaluate(self) -> list[dict]:
        rows = []
        for name, task in self.tasks.items():
            started = time.perf_counter()
            scoring = self.scoring[name]
            scored = score_examples(self.policy, task, self._examples(task), self.batch_size,
                                    generation_batch_size=self.loglik_batch_size if scoring == "loglik" else 64,
                                    scoring=scoring, loglik_metric=self.loglik_metric)
            row = {
                "task": name,
                "accuracy": float(scored.accuracy.mean()) if scored.accuracy.size else float("nan"),
                "reward": float(scored.reward.mean()) if scored.reward.size else float("nan"),
                "n": int(scored.accuracy.size),
                "role": self.roles.get(name, "curriculum"),
                "seconds": round(time.perf_counter() - started, 4),
                "scoring": scoring if scoring == "generate" else f"loglik_{self.loglik_metric}",
            }
            for metric, values in scored.metrics.items():  # loglik: both of the harness's metrics
                row[metric] = float(values.mean()) if values.size else float("nan")
            bits = correct_bits(scored.accuracy)
            if bits is not None:
                row["correct"] = bits
            rows.append(row)
        return rows
