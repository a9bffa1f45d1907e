"""`esft drift-report` through the CLI: exit codes and the one-line refusals, as a user meets them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from esft.cli import app
from esft.storage.rundir import EVALS_FILE, METRICS_FILE


def test_non_finite_rows_exit_0_and_an_existing_report_needs_force(make_run, tmp_path: Path) -> None:
    run = make_run("r")
    with open(run / METRICS_FILE, "a") as handle:
        handle.write('{"step": 1e999, "stage": 1, "task": "reverse", "theta_dist": 1.0}\n')
    with open(run / EVALS_FILE, "a") as handle:
        handle.write('{"step": 10, "stage": 1, "task": "add", "accuracy": NaN}\n')
    runner = CliRunner()
    first = runner.invoke(app, ["drift-report", str(run), "--format", "json"])
    assert first.exit_code == 0, first.output
    assert f"{run / METRICS_FILE}: line 11: step is inf, not an integer; line skipped" in first.output
    assert (run / "drift-report" / "report.html").exists()
    again = runner.invoke(app, ["drift-report", str(run)])
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert again.exit_code == 2 and len(lines) == 1 and "already holds a report" in lines[0] and "--force" in lines[0]
    forced = runner.invoke(app, ["drift-report", str(run), "--force", "--format", "csv"])
    assert forced.exit_code == 0 and forced.output.count("level,group,run,") == 1
