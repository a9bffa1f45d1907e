"""Write the report's files: summary.json, summary.csv, report.md and a self-contained report.html.

report.md links the PNGs beside it; report.html embeds them as base64 data URIs and inlines its CSS, so it can
be mailed or archived alone. summary.csv is tidy: one row per (group or run) and prior task, with a `level`
column (group | run); group rows hold seed means in the metric columns and standard deviations in `*_std`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from esft.report.metrics import BASE_FIELDS, COMPUTE_FIELDS, DRIFT_FIELDS, MARGIN_FIELDS
from esft.report.tables import TableData, all_tables, gem_table, lone_seed_note
from esft.storage.rundir import finite_or_null

RUN_FIELDS = ("new_task_gain", "new_task_final", "acc", "bwt", "theta_final", "theta_pred", "theta_ratio",
              "theta_ratio_free", *COMPUTE_FIELDS, *(f"new_stage_{n}" for n in COMPUTE_FIELDS))
#: group rows only, when the report compares groups at equal cost (summary["equal_budget"])
BUDGET_FIELDS = ("budget_steps_in_stage", "budget_new_task_gain", "budget_max_drop", "budget_final_drop")
CSV_HEADER = ["level", "group", "run", "state", "seed", "new_task", "prior_task", "n",
              *(x for f in DRIFT_FIELDS for x in (f, f"{f}_std")), *(x for f in RUN_FIELDS for x in (f, f"{f}_std")),
              "budget_measure", "budget", *(x for f in BUDGET_FIELDS for x in (f, f"{f}_std")),
              *(x for f in BASE_FIELDS for x in (f, f"{f}_std")), "scoring",
              *(x for f in MARGIN_FIELDS for x in (f, f"{f}_std"))]
DEFINITIONS = [
    "**new stage**: the curriculum's last stage; its task is the new task, every other task "
    "(earlier curriculum tasks and eval-only tasks) is a prior task.",
    "**before**: a prior task's accuracy at the new stage's `stage_start` eval. **min**: the lowest "
    "accuracy in the stage (start included), at **step** (global). **final**: its last eval.",
    "**max drop** = before - min; **final drop** = before - final; **recovery** = final - min.",
    "**base**: a prior task's accuracy at its first eval in the run (the base model, before any stage); "
    "**max drop (base)** = base - the lowest accuracy of the whole run; **final drop (base)** = base - final. "
    "They show drift during earlier stages, which the new stage's **before** already includes.",
    "Units: accuracies in percent, drops, gains, area and BWT in percentage points (summary.json and "
    "summary.csv hold fractions of 1).",
    "**95% (paired)**: one run's sampling margin of a drop, 1.96 sd(d)/sqrt(n) over the per-item differences "
    "d = before - after on the same eval items (evals.jsonl `correct`); shown where the rows carry them.",
    "**area** = trapezoid integral of max(0, before - accuracy) over the stage's eval steps, divided by the "
    "steps covered: the mean drop over the stage, in accuracy units.",
    "**new-task gain** = the new task's final accuracy minus its accuracy at the stage start.",
    "**ACC / BWT** (GEM): R[i][j] = accuracy on curriculum task j at the end of stage i; ACC = mean_j "
    "R[T-1][j]; BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (undefined with one stage).",
    "**|θ-θ0|/pred**: final distance from the initial weights over the random walk's expected length "
    "alpha*k*sqrt(T*D/N) (no AWD) or, with AWD-L2 (c = alpha*lambda, pulling after each update), "
    "alpha*k*(1-c)*sqrt(D/N*(1-(1-c)^(2T))/(2c-c^2)); k = sqrt(N/(N-1)) with antithetic pairs (a pair's two "
    "z-scores are anti-correlated, which lengthens the z-scored step), 1 without.",
    "**Verdict**: drawn only between groups that differ in one setting; n=1 seed gives no spread and no claim.",
    "Groups: runs whose configs agree on every key that differs somewhere (seeds aside); mean ± sample std.",
    "**At equal cost**: every group read at the cheapest group's mean cost of the new stage (`--budget`); each "
    "run at the last eval within it, with gain and drops computed over the evals up to there.",
]


def _run_values(run: dict[str, Any]) -> dict[str, Any]:
    theta = run["theta"]
    return {"new_task_gain": run["new_task_gain"]["gain"], "new_task_final": run["new_task_gain"].get("final"),
            "acc": run["gem"]["acc"], "bwt": run["gem"]["bwt"],
            "theta_final": theta["final"], "theta_pred": theta["pred"], "theta_ratio": theta["ratio"],
            "theta_ratio_free": theta["ratio_free"], **run["compute"],
            **{f"new_stage_{k}": v for k, v in run["compute_new_stage"].items()}}


def _budget_values(budget: dict[str, Any] | None, label: str, task: str | None) -> dict[str, Any]:
    """The equal-cost columns of one group row (mean and std over its seeds), empty without that view."""
    group = next((g for g in (budget or {}).get("groups", []) if g["label"] == label), None)
    if group is None:
        return {}
    drift = group["prior"].get(task, {}) if task else {}
    values = {"budget_measure": budget["measure"], "budget": budget["budget"]}
    for name, agg in (("budget_steps_in_stage", group["steps_in_stage"]),
                      ("budget_new_task_gain", group["new_task_gain"]),
                      ("budget_max_drop", drift.get("max_drop")), ("budget_final_drop", drift.get("final_drop"))):
        values[name], values[f"{name}_std"] = (agg or {}).get("mean"), (agg or {}).get("std")
    return values


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for g in summary["groups"]:
        base = {"level": "group", "group": g["label"], "state": " ".join(f"{k}={v}" for k, v in g["states"].items()),
                "new_task": g["new_task"], "n": g["n_runs"]}
        for f in RUN_FIELDS:
            agg = g.get(f) or {}
            base[f], base[f"{f}_std"] = agg.get("mean"), agg.get("std")
        for task in g["prior"] or [None]:
            row = dict(base, prior_task=task, **_budget_values(summary.get("equal_budget"), g["label"], task),
                       scoring=g.get("scoring", {}).get(task) if task else None)
            for f in (*DRIFT_FIELDS, *BASE_FIELDS, *MARGIN_FIELDS) if task else ():
                agg = g["prior"][task].get(f) or {}
                row[f], row[f"{f}_std"] = agg.get("mean"), agg.get("std")
            rows.append(row)
    for r in summary["runs"]:
        base = {"level": "run", "group": r["group"], "run": r["name"], "state": r["state"], "seed": r["seed"],
                "new_task": r["new_task"], "n": 1, **_run_values(r)}
        for task in r["prior"] or [None]:
            drift = (r["prior"].get(task) or {}) if task else {}
            rows.append(dict(base, prior_task=task, scoring=r.get("scoring", {}).get(task) if task else None,
                             **{f: drift.get(f) for f in (*DRIFT_FIELDS, *BASE_FIELDS, *MARGIN_FIELDS)}))
    return rows


def _csv_value(value: Any) -> Any:
    """Empty for null; floats rounded to 10 decimals so 0.1 + 0.2 reads 0.3."""
    if value is None:
        return ""
    return round(value, 10) if isinstance(value, float) else value


def to_csv(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_HEADER, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(summary):
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(finite_or_null(summary), indent=2, allow_nan=False, default=str)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(data: TableData) -> str:
    lines = [f"### {data.title}", "", "| " + " | ".join(_md_cell(h) for h in data.headers) + " |",
             "|" + "|".join("---" for _ in data.headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in data.rows]
    lines += [""] + [f"_{_md_cell(n)}_  " for n in data.notes]
    return "\n".join(lines) + "\n"


def _header(summary: dict[str, Any]) -> list[str]:
    keys = ", ".join(summary["group_keys"]) or "(nothing differs: one group)"
    runs = summary["runs"]
    not_done = [f"{r['name']} ({r['state']})" for r in runs if r["state"] != "done"]
    lines = [f"Generated {summary.get('generated', '')} from {', '.join(summary.get('paths', []))}.",
             f"{len(runs)} runs in {len(summary['groups'])} groups, grouped by: {keys}."]
    if summary.get("task_filter"):
        lines.append(f"Prior tasks filtered to: {summary['task_filter']}.")
    if not_done:
        lines.append("Not finished (included, marked): " + ", ".join(not_done) + ".")
    lines += [f"{note}." for note in lone_seed_note(summary)]
    return lines


def to_markdown(summary: dict[str, Any], plots: dict[str, str]) -> str:
    parts = ["# Drift report", "", *(line + "  " for line in _header(summary)), ""]
    if summary.get("verdict"):
        parts += ["## Verdict", "", *(f"- {_md_cell(line)}" for line in summary["verdict"]), ""]
    if summary.get("messages"):
        parts += ["## Warnings", "", *(f"- {_md_cell(m)}" for m in summary["messages"]), ""]
    parts += ["## Tables", ""] + [md_table(t) for t in all_tables(summary)]
    parts += ["## Plots", ""] + [f"### {title}\n\n![{title}]({name})\n" for name, title in plots.items()]
    parts += ["## Accuracy matrices (GEM)", ""] + [md_table(gem_table(r)) for r in summary["runs"]]
    parts += ["## Definitions", "", *(f"- {d}" for d in DEFINITIONS), ""]
    return "\n".join(parts)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
.note{color:#555;font-size:.85em;margin:.1em 0}.warn{color:#a40}img{max-width:100%;border:1px solid #eee}
.done{color:#070}.running{color:#a70}.failed{color:#c00;font-weight:bold}.partial{color:#909}"""


