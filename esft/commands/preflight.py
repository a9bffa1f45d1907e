"""Check `esft train` arguments before Hydra runs anything, so a typo costs one line, not a traceback.

Hydra reports a bad override with a multi-line message and exit code 1 after creating output dirs, and a sweep
only fails at the point that is bad, after the good points have run. Here every point of a sweep is composed
with the compose API first (`-m es.sigma=0.01,-1` names the bad point before anything runs; a sweep of more than
MAX_SWEEP_POINTS points is checked on an even sample, and says so) and each composed config goes through the
same validation as a real run (`esft.run.settings.RunSettings`, the task builders, the run dir): unknown config
groups/options/keys, new keys added with `+`/`++` that nothing reads, values of the wrong type or out of range,
an unwritable run dir and an uncached hub model with no network all become one `EsftError` line.

User config dirs: `--config-dir DIR` and `hydra.searchpath=[file://DIR]` add DIR's groups (e.g. DIR/task/x.yaml)
to esft's own, here exactly as in the Hydra run that follows (`config_dirs`).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from esft.errors import EsftError
from esft.resources import overrides_in

log = logging.getLogger("esft")

#: a sweep with more points than this is checked on an even sample of this many points (composing one point
#: takes ~10 ms; the cap keeps the pre-check under ~10 s even for a grid nobody would launch whole)
MAX_SWEEP_POINTS = 1000
#: sweeps up to this many points are composed point by point by Hydra itself; larger ones by SweepComposer
FULL_COMPOSE_POINTS = 16
#: the sections whose keys are fixed by conf/train.yaml (a key there that the base config lacks is a typo)
_FIXED_SECTIONS = ("es", "awd", "eval", "checkpoint", "policy", "progress", "distributed")


def flag_value(args: list[str], *names: str) -> str | None:
    """The value of the last `--flag VALUE` (or `--flag=VALUE`) among `names`, if given."""
    value = None
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            value = args[index + 1]
        for name in names:
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def _parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise EsftError(f"cannot parse override: {_first_line(exc)}") from None


def sweep_points(overrides: list[str], cap: int = MAX_SWEEP_POINTS) -> tuple[list[list[str]], int]:
    """Every point of the sweep as a list of plain overrides (at most `cap`, evenly sampled), and the total count.

    Sweep overrides (`a=1,2`, `range(...)`, `glob(...)`, `choice(...)`) expand as Hydra's basic sweeper expands
    them: the cartesian product, in order."""
    parsed = _parse(overrides)
    axes: list[list[str]] = []
    for override, raw in zip(parsed, overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([raw])
    total = 1
    for axis in axes:
        total *= len(axis)
    if total <= cap:
        return [list(point) for point in itertools.product(*axes)], total
    stride = total / cap
    return [_point(axes, int(i * stride)) for i in range(cap)], total


def _point(axes: list[list[str]], index: int) -> list[str]:
    """The `index`-th point of the cartesian product (last axis fastest), without building the product."""
    point = []
    for axis in reversed(axes):
        index, position = divmod(index, len(axis))
        point.append(axis[position])
    return point[::-1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def config_dirs(args: list[str], overrides: list[str]) -> list[Path]:
    """User config dirs in the order Hydra searches them: `--config-dir DIR`, then `hydra.searchpath` entries."""
    dirs = []
    given = flag_value(args, "--config-dir", "-cd")
    if given is not None:
        dirs.append(Path(given).expanduser())
    for override in overrides:
        if override.startswith("hydra.searchpath="):
            for entry in _parse([override])[0].value() or []:
                entry = str(entry)
                if entry.startswith("pkg://"):
                    continue
                dirs.append(Path(entry.removeprefix("file://")).expanduser())
    for directory in dirs:
        if not directory.is_dir():
            raise EsftError(f"config dir {directory} does not exist; pass a folder holding e.g. task/<name>.yaml")
    return [d.resolve() for d in dirs]


def _with_search_path(overrides: list[str], dirs: list[Path]) -> list[Path | str]:
    """The compose API knows no --config-dir: add the user dirs as one `hydra.searchpath` override instead."""
    rest = [o for o in overrides if not o.startswith("hydra.searchpath=")]
    if not dirs:
        return rest
    return [*rest, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]"]


def group_options(group: str, conf: Path, dirs: list[Path]) -> list[str]:
    """The options of a config group across esft's conf/ and the user's config dirs."""
    return sorted({p.stem for d in (conf, *dirs) for p in (d / group).glob("*.yaml")})


def _missing_option_message(exc: MissingConfigException, conf: Path, dirs: list[Path]) -> str:
    match = re.search(r"Could not find '([^/']+)/([^']+)'", str(exc))
    if not match:
        return _first_line(exc)
    group, option = match.groups()
    if group == "task":
        from esft.tasks.registry import available

        return f"unknown task '{option}'; available: {', '.join(available(dirs))}" + _config_dir_hint(dirs)
    options = group_options(group, conf, dirs)
    hint = f"; available: {', '.join(options)}" if options else ""
    return f"unknown {group} '{option}'{hint}"


def _config_dir_hint(dirs: list[Path]) -> str:
    if dirs:
        return f" (searched esft's conf/ and {', '.join(str(d) for d in dirs)})"
    return " (a task config of your own: `esft train --config-dir DIR task=NAME` with DIR/task/NAME.yaml)"


def compose_point(conf: Path, overrides: list[str], dirs: list[Path]) -> dict[str, Any]:
    """One composed config as plain containers (interpolations resolved), or one EsftError line."""
    with _composition_errors(conf, dirs):
        return OmegaConf.to_container(_compose(overrides, conf, dirs), resolve=True)


def _compose(overrides: list[str], conf: Path, dirs: list[Path]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside check_train_args: initialised once for all points
        return compose(config_name="train", overrides=_with_search_path(overrides, dirs))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=_with_search_path(overrides, dirs))


@contextmanager
def _composition_errors(conf: Path, dirs: list[Path]) -> Iterator[None]:
    """Hydra's and OmegaConf's multi-line composition errors as one EsftError line."""
    try:
        yield
    except MissingConfigException as exc:
        raise EsftError(_missing_option_message(exc, conf, dirs)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        cause = _first_line(exc.__cause__ or exc)
        unknown = re.search(r"Key '([^']+)' is not in struct", cause)
        if unknown:
            key = re.search(r"full_key: (\S+)", str(exc.__cause__ or exc))
            name = key.group(1) if key else unknown.group(1)
            raise EsftError(f"unknown config key '{name}' (see `esft train --cfg job` for all keys)") from None
        raise EsftError(f"bad override: {cause}") from None


class SweepComposer:
    """Composes many sweep points fast: Hydra composes each distinct set of *structural* overrides (config
    groups, `+`/`++`/`~`, `hydra.*`) once, and plain `key=value` overrides are applied to a copy as Hydra
    applies them (the key must exist). A 1000-point grid over values then costs one composition per group
    combination instead of ~0.1-0.5 s of Hydra per point."""

    def __init__(self, conf: Path, dirs: list[Path]) -> None:
        self.conf, self.dirs = conf, dirs
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def _structural(self, override: Override) -> bool:
        key = override.key_or_group
        return (override.is_add() or override.is_force_add() or override.is_delete() or "/" in key
                or key.startswith("hydra.") or ("." not in key and bool(group_options(key, self.conf, self.dirs))))

    def __call__(self, point: list[str]) -> dict[str, Any]:
        parsed = _parse(point)
        structural = tuple(raw for raw, o in zip(point, parsed) if self._structural(o))
        with _composition_errors(self.conf, self.dirs):
            if structural not in self._composed:
                self._composed[structural] = _compose(list(structural), self.conf, self.dirs)
            cfg = copy.deepcopy(self._composed[structural])
            for raw, override in zip(point, parsed):
                if raw in structural:
                    continue
                key = override.key_or_group
                if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                    raise EsftError(f"unknown config key '{key}' (see `esft train --cfg job` for all keys)")
                OmegaConf.update(cfg, key, override.value(), merge=True)
            return OmegaConf.to_container(cfg, resolve=True)


_ABSENT = object()


def check_new_keys(overrides: list[str], container: Mapping[str, Any], base: Mapping[str, Any],
                   conf: Path, dirs: list[Path]) -> None:
    """Refuse keys that nothing reads, however they were added (`+key=`, `++key=`, a user config file).

    Keys under `task` go to the task's constructor, which refuses what it does not take (a `_target_` class
    takes whatever its signature names); `+group=option` appends a config group, which is not a key."""
    base_node = OmegaConf.create(dict(base))
    for override in _parse(overrides):
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or "/" in key:
            continue
        if key == "task" or key.startswith(("hydra.", "task.")):
            continue  # the task's constructor refuses options it does not take
        if "." not in key and group_options(key, conf, dirs):
            continue  # `+experiment=NAME` appends a config group
        if override.is_force_add() and OmegaConf.select(base_node, key, default=None) is not None:
            continue
        raise EsftError(f"unknown config key '{key}' (added with {override.input_line}); nothing reads it. "
                        "See `esft train --cfg job` for all keys")
    known_top = set(base) | {"experiment"}
    for key in container:
        if key not in known_top:
            raise EsftError(f"unknown config key '{key}'; nothing reads it (see `esft train --cfg job`)")
    for name in _FIXED_SECTIONS:
        extra = sorted(set(container.get(name) or {}) - set(base.get(name) or {}))
        if extra:
            raise EsftError(f"unknown config key '{name}.{extra[0]}'; nothing reads it (see `esft train --cfg job`)")


def check_point(conf: Path, overrides: list[str], dirs: list[Path], base: Mapping[str, Any],
                composer: SweepComposer | None = None) -> dict[str, Any]:
    """Validate one composed run config exactly as a run would; return it."""
    from esft.run.curriculum import build_eval_tasks, build_stages
    from esft.run.settings import RunSettings
    from esft.tracking import check_trackers

    container = composer(overrides) if composer is not None else compose_point(conf, overrides, dirs)
    check_new_keys(overrides, container, base, conf, dirs)
    RunSettings.from_config(container)
    tasks, _ = build_eval_tasks(container, build_stages(container))
    _read_local_tasks(tasks.values())
    check_trackers(container)  # logger=...: the tracker's library must be installed (esft/tracking)
    _check_existing_run_dir(overrides, container)
    return container


def _read_local_tasks(tasks: Iterable[Any]) -> None:
    """Read the user's JSONL tasks now (local files, cheap): an empty or malformed file is refused up front."""
    from esft.tasks.custom import JsonlTask

    for task in tasks:
        if isinstance(task, JsonlTask):
            task.train_examples()
            task.eval_examples()


