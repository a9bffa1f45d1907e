"""From config to curriculum: the ordered training stages and the tasks every checkpoint scores.

Stages are the prior tasks (`prior.tasks`, `prior.steps` each, default `steps`) followed by the new task
(`task`, `steps`). Steps are numbered across the whole curriculum: stage B's first step follows stage A's last.
Every curriculum task is scored at every checkpoint (role `curriculum`), plus the eval-only tasks `eval.tasks`
(role `eval_only`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Task
from esft.tasks.registry import build_task, task_name

log = logging.getLogger("esft")


@dataclass
class Stage:
    index: int
    task: Task
    steps: int
    first_step: int

    @property
    def last_step(self) -> int:
        return self.first_step + self.steps - 1

    def describe(self, method: str) -> dict[str, Any]:
        return {"index": self.index, "task": self.task.name, "method": method, "steps": self.steps,
                "first_step": self.first_step, "last_step": self.last_step}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        return [value]
    return list(value)


def _steps(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EsftError(f"{what} must be a non-negative integer (got {value!r})")
    return value


def build_stages(cfg: Mapping[str, Any]) -> list[Stage]:
    data_dir, seed = cfg.get("data_dir"), int(cfg["seed"])
    prior = cfg.get("prior") or {}
    default_steps = _steps(cfg.get("steps"), "steps")
    prior_steps = prior.get("steps")
    prior_steps = default_steps if prior_steps is None else _steps(prior_steps, "prior.steps")
    specs = [(spec, prior_steps) for spec in _as_list(prior.get("tasks"))]
    if cfg.get("task") is None:
        raise EsftError("no task to train: set task=NAME (e.g. task=reverse or task=gsm8k)")
    specs.append((cfg["task"], default_steps))
    stages, next_step = [], 1
    for index, (spec, steps) in enumerate(specs):
        task = fit_to_context(build_task(spec, data_dir=data_dir, seed=seed), spec, model_context(cfg),
                              "task.max_new_tokens" if index == len(specs) - 1 else "prior.tasks[].max_new_tokens")
        stages.append(Stage(index, task, steps, next_step))
        next_step += steps
    return stages


def build_eval_tasks(cfg: Mapping[str, Any], stages: list[Stage]) -> tuple[dict[str, Task], dict[str, str]]:
    """All tasks scored at a checkpoint (curriculum first, then eval-only) and their roles."""
    tasks: dict[str, Task] = {}
    roles: dict[str, str] = {}
    for stage in stages:
        tasks.setdefault(stage.task.name, stage.task)
        roles.setdefault(stage.task.name, "curriculum")
    eval_cfg = cfg.get("eval") or {}
    for spec in _as_list(eval_cfg.get("tasks")):
        name = task_name(spec)
        if name not in tasks:
            task = build_task(spec, data_dir=cfg.get("data_dir"), seed=int(cfg["seed"]))
            tasks[name] = fit_to_context(task, spec, model_context(cfg), "eval.tasks[].max_new_tokens")
            roles[name] = "eval_only"
    return tasks, roles


def model_context(cfg: Mapping[str, Any]) -> int | None:
    """The model's context in tokens when the config alone tells it (the tiny model); None for hub models,
    whose context is known only once loaded (Policy then refuses a prompt that cannot fit)."""
    model = cfg.get("model") or {}
    if model.get("name") != "tiny":
        return None
    context = (model.get("tiny") or {}).get("max_position_embeddings")
    return context if isinstance(context, int) and not isinstance(context, bool) else None


def fit_to_context(task: Task, spec: Any, context: int | None, key: str) -> Task:
    """Give a task a generation budget the model can hold.

    A budget the user set (`max_new_tokens` in the task's spec) must leave room for a prompt, else one line
    refuses it. A budget left to the task's default (the paper's 1,024 for data tasks, also a custom task's)
    is clipped to half the context on a small model, with a log line: the default is for 3B models, and a
    generation the context cannot hold would fail at the first rollout."""
    from esft.run.settings import check_task_budget

    budget = getattr(task, "max_new_tokens", None)
    if context is None or not isinstance(budget, int):
        return task
    given = spec.get("max_new_tokens") if isinstance(spec, Mapping) else None
    if given is not None:
        check_task_budget(task.name, budget, context, key)
    elif budget >= context:
        task.max_new_tokens = max(1, context // 2)
        log.info("task '%s': max_new_tokens %d -> %d to fit the model's %d-token context (half kept for the "
                 "prompt); set %s to choose", task.name, budget, task.max_new_tokens, context, key)
    return task
