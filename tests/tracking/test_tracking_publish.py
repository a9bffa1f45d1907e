"""`esft drift-report --to ...`: a finished report's tables and plots, read back from each tracker."""

from __future__ import annotations

import json
import sys

from typer.testing import CliRunner

from esft.cli import app
from esft.tracking.wandb_records import history_rows


def _report(run_dir, out, *targets):
    args = ["drift-report", str(run_dir), "--out", str(out), "--format", "json"]
    for target in targets:
        args += ["--to", target]
    return CliRunner().invoke(app, args)


def test_publish_to_every_tracker(tracked_run, tmp_path):
    out = tmp_path / "report"
    result = _report(tracked_run, out, "tensorboard", "wandb", "mlflow")
    assert result.exit_code == 0, result.output
    plots = sorted(p.stem for p in out.glob("*.png"))
    assert plots

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    assert {f"drift_report/{p}" for p in plots} <= set(accumulator.Tags()["images"])
    texts = [t for t in accumulator.Tags()["tensors"] if t.startswith("drift_report/")]
    assert texts and any("drift" in t for t in texts)
    first = accumulator.Tensors(texts[0])[0].tensor_proto.string_val[0].decode()
    assert first.startswith("### ") and "| --- " not in first and "|---|" in first  # a markdown table

    (log,) = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    (row,) = list(history_rows(log))
    assert all(row[f"drift_report/{p}/_type"] == "image-file" for p in plots)
    tables = [k[:-len("/_type")] for k, v in row.items() if v == "table-file"]
    assert tables and all(k.startswith("drift_report/") for k in tables)
    table = json.loads((log.parent / "files" / row[f"{tables[0]}/path"]).read_text())  # the table's own file
    assert table["columns"] and len(table["data"]) == row[f"{tables[0]}/nrows"]

    from mlflow.tracking import MlflowClient

    state = json.loads((tracked_run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=state["tracking_uri"])  # the run's own store: beside its curves
    runs = client.search_runs([client.get_experiment_by_name(state["experiment"]).experiment_id],
                              filter_string="tags.`esft.kind` = 'drift-report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    files = {f.path for f in client.list_artifacts(runs[0].info.run_id, "drift_report")}
    assert {f"drift_report/{p}.png" for p in plots} <= files
    assert "drift_report/report.html" in files and any(f.endswith(".json") for f in files)


def test_missing_tracker_library_is_one_line_before_the_report(tracked_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = CliRunner().invoke(app, ["drift-report", str(tracked_run), "--out", str(tmp_path / "r"),
                                      "--to", "mlflow"])
    assert result.exit_code == 2
    assert "logger mlflow needs the mlflow package: pip install 'esft[mlflow]'" in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_target(tracked_run, tmp_path):
    result = _report(tracked_run, tmp_path / "r", "comet")
    assert result.exit_code == 2 and "--to comet: choose one of tensorboard, wandb, mlflow" in result.output