def check_train_args(args: list[str], conf: Path) -> None:
    """Raise EsftError (one line) if the arguments cannot make a valid run: every sweep point is checked."""
    overrides = overrides_in(args)
    dirs = config_dirs(args, overrides)
    points, total = sweep_points(overrides)
    base = compose_point(conf, [], [])
    multirun = any(a in ("-m", "--multirun") for a in args)
    bad: dict[str, list[str]] = {}  # error -> the points that hit it
    container: dict[str, Any] | None = None
    composer = SweepComposer(conf, dirs) if len(points) > FULL_COMPOSE_POINTS else None
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for point in points:
            try:
                container = check_point(conf, point, dirs, base, composer)
            except EsftError as exc:
                if len(points) == 1:
                    raise
                swept = [p for p, raw in zip(point, overrides) if p != raw]
                bad.setdefault(str(exc), []).append(f"[{' '.join(swept) or ' '.join(point)}]")
    if bad:
        raise EsftError(_sweep_failure(bad, len(points), total))
    if total > len(points):
        log.warning("sweep of %d points: checked an even sample of %d before launching", total, len(points))
    if container is not None:
        _check_writable(overrides, multirun)
        from esft.models.hub import ensure_model_reachable

        if not container["model"].get("gguf"):  # a packaged GGUF stands in for the hub (esft/models/packaged.py)
            ensure_model_reachable(str(container["model"]["name"]))


