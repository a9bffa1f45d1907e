"""`esft drift-report ... --to tensorboard|wandb|mlflow`: a finished report's tables and plots to a tracker.

The report's files are the source (summary.json -> the same tables as report.md; the PNG plots), so what the
tracker shows is what the report says. Each tracker gets them where the sweep's curves already are: the
tracker settings saved by the runs (trackers.json: W&B project and group, MLflow store and experiment) are
reused when the runs were tracked, so the drift table sits beside the curves; otherwise the same local
defaults as a run (W&B offline under the report dir, MLflow file store under the report dir).

    tensorboard   text entries `drift_report/<table>` (markdown tables) and images `drift_report/<plot>`,
                  event files in <report dir>/tensorboard
    wandb         a run named `drift-report` (job_type drift-report): one wandb.Table per table, one
                  wandb.Image per plot
    mlflow        a run named `drift-report`: one table artifact per table (MLflow's table view), the plots,
                  report.html and summary.csv as artifacts
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.tracking.context import STATE_FILE
from esft.tracking.registry import TRACKERS, check_trackers
from esft.tracking.wandb_records import wait_until_written

log = logging.getLogger("esft")
RUN_NAME = "drift-report"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "table"


def report_content(out_dir: Path) -> tuple[list[Any], list[Path]]:
    """(tables, plot files) of a written report; EsftError if `out_dir` holds none."""
    from esft.report.tables import all_tables

    summary_file = out_dir / "summary.json"
    if not summary_file.exists():
        raise EsftError(f"{out_dir} holds no drift report (no summary.json) to publish")
    summary = json.loads(summary_file.read_text())
    return all_tables(summary), sorted(out_dir.glob("*.png"))


def saved_settings(paths: list[str]) -> dict[str, dict[str, Any]]:
    """The trackers.json of the first tracked run under `paths` (run dirs, sweep roots or globs)."""
    from esft.report.load import expand

    found, _ = expand(paths)
    for root in found:
        candidates = [root / STATE_FILE] if (root / STATE_FILE).exists() else sorted(root.glob(f"*/{STATE_FILE}"))
        for path in candidates:
            return json.loads(path.read_text())
    return {}


def check_targets(targets: list[str]) -> str | None:
    """One line saying why `--to` cannot work (unknown tracker, library not installed), or None."""
    unknown = [t for t in targets if t not in TRACKERS]
    if unknown:
        return f"--to {unknown[0]}: choose one of {', '.join(TRACKERS)}"
    try:
        check_trackers({"logger": {"extra": list(targets)}})
    except EsftError as exc:
        return str(exc)
    return None


def publish_report(out_dir: Path, targets: list[str], paths: list[str]) -> list[str]:
    """Publish the report in `out_dir` to each target; returns one line per target saying where it went."""
    problem = check_targets(targets)
    if problem:
        raise EsftError(problem)
    tables, plots = report_content(out_dir)
    saved = saved_settings(paths)
    publishers = {"tensorboard": _to_tensorboard, "wandb": _to_wandb, "mlflow": _to_mlflow}
    return [publishers[t](out_dir, tables, plots, saved.get(t, {})) for t in dict.fromkeys(targets)]


def _markdown(table: Any) -> str:
    from esft.report.render import md_table

    return md_table(table)


def _to_tensorboard(out_dir: Path, tables: list[Any], plots: list[Path], saved: dict[str, Any]) -> str:
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    log_dir = out_dir / "tensorboard"
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for table in tables:
            writer.add_text(f"drift_report/{_slug(table.title)}", _markdown(table))
        for plot in plots:
            image = matplotlib.image.imread(str(plot))[..., :3]  # RGBA PNG -> RGB floats in [0, 1]
            writer.add_image(f"drift_report/{plot.stem}", image, dataformats="HWC")
    return f"tensorboard: {len(tables)} tables, {len(plots)} plots in {log_dir} (tensorboard --logdir {log_dir})"


def _to_wandb(out_dir: Path, tables: list[Any], plots: list[Path], saved: dict[str, Any]) -> str:
    import wandb

    mode = os.environ.get("WANDB_MODE") or "offline"
    run = wandb.init(project=saved.get("project", "esft"), group=saved.get("group"), name=RUN_NAME,
                     job_type=RUN_NAME, dir=str(out_dir), mode=mode, reinit="create_new",
                     settings=wandb.Settings(console="off", silent=True))
    try:
        payload: dict[str, Any] = {f"drift_report/{_slug(t.title)}": wandb.Table(columns=t.headers, data=t.rows)
                                   for t in tables}
        payload.update({f"drift_report/{p.stem}": wandb.Image(str(p)) for p in plots})
        run.log(payload)
    finally:
        run.finish()
    wait_until_written(out_dir / "wandb", run.id, 30.0)  # finish() returns before the log is on disk
    where = f"{out_dir / 'wandb'} (offline; upload with `wandb sync {out_dir / 'wandb'}/offline-run-*`)" \
        if mode == "offline" else f"project {run.project}"
    return f"wandb: {len(tables)} tables, {len(plots)} plots in run {run.id}, {where}"


def _to_mlflow(out_dir: Path, tables: list[Any], plots: list[Path], saved: dict[str, Any]) -> str:
    from mlflow.tracking import MlflowClient

    uri = saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        uri = out_dir.resolve().joinpath("mlruns").as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # esft's local default (see tracking/mlflow.py)
    client = MlflowClient(tracking_uri=uri)
    name = saved.get("experiment") or "esft"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    run_id = client.create_run(experiment_id, run_name=RUN_NAME, tags={"esft.kind": RUN_NAME}).info.run_id
    try:
        for table in tables:
            columns = {header: [row[i] for row in table.rows] for i, header in enumerate(table.headers)}
            client.log_table(run_id, data=columns, artifact_file=f"drift_report/{_slug(table.title)}.json")
        for path in [*plots, out_dir / "report.html", out_dir / "summary.csv"]:
            if path.exists():
                client.log_artifact(run_id, str(path), artifact_path="drift_report")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return f"mlflow: {len(tables)} tables, {len(plots)} plots in run {run_id} of experiment {name!r} at {uri}"
