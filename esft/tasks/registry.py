"""Name -> task factory. `conf/task/*.yaml` and `eval.tasks` refer to tasks by these names.

A task spec is either a bare name (`"add"`) or a mapping with `name` plus keyword arguments for the factory
(`{name: gsm8k, eval_size: 500}`). Factories receive the run's `data_dir` and `seed` so loaders can find local
files and draw fixed eval subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Task

TaskFactory = Callable[..., Task]
_REGISTRY: dict[str, TaskFactory] = {}


def register(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: make a task factory (usually the class) available under `name`."""

    def decorator(factory: TaskFactory) -> TaskFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def _load_builtin_tasks() -> None:
    # Importing the modules runs their @register decorators.
    import esft.tasks.arithmetic  # noqa: F401


def task_name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec["name"])


def build_task(spec: str | Mapping[str, Any], *, data_dir: str | None = None, seed: int = 0) -> Task:
    """Build a task from a name or a `{name: ..., **kwargs}` mapping; unknown names are a user error."""
    _load_builtin_tasks()
    if isinstance(spec, str):
        name, kwargs = spec, {}
    else:
        kwargs = {k: v for k, v in dict(spec).items() if k != "name"}
        name = str(spec.get("name"))
    if name not in _REGISTRY:
        raise EsftError(f"unknown task '{name}'; available tasks: {', '.join(available())}")
    return _REGISTRY[name](data_dir=data_dir, seed=seed, **kwargs)
