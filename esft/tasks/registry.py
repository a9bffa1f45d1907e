"""Name -> task factory. `conf/task/*.yaml` and `eval.tasks` refer to tasks by these names.

A task spec is either a bare name (`"add"`) or a mapping with `name` plus keyword arguments for the factory
(`{name: gsm8k, eval_size: 500}`). Factories receive the run's `data_dir` and `seed` so loaders can find local
files and draw fixed eval subsets.

Users add tasks without editing esft (README, "Adding a task without editing esft"):
- `{_target_: my_pkg.tasks.MyTask, name: my_task, **kwargs}`: the dotted path must resolve to a subclass of
  `esft.tasks.base.Task`; anything else (a function such as `os.system`, a non-Task class) is refused before
  it is called. `data_dir` and `seed` are passed when the class's constructor accepts them.
- `{jsonl: path/to/items.jsonl, name: my_task, reward_kind: exact|numeric|choice}`: see esft/tasks/custom.py.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.tasks.base import Task

TaskFactory = Callable[..., Task]
#: keys conf/train.yaml declares under `task` for every task, so `task.KEY=VALUE` works for any task config
SCHEMA_KEYS = ("max_new_tokens",)
_REGISTRY: dict[str, TaskFactory] = {}


def register(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: make a task factory (usually the class) available under `name`."""

    def decorator(factory: TaskFactory) -> TaskFactory:
        _REGISTRY[name] = factory
        return factory

    return decorator


def available(config_dirs: Iterable[Path | str] = ()) -> list[str]:
    """Every task name a user can give: the registered tasks plus the task configs (`task=NAME`) in esft's
    conf/task and the user's config dirs. `esft tasks` and the unknown-task errors both list exactly this."""
    _load_builtin_tasks()
    from esft.resources import conf_dir

    configs = {p.stem for d in (conf_dir(), *map(Path, config_dirs)) for p in (Path(d) / "task").glob("*.yaml")}
    return sorted(set(_REGISTRY) | configs)


def task_config_dirs() -> list[Path]:
    """The user config dirs of the running Hydra job (`--config-dir`, `hydra.searchpath`), for error messages."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except (ImportError, ValueError):  # not inside a Hydra job
        return []
    return [Path(s.path) for s in sources if s.schema == "file" and s.provider != "main"]


def _load_builtin_tasks() -> None:
    # Importing the modules runs their @register decorators.
    import esft.tasks.arithmetic  # noqa: F401
    import esft.tasks.countdown  # noqa: F401
    import esft.tasks.gsm8k  # noqa: F401
    import esft.tasks.multiple_choice  # noqa: F401
    import esft.tasks.proofwriter  # noqa: F401


def _plain(spec: Any) -> Any:
    """An OmegaConf node (what Hydra hands over) as plain dicts/lists; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return spec
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, (DictConfig, ListConfig)) else spec


def task_name(spec: str | Mapping[str, Any]) -> str:
    """The name a spec's task is logged under: its `name`, else the `_target_` class's or the jsonl file's."""
    spec = _plain(spec)
    if isinstance(spec, str):
        return spec
    if spec.get("name"):
        return str(spec["name"])
    if "_target_" in spec:
        return str(resolve_target(spec["_target_"]).name)
    if "jsonl" in spec:
        path = spec["jsonl"]
        return Path(str(path if isinstance(path, str) else next(iter(dict(path).values())))).stem
    raise EsftError(f"task spec {spec} has no name; add `name: <task>` (available tasks: {', '.join(available())})")


def build_task(spec: str | Mapping[str, Any], *, data_dir: str | None = None, seed: int = 0) -> Task:
    """Build a task from a name, a `{name: ..., **kwargs}` mapping, a `_target_` or a `jsonl` spec."""
    _load_builtin_tasks()
    spec = _plain(spec)
    if isinstance(spec, str):
        name, kwargs = spec, {}
    else:  # a schema key left at null (conf/train.yaml declares it for every task) means "the task's default"
        kwargs = {k: v for k, v in dict(spec).items() if k != "name" and not (k in SCHEMA_KEYS and v is None)}
        name = task_name(spec)
    if "_target_" in kwargs:
        return _build_target(name, kwargs, data_dir, seed)
    if "jsonl" in kwargs:
        from esft.tasks.custom import JsonlTask

        return JsonlTask(data_dir=data_dir, seed=seed, name=name, **kwargs)
    if name not in _REGISTRY:
        raise EsftError(f"unknown task '{name}'; available tasks: {', '.join(available(task_config_dirs()))} "
                        "(or give `_target_: pkg.module.TaskClass` or `jsonl: file.jsonl`)")
    return _REGISTRY[name](data_dir=data_dir, seed=seed, **kwargs)


def resolve_target(path: Any) -> type[Task]:
    """The Task subclass a dotted `_target_` names; refuse anything that is not one (nothing is called)."""
    module_name, _, attribute = str(path).rpartition(".")
    if not module_name or not attribute:
        raise EsftError(f"_target_ '{path}' is not a dotted path; write it as pkg.module.TaskClass")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EsftError(f"_target_ '{path}': cannot import '{module_name}' ({exc}); "
                        "check the path and PYTHONPATH") from None
    target = getattr(module, attribute, None)
    if not (isinstance(target, type) and issubclass(target, Task)):
        raise EsftError(f"_target_ '{path}' is not a subclass of esft.tasks.base.Task; point it at a Task class")
    if inspect.isabstract(target):
        raise EsftError(f"_target_ '{path}' is abstract; implement its abstract methods or name a concrete subclass")
    return target


def _build_target(name: str, kwargs: dict[str, Any], data_dir: str | None, seed: int) -> Task:
    """Instantiate a `_target_` Task class with the spec's options (plus data_dir/seed where accepted)."""
    options = {k: v for k, v in kwargs.items() if k != "_target_"}
    cls = resolve_target(kwargs["_target_"])
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key, value in (("data_dir", data_dir), ("seed", seed)):
        if takes_any or key in parameters:
            options.setdefault(key, value)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise EsftError(f"task '{name}': {cls.__name__} does not accept these options ({exc}); "
                        "fix the task config") from None
    task = cls(**options)
    task.name = name
    return task
