"""`drift_report` end to end over fabricated run dirs: the files it writes, its messages and exit codes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from esft.report.command import drift_report
from esft.storage.rundir import EVALS_FILE, RUN_INFO_FILE

PNGS = ["prior_accuracy.png", "new_task_accuracy.png", "theta_drift.png", "drop_vs_cost.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report(paths: list[Path | str], out: Path | None = None, fmt: str = "table", group_by=None, task=None,
           budget: str = "compute_tokens", force: bool = False):
    console = Console(file=io.StringIO(), width=220, color_system=None)
    code = drift_report([str(p) for p in paths], str(out) if out else None, group_by, task, fmt, console, budget,
                        force=force)
    return code, console.file.getvalue()


SWEEP_JOBS = [dict(lam=0.0), dict(lam=1.0, state="running", until=8, theta_final=0.1)]


@pytest.fixture
def sweep(make_sweep) -> Path:
    """A 2-point multirun (awd.lambda=0 vs 1), the second job still running."""
    return make_sweep("multirun", SWEEP_JOBS)


@pytest.fixture(scope="module")
def rendered(fabricate, tmp_path_factory):
    """One report over the 2-point sweep, shared by the tests that only read its files."""
    root = fabricate.sweep(tmp_path_factory.mktemp("rendered") / "multirun", SWEEP_JOBS)
    out = root.parent / "report"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code, stdout = report([root], out)
    return code, out, stdout, stderr.getvalue()


def test_sweep_root_renders_every_file(rendered) -> None:
    code, out, stdout, stderr = rendered
    assert code == 0
    for name in ["summary.json", "summary.csv", "report.md", "report.html", *PNGS]:
        assert (out / name).stat().st_size > 0, name
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_keys"] == ["awd.lambda"]
    assert [g["label"] for g in summary["groups"]] == ["awd.lambda=0", "awd.lambda=1"]
    assert [r["state"] for r in summary["runs"]] == ["done", "running"]
    assert summary["groups"][0]["prior"]["add"]["max_drop"]["mean"] == pytest.approx(0.6)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<style>" in html and 'src="http' not in html
    assert 'class="running"' in html
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in PNGS) and "awd.lambda=1" in md and "(running)" in md
    # the terminal: rich tables naming groups and marking the running run
    assert "Prior-task drift" in stdout and "awd.lambda=1" in stdout and "running" in stdout
    assert stderr == ""
    # equal cost: the running job's 4 new-stage steps x 1000 tokens; the finished job is read at step 8 too
    budget = summary["equal_budget"]
    assert budget["measure"] == "compute_tokens" and budget["budget"] == 4000
    assert [g["steps_in_stage"]["mean"] for g in budget["groups"]] == [4, 4]
    assert budget["groups"][0]["prior"]["add"]["max_drop"]["mean"] == pytest.approx(0.6)  # 0.9 -> 0.3 at step 8
    assert "At equal cost of the new stage (4k compute_tokens)" in stdout and "At equal cost" in md


def test_csv_has_group_and_run_rows(rendered) -> None:
    rows = list(csv.DictReader((rendered[1] / "summary.csv").open()))
    group_add = [r for r in rows if r["level"] == "group" and r["prior_task"] == "add"]
    assert [r["group"] for r in group_add] == ["awd.lambda=0", "awd.lambda=1"]
    assert float(group_add[0]["max_drop"]) == pytest.approx(0.6)
    # the equal-cost view: both groups read after 4 new-stage steps (the running job's 4000 tokens)
    assert group_add[0]["budget_measure"] == "compute_tokens" and float(group_add[0]["budget"]) == 4000
    assert float(group_add[0]["budget_steps_in_stage"]) == 4
    assert float(group_add[0]["budget_max_drop"]) == pytest.approx(0.6)
    run_rows = [r for r in rows if r["level"] == "run"]
    assert {r["prior_task"] for r in run_rows} == {"add", "subtract"} and len(run_rows) == 4
    assert float(run_rows[0]["acc"]) == pytest.approx(0.75)


def test_default_out_is_a_folder_per_input_and_never_overwritten(make_sweep, make_run, tmp_path: Path,
                                                                  capsys) -> None:
    first, second = make_sweep("day/12-00-00", SWEEP_JOBS), make_sweep("day/13-30-00", SWEEP_JOBS[:1])
    assert report([first])[0] == 0 and report([second])[0] == 0  # two sweeps of one day: two reports
    assert (first / "drift-report" / "report.html").exists() and (second / "drift-report" / "report.html").exists()
    stamp = (first / "drift-report" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    code, stdout = report([first])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and stdout == "" and len(err) == 1
    assert err[0].startswith(f"esft drift-report: {first / 'drift-report'} already holds a report")
    assert "--force" in err[0] and (first / "drift-report" / "summary.json").stat().st_mtime_ns == stamp
    assert report([first], force=True)[0] == 0
    # several inputs: one folder named after them, beside them
    a, b = make_run("runs/a"), make_run("runs/b", seed=1)
    assert report([a, b])[0] == 0 and (tmp_path / "runs" / "drift-report-a+b" / "report.md").exists()
    code, _ = report([a, b], tmp_path / "runs" / "drift-report-a+b")  # an explicit --out is protected too
    assert code == 2 and "already holds a report" in capsys.readouterr().err


def test_json_and_csv_formats_print_only_data(sweep: Path, tmp_path: Path, capsys) -> None:
    code, stdout = report([sweep], tmp_path / "j", fmt="json")
    assert code == 0 and json.loads(stdout)["groups"][1]["states"] == {"running": 1}
    assert "wrote" in capsys.readouterr().err
    code, stdout = report([sweep], tmp_path / "c", fmt="csv")
    assert code == 0 and stdout.startswith("level,group,run,")


def test_task_filter_and_group_by(sweep: Path, tmp_path: Path, capsys) -> None:
    code, _ = report([sweep], tmp_path / "t", fmt="table", task="subtract", group_by=["awd.kind"])
    assert code == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["awd.kind=l2"]  # both jobs in one group
    assert list(summary["groups"][0]["prior"]) == ["subtract"]
    code, _ = report([sweep], tmp_path / "u", task="nope")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["esft drift-report: --task nope is not a prior task of any run "
                                 "(prior tasks: add, subtract)"]


def test_empty_directory_gives_one_clear_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, stdout = report([tmp_path / "empty"], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and stdout == "" and len(err) == 1
    assert err[0].startswith(f"esft drift-report: no runs found under {tmp_path / 'empty'}")
    assert not (tmp_path / "out").exists()


def test_empty_path_beside_runs_is_a_warning(make_run, tmp_path: Path, capsys) -> None:
    run = make_run("r")
    (tmp_path / "empty").mkdir()
    code, _ = report([run, tmp_path / "empty", tmp_path / "missing-*"], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and (tmp_path / "out" / "report.html").exists()
    assert err == [f"esft drift-report: warning: {tmp_path / 'missing-*'}: the pattern matches no path",
                   f"esft drift-report: warning: {tmp_path / 'empty'}: no runs found (a run dir holds "
                   ".hydra/config.yaml, metrics.jsonl or evals.jsonl)"]


def test_truncated_jsonl_is_named_and_the_rest_reported(make_run, tmp_path: Path, capsys) -> None:
    run = make_run("r", state="running")
    with open(run / EVALS_FILE, "a") as handle:
        handle.write('{"step": 12, "stage": 1, "task": "add", "accur')  # killed mid-write
    code, _ = report([run], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    lines = len((run / EVALS_FILE).read_text().splitlines())
    assert code == 0 and len(err) == 1
    assert err[0].startswith(f"esft drift-report: warning: {run / EVALS_FILE}: line {lines} is not valid JSON")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"][0]["prior"]["add"]["max_drop"] == pytest.approx(0.6)
    assert summary["messages"] == [e.removeprefix("esft drift-report: warning: ") for e in err]
    assert "line" in (tmp_path / "out" / "report.md").read_text()


def test_failed_and_statusless_runs_are_marked(make_run, tmp_path: Path) -> None:
    runs = [make_run("a", seed=0), make_run("b", seed=1, state="failed", until=6, message="killed: OOM"),
            make_run("c", seed=2, state=None, until=3)]
    code, stdout = report(runs, tmp_path / "out")
    assert code == 0 and "failed" in stdout and "partial" in stdout and "killed: OOM" in stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["groups"][0]["states"] == {"done": 1, "failed": 1, "partial": 1}
    c = summary["runs"][2]
    assert c["prior"]["add"] is None and c["new_task_gain"]["gain"] is None  # never reached the new stage


def test_a_value_of_the_wrong_type_costs_that_value_only(make_run, tmp_path: Path, capsys) -> None:
    good, bad = make_run("good"), make_run("bad", seed=1)
    with open(bad / EVALS_FILE, "a") as handle:
        handle.write('{"step": 10, "stage": 1, "task": "add", "accuracy": "high"}\n')
    code, _ = report([good, bad], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    lines = len((bad / EVALS_FILE).read_text().splitlines())
    assert code == 0 and err == [f"esft drift-report: warning: {bad / EVALS_FILE}: line {lines}: accuracy is not a "
                                 "finite number; that value ignored"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["good", "bad"] and summary["groups"][0]["n_runs"] == 2


def test_a_run_whose_records_cannot_be_used_is_left_out(make_run, tmp_path: Path, capsys) -> None:
    good, bad = make_run("good"), make_run("bad", seed=1)
    (bad / RUN_INFO_FILE).write_text(json.dumps({"stages": [{"index": 0}, {"index": 1}]}))  # stages without tasks
    code, _ = report([good, bad], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and len(err) == 1 and f"{bad}: cannot compute its metrics" in err[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["good"] and summary["groups"][0]["n_runs"] == 1


def test_a_glob_over_runs_skips_the_report_beside_them(make_run, tmp_path: Path, capsys) -> None:
    make_run("a"), make_run("b", seed=1)
    assert report([tmp_path / "*"])[0] == 0 and (tmp_path / "drift-report-all" / "report.md").exists()
    capsys.readouterr()
    code, _ = report([tmp_path / "*"], force=True)  # now the glob matches drift-report-all/ too
    assert code == 0 and capsys.readouterr().err.count("warning") == 0


def test_budget_measure_is_checked_and_can_be_switched_off(sweep: Path, tmp_path: Path, capsys) -> None:
    code, _ = report([sweep], tmp_path / "b", budget="flops")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["esft drift-report: --budget flops: choose one of compute_tokens, "
                                 "population_evals, seconds, none"]
    code, stdout = report([sweep], tmp_path / "n", budget="none")
    assert code == 0 and "At equal cost" not in stdout
    assert json.loads((tmp_path / "n" / "summary.json").read_text())["equal_budget"] is None


def test_non_finite_numbers_and_a_corrupt_middle_line_never_stop_the_report(make_run, tmp_path: Path,
                                                                             capsys) -> None:
    run = make_run("r")
    lines = (run / EVALS_FILE).read_text().splitlines()
    middle = len(lines) // 2
    lines.insert(middle, '{"step": 6, "stage": 1, "task": "add", "accur')  # torn, with valid rows after it
    lines.append('{"step": 1e999, "stage": 1, "task": "add", "accuracy": 0.0}')  # infinity where a step goes
    lines.append('{"step": 10, "stage": 1, "task": "reverse", "accuracy": NaN}')
    (run / EVALS_FILE).write_text("\n".join(lines) + "\n")
    code, _ = report([run], tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    path = run / EVALS_FILE
    assert code == 0 and len(err) == 3
    assert err[0].startswith(f"esft drift-report: warning: {path}: line {middle + 1} is not valid JSON (")
    assert err[1:] == [
        f"esft drift-report: warning: {path}: line {len(lines) - 1}: step is inf, not an integer; line skipped",
        f"esft drift-report: warning: {path}: line {len(lines)}: accuracy is not a finite number; that value ignored",
    ]
    m = json.loads((tmp_path / "out" / "summary.json").read_text())["runs"][0]
    assert m["prior"]["add"]["max_drop"] == pytest.approx(0.6)  # every valid row, those after the torn one too
    assert m["new_task_gain"]["final"] == pytest.approx(0.9)  # the NaN row's accuracy ignored, not a new final


def test_units_final_accuracy_and_one_seed_are_stated(rendered) -> None:
    code, out, stdout, _ = rendered
    # add: max drop 0.6 -> 60.0 percentage points; reverse ends at 90.0% (gain 40.0 points)
    assert "60.0" in stdout and "new-task final %" in stdout and "90.0" in stdout
    assert not re.search(r"\b0\.600\b", stdout)  # no fraction left on screen (0.6000 is |θ-θ0|, not a drop)
    md = (out / "report.md").read_text()
    assert "n=1 seed in every group: no spread, no claim" in md and "n=1 seed in every group" in stdout
    assert md.index("## Verdict") < md.index("## Tables")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][0]["new_task_final"]["mean"] == pytest.approx(0.9)  # the JSON keeps fractions
    assert summary["groups"][0]["prior"]["add"]["max_drop"]["mean"] == pytest.approx(0.6)


def test_verdict_compares_groups_that_differ_in_one_setting(make_sweep, tmp_path: Path) -> None:
    calm = {"add": [0.2, 0.6, 0.9, 0.9, 0.85, 0.89], "reverse": [0.5, 0.5, 0.5, 0.6, 0.8, 0.95],
            "subtract": [0.8, 0.8, 0.8, 0.8, 0.8, 0.8]}
    root = make_sweep("v", [dict(lam=0.0), dict(lam=0.0, seed=1), dict(lam=1.0, curves=calm),
                            dict(lam=1.0, seed=1, curves=calm)])
    code, stdout = report([root], tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["verdict"] == [
        "awd.lambda=1 (vs 0) cut the max drop of add from 60.0 to 5.0 points in the new stage (never below the "
        "base model in either) (n=2 seeds each; the gap is larger than the two seed spreads added)",
        "awd.lambda=1 (vs 0) cut the max drop of subtract from 10.0 to 0.0 points in the new stage (10.0 -> 0.0 "
        "from the base model) (n=2 seeds each; the gap is larger than the two seed spreads added)",
        "awd.lambda=1 (vs 0): new task reverse ended at 95.0% vs 90.0%, gain 45.0 vs 40.0 points (n=2 seeds each; "
        "the gap is larger than the two seed spreads added)",
    ]
    assert stdout.startswith("Verdict\n  awd.lambda=1 (vs 0) cut the max drop of add from 60.0 to 5.0")


def test_scoring_mode_is_a_column_only_when_logged(make_run, tmp_path: Path) -> None:
    run = make_run("r")
    code, stdout = report([run], tmp_path / "plain")
    assert code == 0 and "scoring ┃" not in stdout and "scored by" not in stdout
    rows = [json.loads(line) for line in (run / EVALS_FILE).read_text().splitlines()]
    for row in rows:
        row["scoring"] = "loglik" if row["task"] == "subtract" else "generate"
    (run / EVALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout = report([run], tmp_path / "scored")
    assert code == 0 and "scoring ┃" in stdout and "loglik" in stdout
    assert "new task reverse scored by: generate" in stdout
    csv_rows = list(csv.DictReader((tmp_path / "scored" / "summary.csv").open()))
    assert {r["prior_task"]: r["scoring"] for r in csv_rows if r["level"] == "run"} == {"add": "generate",
                                                                                        "subtract": "loglik"}


def test_paired_margins_are_columns_only_when_evals_carry_outcomes(make_run, tmp_path: Path) -> None:
    run = make_run("r")
    code, stdout = report([run], tmp_path / "plain")
    assert code == 0 and "(paired)" not in stdout
    rows = [json.loads(line) for line in (run / EVALS_FILE).read_text().splitlines()]
    for row in rows:  # subtract: 0.8 at the new stage's start (step 4), 0.8 at its end: two items swap
        if row["task"] == "subtract" and row["step"] in (4, 10):
            row["correct"] = "1111111100" if row["step"] == 4 else "0111111110"
    (run / EVALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout = report([run], tmp_path / "paired")
    assert code == 0 and "final drop 95% (paired)" in stdout
    csv_rows = list(csv.DictReader((tmp_path / "paired" / "summary.csv").open()))
    margins = {r["prior_task"]: r["final_drop_margin"] for r in csv_rows if r["level"] == "run"}
    # d = [1, 0 x 7, -1, 0]: mean 0, sample variance 2/9
    assert margins["add"] == "" and float(margins["subtract"]) == pytest.approx(1.96 * (2 / 9 / 10) ** 0.5)
