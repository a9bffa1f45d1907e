"""From config to curriculum: the ordered training stages and the tasks every checkpoint scores.

Stages are the prior tasks (`prior.tasks`, `prior.steps` each, default `steps`) followed by the new task
(`task`, `steps`). Steps are numbered across the whole curriculum: stage B's first step follows stage A's last.
Every curriculum task is scored at every checkpoint (role `curriculum`), plus the eval-only tasks `eval.tasks`
(role `eval_only`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Task
from esft.tasks.registry import build_task, task_name


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
    data_dir, seed = cfg.get("data_dir"), int(cfg.get("seed", 0))
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
        stages.append(Stage(index, build_task(spec, data_dir=data_dir, seed=seed), steps, next_step))
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
            tasks[name] = build_task(spec, data_dir=cfg.get("data_dir"), seed=int(cfg.get("seed", 0)))
            roles[name] = "eval_only"
    return tasks, roles
