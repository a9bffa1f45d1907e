"""`esft drift-report`: load runs, group them, compute the drift metrics, write the files, show the tables.

The only module of esft.report that prints. Standard output carries the result in the chosen format (rich
tables, or the summary as JSON or CSV, so `--format json | jq` works); every warning (a path without runs, a
corrupt JSONL line, an unreadable file) is one line on standard error, and the report still covers the rest.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
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
from esft.report.verdict import verdict

FORMATS = ("table", "json", "csv")
PREFIX = "esft drift-report"
REPORT_DIR = "drift-report"
#: the files a report writes beside its PNGs; any of them in the output folder means a report is already there
REPORT_FILES = ("summary.json", "summary.csv", "report.md", "report.html")
_SLUG_MAX = 60


def _err(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def _slug(raw: str) -> str:
    """A folder-name-safe form of one input's last component (`*` and other glob marks dropped)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", Path(raw).name).strip("_.") or "all"


def default_out(paths: list[str]) -> Path:
    """A report folder of its own for each input, so two sweeps never share (and overwrite) one report.

    One directory given as is (a sweep root or a run dir): `<it>/drift-report/`. Several paths or a glob:
    `drift-report-<their names>/` in the deepest folder holding them all, the names joined by `+` (shortened
    with a hash of the full list when long), e.g. `outputs/drift-report-12-00-00+13-30-00`.
    """
    found, _ = expand(paths)
    if len(paths) == 1 and not glob.has_magic(paths[0]) and found and found[0].is_dir():
        return found[0].resolve() / REPORT_DIR
    resolved = [p.resolve() for p in found] or [Path(raw).resolve() for raw in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    slug = "+".join(dict.fromkeys(_slug(raw) for raw in paths))
    if len(slug) > _SLUG_MAX:
        digest = hashlib.sha1("\0".join(sorted(str(p) for p in resolved)).encode()).hexdigest()[:8]
        slug = f"{slug[:_SLUG_MAX - 9]}-{digest}"
    return common / f"{REPORT_DIR}-{slug}"


def existing_report(out_dir: Path) -> list[str]:
    """The report files already in `out_dir` (a report must not silently replace another)."""
    return [name for name in REPORT_FILES if (out_dir / name).exists()]


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
    summary = {**header, **summary}
    summary["verdict"] = verdict(summary)
    return summary, curves, messages


def drift_report(
    paths: list[str],
    out: str | None,
    group_by: list[str] | None,
    task: str | None,
    fmt: str,
    console: Console,
    budget: str = "compute_tokens",
    force: bool = False,
) -> int:
    """Report on the runs under `paths`; returns the exit code (0 ok, 2 with one line on stderr).
    An earlier report in the output folder is replaced only with `force`."""
    if fmt not in FORMATS:
        _err(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
        return 2
    if budget not in (*BUDGET_MEASURES, "none"):
        _err(f"--budget {budget}: choose one of {', '.join(BUDGET_MEASURES)}, none")
        return 2
    if not paths:
        _err("give at least one run dir, sweep root or glob")
        return 2
    out_dir = Path(out) if out else default_out(paths)
    if not force and existing_report(out_dir):
        _err(f"{out_dir} already holds a report ({', '.join(existing_report(out_dir))}); add --force to replace "
             "it, or --out DIR to write elsewhere")
        return 2
    try:
        summary, curves, warnings = build(paths, group_by, task, None if budget == "none" else budget)
    except EsftError as exc:
        _err(str(exc))
        return 2
    for message in warnings:
        _err(f"warning: {message}")
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
        if summary["verdict"]:
            console.print("Verdict", style="bold", highlight=False)
            for line in summary["verdict"]:
                console.print(f"  {line}", highlight=False, markup=False)
            console.print()
        for table in all_tables(summary):
            console.print(to_rich(table))
            console.print()
        console.print(written, highlight=False, markup=False)
        return 0
    _err(written)
    return 0
