"""Checks for config values: each returns the checked value or raises one `EsftError` line that names the key,
the value and the fix. Every package's typed settings (es/settings.py, core/awd.py, evaluation/settings.py,
models/settings.py, run/settings.py) are built from these, so a bad value reads the same wherever it is caught.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from esft.errors import EsftError


def section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    node = cfg.get(key)
    if not isinstance(node, Mapping):
        raise EsftError(f"config section '{key}' is missing or not a mapping (got {node!r}); "
                        "see `esft train --cfg job`")
    return node


def need(node: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in node:
        name = f"{where}.{key}" if where else key
        raise EsftError(f"config key {name} is missing; declare it (see conf/ and `esft train --cfg job`)")
    return node[key]


def number(value: Any, key: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """A finite real number within [low, high] (open ends where asked); `hint` follows a non-finite or too
    large value's message (what the key means and a sensible value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EsftError(f"{key} must be a number (got {value!r}); e.g. {key}=0.01")
    result = float(value)
    if not math.isfinite(result):
        bounds = _range(low, high, low_open, high_open)
        raise EsftError(f"{key} must be a finite number{' ' + bounds if low is not None or high is not None else ''}"
                        f" (got {value!r})" + hint)
    too_low = low is not None and (result <= low if low_open else result < low)
    too_high = high is not None and (result >= high if high_open else result > high)
    if too_low or too_high:
        raise EsftError(f"{key} must be {_range(low, high, low_open, high_open)} (got {value!r})"
                        + (hint if too_high else ""))
    return result


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts) if parts else "use a finite value"


def integer(value: Any, key: str, *, low: int | None = None, what: str = "") -> int:
    """An integer (not a bool, not a float) >= low."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EsftError(f"{key} must be an integer (got {value!r}){what}")
    if low is not None and value < low:
        raise EsftError(f"{key} must be an integer >= {low} (got {value!r}){what}")
    return value


def optional_integer(value: Any, key: str, *, low: int, what: str = "") -> int | None:
    return None if value is None else integer(value, key, low=low, what=what)


def flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise EsftError(f"{key} must be true or false (got {value!r})")
    return value


def choice(value: Any, key: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise EsftError(f"unknown {key} '{value}'; use one of: {', '.join(options)}")
    return value


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EsftError(f"{key} must be a non-empty string (got {value!r})")
    return value
