"""The report's opening lines: a verdict per prior task, worded from the summary's numbers (no text by hand).

A comparison is only drawn between two groups whose grouping keys differ in exactly one setting, so the change
in a number can be put down to that setting (`awd.lambda=0` vs `awd.lambda=1`, everything else equal). A group
is compared with the first group in table order that differs from it in one key only; groups differing in two
settings at once are never compared. With a single group there is nothing to compare and each prior task's
drops are stated as they are.

Numbers are means over seeds in percentage points. A comparison is called out only as far as the seeds allow:
with one seed on either side there is no spread ("n=1 seed: no spread, no claim"); with two or more seeds on
both sides the line says whether the gap between the means is larger than the two standard deviations added
together, a deliberately plain test, since sweeps rarely have enough seeds for more.
"""

from __future__ import annotations

from typing import Any

#: differences of means below this many percentage points are worded as "unchanged"
SAME_PTS = 0.05


def _pts(value: float) -> str:
    return f"{value * 100:.1f}"


def _seeds(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, bool]:
    """The seed count phrase of a comparison and whether both sides have a spread."""
    na, nb = a.get("n", 0), b.get("n", 0)
    count = f"n={na} seed{'s' if na != 1 else ''} each" if na == nb else f"n={na} vs {nb} seeds"
    return count, na >= 2 and nb >= 2


def _spread(a: dict[str, Any], b: dict[str, Any]) -> str:
    count, spread = _seeds(a, b)
    if not spread:
        return f"{count}: no spread, no claim" if min(a.get("n", 0), b.get("n", 0)) == 1 else count
    gap = abs(a["mean"] - b["mean"])
    inside = "larger than" if gap > (a["std"] or 0.0) + (b["std"] or 0.0) else "within"
    return f"{count}; the gap is {inside} the two seed spreads added"


def _verb(before: float, after: float) -> str:
    if abs(after - before) * 100 < SAME_PTS:
        return "left"
    return "cut" if after < before else "raised"


def _difference(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [k for k in a if a[k] != b.get(k)]


def comparable_pairs(groups: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(baseline, other, the one key they differ in): each group against the first earlier one differing in that
    key alone (sorted groups put `awd.lambda=0` before `awd.lambda=1`, so the baseline reads first)."""
    pairs = []
    for j, other in enumerate(groups):
        used: set[str] = set()
        for base in groups[:j]:
            diff = _difference(base["key"], other["key"])
            if len(diff) == 1 and diff[0] not in used:
                used.add(diff[0])
                pairs.append((base, other, diff[0]))
    return pairs


def _metric(group: dict[str, Any], task: str, name: str) -> dict[str, Any]:
    return (group["prior"].get(task) or {}).get(name) or {}


def pair_lines(base: dict[str, Any], other: dict[str, Any], key: str) -> list[str]:
    """One line per prior task both groups have, then one for the new task."""
    shared = ", ".join(f"{k}={v}" for k, v in other["key"].items() if k != key)  # what both groups hold fixed
    setting = f"{key}={other['key'][key]} (vs {base['key'][key]}{'; ' + shared if shared else ''})"
    lines = []
    for task in [t for t in base["prior"] if t in other["prior"]]:
        a, b = _metric(base, task, "max_drop"), _metric(other, task, "max_drop")
        if not a.get("n") or not b.get("n"):
            continue
        verb = _verb(a["mean"], b["mean"])
        change = f"at {_pts(a['mean'])}" if verb == "left" else f"from {_pts(a['mean'])} to {_pts(b['mean'])}"
        line = f"{setting} {verb} the max drop of {task} {change} points in the new stage"
        fa, fb = _metric(base, task, "max_drop_from_base"), _metric(other, task, "max_drop_from_base")
        if fa.get("n") and fb.get("n") and max(fa["mean"], fb["mean"]) * 100 < SAME_PTS:
            line += " (never below the base model in either)"  # e.g. a task trained in an earlier stage
        elif fa.get("n") and fb.get("n"):
            line += f" ({_pts(fa['mean'])} -> {_pts(fb['mean'])} from the base model)"
        lines.append(f"{line} ({_spread(a, b)})")
    a, b = base.get("new_task_final") or {}, other.get("new_task_final") or {}
    if a.get("n") and b.get("n"):
        gain_a, gain_b = base["new_task_gain"], other["new_task_gain"]
        gains = (f", gain {_pts(gain_b['mean'])} vs {_pts(gain_a['mean'])} points"
                 if gain_a.get("n") and gain_b.get("n") else "")
        lines.append(f"{setting}: new task {other['new_task']} ended at {_pts(b['mean'])}% vs {_pts(a['mean'])}%"
                     f"{gains} ({_spread(a, b)})")
    return lines


def single_group_lines(group: dict[str, Any]) -> list[str]:
    lines = []
    for task in group["prior"]:
        drop, base = _metric(group, task, "max_drop"), _metric(group, task, "max_drop_from_base")
        if not drop.get("n"):
            continue
        extra = f", {_pts(base['mean'])} from the base model" if base.get("n") else ""
        seeds = f"n={drop['n']} seed{'s' if drop['n'] != 1 else ''}"
        lines.append(f"{task}: max drop {_pts(drop['mean'])} points in the new stage{extra} "
                     f"({seeds}{': no spread, no claim' if drop['n'] == 1 else ''})")
    return lines


def verdict(summary: dict[str, Any]) -> list[str]:
    """The verdict lines of a summary (see the module docstring); [] when no group has a prior-task number."""
    groups = summary["groups"]
    if len(groups) == 1:
        return single_group_lines(groups[0])
    lines = [line for base, other, key in comparable_pairs(groups) for line in pair_lines(base, other, key)]
    if not lines and len(groups) > 1:
        lines.append("no two groups differ in exactly one setting: no comparison drawn (see the tables)")
    return lines
