"""The report's tables: their content as plain text rows, and the same as rich tables (nothing is printed here).

One `TableData` feeds the terminal (rich), report.md and report.html, so the three always agree. Values over
seeds read `mean ± std` (the sample standard deviation; a lone seed shows its value alone, and a note says that
such a group has no spread to judge by). One unit everywhere on screen: accuracies in percent, drops, gains and
BWT in percentage points (summary.json and summary.csv keep the documented fractions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

STATE_STYLES = {"done": "green", "running": "yellow", "failed": "bold red", "partial": "magenta"}
MISSING = "-"
#: fractions of accuracy are shown as percent / percentage points with this many decimals
PCT, PCT_DIGITS = 100.0, 1


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


def fmt_agg(agg: dict[str, Any], digits: int = 3, count: bool = False, scale: float = 1.0) -> str:
    if not agg or agg.get("n", 0) == 0:
        return MISSING
    fmt = fmt_count if count else (lambda v: fmt_num(float(v) * scale, digits))
    mean = fmt(agg["mean"])
    return mean if agg.get("std") is None else f"{mean} ± {fmt(agg['std'])}"


def fmt_pct(agg: dict[str, Any]) -> str:
    """An accuracy (or a difference of accuracies) over seeds in percent (percentage points)."""
    return fmt_agg(agg, PCT_DIGITS, scale=PCT)


def fmt_pct_num(value: Any) -> str:
    return MISSING if value is None else f"{float(value) * PCT:.{PCT_DIGITS}f}"


def lone_seed_note(summary: dict[str, Any]) -> list[str]:
    """A note naming the groups with a single run: their numbers have no spread and support no claim."""
    lone = [g["label"] for g in summary["groups"] if g["n_runs"] == 1]
    if not lone:
        return []
    which = "every group" if len(lone) == len(summary["groups"]) else ", ".join(lone)
    return [f"n=1 seed in {which}: no spread, no claim (run more seeds to compare)"]


def fmt_states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items()))


def groups_table(summary: dict[str, Any]) -> TableData:
    headers = ["group", "runs", "new task", "new-task final %", "new-task gain", "ACC %", "BWT",
               "mean max drop", "mean max drop (base)", "|θ-θ0|", "|θ-θ0|/pred", "compute tok. (new)",
               "pop. evals (new)"]
    rows = [
        [g["label"], fmt_states(g["states"]), g["new_task"], fmt_pct(g.get("new_task_final", {})),
         fmt_pct(g["new_task_gain"]), fmt_pct(g["acc"]), fmt_pct(g["bwt"]), fmt_pct(g["mean_max_drop"]),
         fmt_pct(g.get("mean_max_drop_from_base", {})), fmt_agg(g["theta_final"], 4),
         fmt_agg(g["theta_ratio"], 2), fmt_agg(g["new_stage_compute_tokens"], count=True),
         fmt_agg(g["new_stage_population_evals"], count=True)]
        for g in summary["groups"]
    ]
    notes = ["accuracies in %, gains, drops and BWT in percentage points; (new): in the new stage",
             "mean max drop: max drop averaged over the prior tasks shown, then over seeds; (base): measured from "
             "the run's first eval (the base model) instead of the new stage's start",
             "pred: alpha*sqrt(T*D/N)*sqrt(N/(N-1)) (antithetic pairs; without pairs the last factor is 1), with "
             "AWD-L2 its saturating form; '-' for AWD-L1, rank shaping and non-ES methods",
             *lone_seed_note(summary), *_scoring_note(summary, new_task=True)]
    return TableData("Groups (mean ± std over seeds)", headers, rows, notes)


def _scoring_note(summary: dict[str, Any], new_task: bool) -> list[str]:
    """How the new task's evals were scored (the drift table has a column for the prior tasks)."""
    modes = {}
    for g in summary["groups"]:
        for task in g["new_task"].split(",") if new_task else []:
            if g.get("scoring", {}).get(task):
                modes.setdefault(task, g["scoring"][task])
    return [f"new task {task} scored by: {mode}" for task, mode in modes.items()]


def fmt_margin(agg: dict[str, Any] | None) -> str:
    """A paired 95% margin (mean over the seeds that have one) as '± x.x' percentage points."""
    if not agg or agg.get("n", 0) == 0:
        return MISSING
    return f"± {fmt_pct_num(agg['mean'])}"


