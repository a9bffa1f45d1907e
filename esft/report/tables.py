"""The report's tables: their content as plain text rows, and the same as rich tables (nothing is printed here).

One `TableData` feeds the terminal (rich), report.md and report.html, so the three always agree. Values over
seeds read `mean ± std` (the sample standard deviation; a lone seed shows its value alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

STATE_STYLES = {"done": "green", "running": "yellow", "failed": "bold red", "partial": "magenta"}
MISSING = "-"


@dataclass
class TableData:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_count(value: Any) -> str:
    """Large counters in engineering form: 1234567 -> 1.23M."""
    if value is None:
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}"


def fmt_agg(agg: dict[str, Any], digits: int = 3, count: bool = False) -> str:
    if not agg or agg.get("n", 0) == 0:
        return MISSING
    fmt = fmt_count if count else (lambda v: fmt_num(float(v), digits))
    mean = fmt(agg["mean"])
    return mean if agg.get("std") is None else f"{mean} ± {fmt(agg['std'])}"


def fmt_states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items()))


def groups_table(summary: dict[str, Any]) -> TableData:
    headers = ["group", "runs", "new task", "new-task gain", "ACC", "BWT", "mean max drop",
               "|θ-θ0|", "|θ-θ0|/pred", "compute tok. (new)", "pop. evals (new)"]
    rows = [
        [g["label"], fmt_states(g["states"]), g["new_task"], fmt_agg(g["new_task_gain"]), fmt_agg(g["acc"]),
         fmt_agg(g["bwt"]), fmt_agg(g["mean_max_drop"]), fmt_agg(g["theta_final"], 4),
         fmt_agg(g["theta_ratio"], 2), fmt_agg(g["new_stage_compute_tokens"], count=True),
         fmt_agg(g["new_stage_population_evals"], count=True)]
        for g in summary["groups"]
    ]
    notes = ["mean max drop: max drop averaged over the prior tasks shown, then over seeds; (new): in the new stage",
             "pred: alpha*sqrt(T*D/N), with AWD-L2 its saturating form; '-' for AWD-L1 and non-ES methods"]
    return TableData("Groups (mean ± std over seeds)", headers, rows, notes)


def drift_table(summary: dict[str, Any]) -> TableData:
    headers = ["group", "prior task", "n", "before", "min @ step", "final", "max drop", "final drop",
               "recovery", "area"]
    rows = []
    for g in summary["groups"]:
        for task, d in g["prior"].items():
            step = d["min_step"]
            at = f" @ {step['mean']:.0f}" if step["n"] else ""
            rows.append([g["label"], task, str(d["max_drop"]["n"]), fmt_agg(d["start"]), fmt_agg(d["min"]) + at,
                         fmt_agg(d["final"]), fmt_agg(d["max_drop"]), fmt_agg(d["final_drop"]),
                         fmt_agg(d["recovery"]), fmt_agg(d["area"])])
    notes = ["over the new stage: before = accuracy at its start; max drop = before - min; final drop = "
             "before - final; recovery = final - min; area = mean of max(0, before - acc) over the stage"]
    return TableData("Prior-task drift during the new stage (mean ± std over seeds)", headers, rows, notes)


def budget_table(summary: dict[str, Any]) -> TableData | None:
    """Groups compared at equal cost of the new stage (summary["equal_budget"]); None when not computed."""
    budget = summary.get("equal_budget")
    if not budget:
        return None
    headers = ["group", "prior task", "n", "new-stage steps", f"{budget['measure']} used", "new-task gain",
               "max drop", "final drop"]
    rows = []
    for g in budget["groups"]:
        for task in list(g["prior"]) or [MISSING]:
            d = g["prior"].get(task, {})
            rows.append([g["label"], task, str(g["n_runs"]), fmt_agg(g["steps_in_stage"], 0),
                         fmt_agg(g["cost"], count=True), fmt_agg(g["new_task_gain"]),
                         fmt_agg(d.get("max_drop", {})), fmt_agg(d.get("final_drop", {}))])
    value = fmt_count(budget["budget"])
    notes = [f"budget: {value} {budget['measure']} of the new stage (the cheapest group's mean); each run is read "
             "at its last eval within it (--budget picks the measure, --budget none drops this table)"]
    return TableData(f"At equal cost of the new stage ({value} {budget['measure']})", headers, rows, notes)


def runs_table(summary: dict[str, Any]) -> TableData:
    headers = ["run", "group", "seed", "state", "steps", "new-task gain", "ACC", "BWT", "|θ-θ0|",
               "|θ-θ0|/pred", "compute tok.", "warnings"]
    rows = []
    for r in summary["runs"]:
        planned = f"/{r['steps_planned']}" if r["steps_planned"] else ""
        rows.append([r["name"], r["group"], r["seed"] or MISSING, r["state"], f"{r['steps_done']}{planned}",
                     fmt_num(r["new_task_gain"]["gain"]), fmt_num(r["gem"]["acc"]), fmt_num(r["gem"]["bwt"]),
                     fmt_num(r["theta"]["final"], 4), fmt_num(r["theta"]["ratio"], 2),
                     fmt_count(r["compute"]["compute_tokens"]), str(r["warnings"] or "")])
    notes = [f"{r['name']}: {r['state']}: {r['message']}" for r in summary["runs"]
             if r["state"] == "failed" and r.get("message")]
    return TableData("Runs", headers, rows, notes)


def gem_table(run: dict[str, Any]) -> TableData:
    """One run's accuracy matrix R (row i: after stage i; column j: curriculum task j)."""
    tasks = run["gem"]["tasks"]
    rows = [[f"after stage {i} ({tasks[i]})", *(fmt_num(v) for v in row)] for i, row in enumerate(run["gem"]["R"])]
    return TableData(f"Accuracy matrix R of {run['name']}", ["", *tasks], rows)


def all_tables(summary: dict[str, Any]) -> list[TableData]:
    budget = budget_table(summary)
    return [groups_table(summary), drift_table(summary), *([budget] if budget else []), runs_table(summary)]


def _cell(header: str, value: str) -> Text:
    if header == "state":
        return Text(value, style=STATE_STYLES.get(value, ""))
    if header == "runs":
        style = "yellow" if any(s in value for s in ("running", "failed", "partial")) else ""
        return Text(value, style=style)
    return Text(value)


def to_rich(data: TableData) -> Table:
    table = Table(title=data.title, title_justify="left", caption="\n".join(data.notes) or None,
                  caption_justify="left")
    for i, header in enumerate(data.headers):
        table.add_column(header, justify="left" if i < 2 else "right", overflow="fold", min_width=5)
    for row in data.rows:
        table.add_row(*(_cell(h, v) for h, v in zip(data.headers, row)))
    return table
