"""`esft drift-report`: load runs, group them, compute the drift metrics, write the files, show the tables.

The only module of esft.report that prints. Standard output carries the result in the chosen format (rich
tables, or the summary as JSON or CSV, so `--format json | jq` works); every warning (a path without runs, a
corrupt JSONL line, an unreadable file) is one line on standard error, and the report still covers the rest.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from esft.errors import EsftError
from esft.report.grouping import group_runs
from esft.report.load import Run, expand, load_runs
from esft.report.metrics import BUDGET_MEASURES, prior_tasks, stages, summarize
from esft.report.plots import save_plots
from esft.report.render import to_csv, to_json, write_files
from esft.report.tables import all_tables, to_rich

FORMATS = ("table", "json", "csv")
PREFIX = "esft drift-report"


def _err(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def default_out(paths: list[str]) -> Path:
    """`drift-report/` beside the first path (the first match of a glob)."""
    found, _ = expand(paths[:1])
    first = found[0] if found else Path(paths[0])
    return first.resolve().parent / "drift-report"


def check_task(task: str, runs: list[Run]) -> None:
    known = list(dict.fromkeys(t for run in runs for t in prior_tasks(run, stages(run))))
    if task not in known:
        raise EsftError(f"--task {task} is not a prior task of any run (prior tasks: {', '.join(known) or 'none'})")


def build(paths: list[str], group_by: list[str] | None, task: str | None,
          budget: str | None = "compute_tokens") -> tuple[dict, dict, list[str]]:
    """(summary, curves, warnings); raises EsftError when nothing can be reported."""
    loaded = load_runs(paths)
    if not loaded.runs:
        raise EsftError(
            f"no runs found under {', '.join(paths)} "
            "(a run dir holds .hydra/config.yaml, metrics.jsonl or evals.jsonl; a sweep root holds job dirs)"
        )
    groups, keys = group_runs(loaded.runs, group_by)
    if task is not None:
        check_task(task, loaded.runs)
    summary, curves = summarize(groups, keys, task, budget)
    messages = loaded.messages + summary.pop("problems")
    header: dict[str, Any] = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "paths": list(paths),
        "messages": messages,
    }
    return {**header, **summary}, curves, messages


def drift_report(
    paths: list[str],
    out: str | None,
    group_by: list[str] | None,
    task: str | None,
    fmt: str,
    console: Console,
    budget: str = "compute_tokens",
) -> int:
    """Report on the runs under `paths`; returns the exit code (0 ok, 2 with one line on stderr)."""
    if fmt not in FORMATS:
        _err(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
        return 2
    if budget not in (*BUDGET_MEASURES, "none"):
        _err(f"--budget {budget}: choose one of {', '.join(BUDGET_MEASURES)}, none")
        return 2
    if not paths:
        _err("give at least one run dir, sweep root or glob")
        return 2
    try:
        summary, curves, warnings = build(paths, group_by, task, None if budget == "none" else budget)
    except EsftError as exc:
        _err(str(exc))
        return 2
    for message in warnings:
        _err(f"warning: {message}")
    out_dir = Path(out) if out else default_out(paths)
    summary["out"] = str(out_dir)
    try:
        plots = save_plots(summary, curves, out_dir)
        files = write_files(summary, plots, out_dir)
    except OSError as exc:
        _err(f"cannot write the report to {out_dir} ({exc.strerror or exc}); choose another --out")
        return 2
    written = f"wrote {len(files) + len(plots)} files to {out_dir} (report.html, report.md, summary.json, ...)"
    if fmt == "json":
        console.file.write(to_json(summary) + "\n")
    elif fmt == "csv":
        console.file.write(to_csv(summary))
    else:
        for table in all_tables(summary):
            console.print(to_rich(table))
            console.print()
        console.print(written, highlight=False, markup=False)
        return 0
    _err(written)
    return 0