def drift_table(summary: dict[str, Any]) -> TableData:
    scored = any(t in g.get("scoring", {}) for g in summary["groups"] for t in g["prior"])
    paired = any((d.get("final_drop_margin") or {}).get("n") for g in summary["groups"] for d in g["prior"].values())
    headers = ["group", "prior task", "n", "base", "before", "min @ step", "final", "max drop",
               "max drop (base)", "final drop", "final drop (base)", "recovery", "area",
               *(["max drop 95% (paired)", "final drop 95% (paired)"] * paired), *(["scoring"] * scored)]
    rows = []
    for g in summary["groups"]:
        for task, d in g["prior"].items():
            step = d["min_step"]
            at = f" @ {step['mean']:.0f}" if step["n"] else ""
            rows.append([g["label"], task, str(d["max_drop"]["n"]), fmt_pct(d.get("base", {})),
                         fmt_pct(d["start"]), fmt_pct(d["min"]) + at, fmt_pct(d["final"]), fmt_pct(d["max_drop"]),
                         fmt_pct(d.get("max_drop_from_base", {})), fmt_pct(d["final_drop"]),
                         fmt_pct(d.get("final_drop_from_base", {})), fmt_pct(d["recovery"]), fmt_pct(d["area"]),
                         *([fmt_margin(d.get("max_drop_margin")), fmt_margin(d.get("final_drop_margin"))] * paired),
                         *([g.get("scoring", {}).get(task, MISSING)] * scored)])
    notes = ["accuracies in %, drops in percentage points. Over the new stage: before = accuracy at its start; "
             "max drop = before - min; final drop = before - final; recovery = final - min; area = mean of "
             "max(0, before - acc) over the stage",
             "(base): from the run's first eval of the task (the base model, before any stage): base - lowest "
             "accuracy of the whole run, base - final; drift in earlier stages shows here, not in the new stage's",
             *lone_seed_note(summary)]
    if paired:
        notes.append("95% (paired): 1.96 sd(d)/sqrt(n) over the per-item differences d = before - after of the "
                     "same eval items (one run's sampling margin of that drop; the mean over seeds that have one)")
    if scored:
        notes.append("scoring: how the evals scored the task (loglik: answer options ranked by log-likelihood; "
                     "generate: generated text matched)")
    return TableData("Prior-task drift (mean ± std over seeds)", headers, rows, notes)


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
                         fmt_agg(g["cost"], count=True), fmt_pct(g["new_task_gain"]),
                         fmt_pct(d.get("max_drop", {})), fmt_pct(d.get("final_drop", {}))])
    value = fmt_count(budget["budget"])
    notes = [f"budget: {value} {budget['measure']} of the new stage (the cheapest group's mean); each run is read "
             "at its last eval within it (--budget picks the measure, --budget none drops this table); gain and "
             "drops in percentage points"]
    return TableData(f"At equal cost of the new stage ({value} {budget['measure']})", headers, rows, notes)


def runs_table(summary: dict[str, Any]) -> TableData:
    headers = ["run", "group", "seed", "state", "steps", "new-task final %", "new-task gain", "ACC %", "BWT",
               "|θ-θ0|", "|θ-θ0|/pred", "compute tok.", "warnings"]
    rows = []
    for r in summary["runs"]:
        planned = f"/{r['steps_planned']}" if r["steps_planned"] else ""
        rows.append([r["name"], r["group"], r["seed"] or MISSING, r["state"], f"{r['steps_done']}{planned}",
                     fmt_pct_num(r["new_task_gain"].get("final")), fmt_pct_num(r["new_task_gain"]["gain"]),
                     fmt_pct_num(r["gem"]["acc"]), fmt_pct_num(r["gem"]["bwt"]),
                     fmt_num(r["theta"]["final"], 4), fmt_num(r["theta"]["ratio"], 2),
                     fmt_count(r["compute"]["compute_tokens"]), str(r["warnings"] or "")])
    notes = [f"{r['name']}: {r['state']}: {r['message']}" for r in summary["runs"]
             if r["state"] == "failed" and r.get("message")]
    return TableData("Runs", headers, rows, notes)


def gem_table(run: dict[str, Any]) -> TableData:
    """One run's accuracy matrix R (row i: after stage i; column j: curriculum task j)."""
    tasks = run["gem"]["tasks"]
    rows = [[f"after stage {i} ({tasks[i]})", *(fmt_pct_num(v) for v in row)]
            for i, row in enumerate(run["gem"]["R"])]
    return TableData(f"Accuracy matrix R of {run['name']} (%)", ["", *tasks], rows)


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