def _sweep_failure(bad: dict[str, list[str]], checked: int, total: int) -> str:
    """One line naming the bad points, grouped by their error (at most 3 points and 4 errors shown)."""
    count = sum(len(points) for points in bad.values())
    sampled = f" (checked {checked} of {total} points)" if total > checked else ""
    parts = []
    for error, points in list(bad.items())[:4]:
        more = f" and {len(points) - 3} more" if len(points) > 3 else ""
        parts.append(f"{', '.join(points[:3])}{more}: {error}")
    rest = f"; and {len(bad) - 4} other errors" if len(bad) > 4 else ""
    return f"{count} of {total} sweep points are invalid{sampled}, nothing was launched: " + "; ".join(parts) + rest


def _check_existing_run_dir(overrides: list[str], container: dict) -> None:
    """Refuse to point a different config at an existing run dir: Hydra would overwrite its .hydra/ record."""
    from esft.run.experiment import config_fingerprint
    from esft.storage.rundir import RUN_INFO_FILE, read_json

    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if not run_dirs:
        return
    info = Path(run_dirs[-1]) / RUN_INFO_FILE
    if info.exists() and read_json(info).get("config_fingerprint") != config_fingerprint(container):
        raise EsftError(f"run dir {run_dirs[-1]} was made by a different config; resume it with "
                        "`esft train --resume DIR` (same overrides) or choose a new hydra.run.dir")


def _check_writable(overrides: list[str], multirun: bool) -> None:
    """The run dir (or sweep dir) must be creatable: refuse now rather than after the model has loaded."""
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(key)]
    target = Path(given[-1]).expanduser() if given else Path("outputs")
    existing = target.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise EsftError(f"run dir {target}: {existing} is a file, not a folder; choose another {key[:-1]}")
    try:  # a real write: permission bits say nothing for root, a read-only mount, or /proc
        handle, probe = tempfile.mkstemp(prefix=".esft-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError:
        raise EsftError(f"run dir {target} cannot be written ({existing} is not writable); "
                        f"choose another {key[:-1]}=DIR or fix the permissions") from None
