"""eval.*, typed and checked once: what every checkpoint scores, and the off-task KL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.core.config import choice, flag, integer, need, optional_integer, section
from esft.errors import EsftError


@dataclass(frozen=True)
class KLSection:
    """eval.kl.*: off-task KL(p_theta || p_theta0) on base-model continuations (the AWD paper's diagnostic)."""

    enabled: bool
    tasks: list[Any] | None
    samples: int
    max_new_tokens: int
    batch_size: int

    @classmethod
    def from_config(cls, kl: Mapping[str, Any]) -> "KLSection":
        tasks = kl.get("tasks")
        if tasks is not None and not isinstance(tasks, (list, tuple, str)):
            raise EsftError(f"eval.kl.tasks must be a list of task names or null (got {tasks!r})")
        return cls(flag(need(kl, "enabled", "eval.kl"), "eval.kl.enabled"),
                   None if tasks is None else list(tasks) if not isinstance(tasks, str) else [tasks],
                   integer(need(kl, "samples", "eval.kl"), "eval.kl.samples", low=1),
                   integer(need(kl, "max_new_tokens", "eval.kl"), "eval.kl.max_new_tokens", low=1),
                   integer(need(kl, "batch_size", "eval.kl"), "eval.kl.batch_size", low=1))


@dataclass(frozen=True)
class EvalSection:
    """eval.*: what every checkpoint scores. every=0 means no periodic evaluations (stage start/end only)."""

    every: int
    tasks: list[Any]
    size: int | None
    batch_size: int
    layer_distances: bool
    kl: KLSection
    scoring: str  # generate | loglik (multiple-choice tasks; a task's own `scoring` key wins)
    loglik_metric: str  # acc | acc_norm: which of lm-evaluation-harness's two accuracies a loglik row reports
    loglik_batch_size: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "EvalSection":
        tasks = node.get("tasks")
        if tasks is not None and not isinstance(tasks, (list, tuple, str, Mapping)):
            raise EsftError(f"eval.tasks must be a list of task names or specs (got {tasks!r})")
        return cls(
            every=integer(need(node, "every", "eval"), "eval.every", low=0, what="; 0 = no periodic evaluations"),
            tasks=[] if tasks is None else [tasks] if isinstance(tasks, (str, Mapping)) else list(tasks),
            size=optional_integer(need(node, "size", "eval"), "eval.size", low=1,
                                  what="; examples scored per task (null = every example)"),
            batch_size=integer(need(node, "batch_size", "eval"), "eval.batch_size", low=1),
            layer_distances=flag(need(node, "layer_distances", "eval"), "eval.layer_distances"),
            kl=KLSection.from_config(section(node, "kl")),
            scoring=choice(need(node, "scoring", "eval"), "eval.scoring", ("generate", "loglik")),
            loglik_metric=choice(need(node, "loglik_metric", "eval"), "eval.loglik_metric", ("acc", "acc_norm")),
            loglik_batch_size=integer(need(node, "loglik_batch_size", "eval"), "eval.loglik_batch_size", low=1),
        )