def html_table(data: TableData) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in data.headers)
    body = []
    for row in data.rows:
        cells = []
        for header, cell in zip(data.headers, row):
            cls = f' class="{esc(cell)}"' if header == "state" else ""
            cells.append(f"<td{cls}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in data.notes)
    return f"<h3>{esc(data.title)}</h3><table><tr>{head}</tr>{''.join(body)}</table>{notes}"


def _md_to_html_inline(text: str) -> str:
    """The definitions' **bold** and `code` marks, escaped."""
    out = html.escape(text)
    while out.count("**") >= 2:
        out = out.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while out.count("`") >= 2:
        out = out.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return out


def to_html(summary: dict[str, Any], plots: dict[str, str], out: Path) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title><style>{CSS}</style>",
             "</head><body><h1>Drift report</h1>", *(f"<p>{esc(line)}</p>" for line in _header(summary))]
    if summary.get("verdict"):
        parts.append("<h2>Verdict</h2><ul>" + "".join(f"<li>{esc(v)}</li>" for v in summary["verdict"]) + "</ul>")
    if summary.get("messages"):
        items = "".join(f"<li>{esc(m)}</li>" for m in summary["messages"])
        parts.append(f'<h2>Warnings</h2><ul class="warn">{items}</ul>')
    parts += ["<h2>Tables</h2>", *(html_table(t) for t in all_tables(summary)), "<h2>Plots</h2>"]
    for name, title in plots.items():
        data = base64.b64encode((out / name).read_bytes()).decode("ascii")
        parts.append(f"<h3>{esc(title)}</h3><img alt='{esc(title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Accuracy matrices (GEM)</h2>")
    parts += [html_table(gem_table(r)) for r in summary["runs"]]
    parts.append("<h2>Definitions</h2><ul>" + "".join(f"<li>{_md_to_html_inline(d)}</li>" for d in DEFINITIONS))
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write_files(summary: dict[str, Any], plots: dict[str, str], out: Path) -> list[Path]:
    """Write the four text outputs into `out` (the PNGs are already there); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": to_json(summary), "summary.csv": to_csv(summary),
             "report.md": to_markdown(summary, plots), "report.html": to_html(summary, plots, out)}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files]
