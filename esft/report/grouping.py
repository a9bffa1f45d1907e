"""Group runs by what differs between their configs.

Each config is flattened to dotted keys (`awd.lambda`, `es.population_size`, ...). Lists of `{name: ...}`
entries (`prior.tasks`, `eval.tasks`) become their comma-joined names, so the task pair is one readable key.
Keys that never change a result (the seed, paths, logging and checkpoint cadence) are ignored. The keys whose
values are not the same in every run are the *differing keys*; runs with equal values on all of them form a
group (their seeds are aggregated), and the group's label names those keys, e.g.
`awd.lambda=0, es.population_size=16`. `--group-by KEY` replaces the differing keys by the given ones (a key
may be abbreviated to a unique suffix: `population_size`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from esft.errors import EsftError
from esft.report.load import Run

#: keys (or key prefixes ending in ".") that never split a group: seeds are what a group aggregates over
IGNORED_KEYS = (
    "seed",
    "data_dir",
    "model.cache_dir",
    "model.device",
    "eval.batch_size",
    "progress.",
    "checkpoint.",
    "logger.",
    "hydra.",
)
MISSING = "-"


@dataclass
class Group:
    """Runs that share the values of the grouping keys."""

    label: str
    key: dict[str, str]
    runs: list[Run] = field(default_factory=list)


def format_value(value: Any) -> str:
    """One stable text per value: 1 and 1.0 are the same setting, lists of tasks read as names."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, dict) and set(v) == {"name"} for v in value):
            return ",".join(str(v["name"]) for v in value) or "none"
        if all(not isinstance(v, (dict, list)) for v in value):
            return ",".join(format_value(v) for v in value) or "none"
        return json.dumps(value, sort_keys=True)
    return str(value)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to formatted values; dicts recurse, everything else is a leaf."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = format_value(value)
    return flat


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED_KEYS)


def differing_keys(runs: list[Run]) -> list[str]:
    """Keys (sorted) whose value differs between at least two runs that have the key.

    A key some runs lack and the others all share one value of is not a difference: it was added to the
    config schema between esft versions (runs from before it simply ran with what became its default)."""
    flats = [flatten(run.config) for run in runs]
    keys = sorted({k for flat in flats for k in flat if not _ignored(k)})
    return [k for k in keys if len({flat[k] for flat in flats if k in flat}) > 1]


def resolve_keys(requested: list[str], runs: list[Run]) -> list[str]:
    """Map each --group-by key to a config key: exact, else the unique key ending in `.KEY`."""
    known = sorted({k for run in runs for k in flatten(run.config)})
    resolved: list[str] = []
    for want in requested:
        if want in known:
            resolved.append(want)
            continue
        matches = [k for k in known if k.endswith("." + want)]
        if len(matches) != 1:
            hint = f"it matches {', '.join(matches)}" if matches else "no config key has that name"
            raise EsftError(f"--group-by {want}: {hint} (e.g. awd.lambda, es.population_size, method.name)")
        resolved.append(matches[0])
    return resolved


def _sort_key(values: tuple[str, ...]) -> tuple[Any, ...]:
    """Numbers sort numerically and before text, so population sizes read 8, 16, 32."""
    out: list[Any] = []
    for value in values:
        try:
            out.append((0, float(value), ""))
        except ValueError:
            out.append((1, 0.0, value))
    return tuple(out)


def label_for(key: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items()) if key else "all runs"


def group_runs(runs: list[Run], group_by: list[str] | None = None) -> tuple[list[Group], list[str]]:
    """Groups sorted by their key values, and the keys used. Raises EsftError for an unknown --group-by key."""
    keys = resolve_keys(group_by, runs) if group_by else differing_keys(runs)
    buckets: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        flat = flatten(run.config)
        buckets.setdefault(tuple(flat.get(k, MISSING) for k in keys), []).append(run)
    groups = []
    for values in sorted(buckets, key=_sort_key):
        key = dict(zip(keys, values))
        groups.append(Group(label=label_for(key), key=key, runs=buckets[values]))
    return groups, keys
