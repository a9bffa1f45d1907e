"""The `esft` command. Typer parses; training is handed to Hydra untouched, reporting to esft.report.

`esft train ARGS` rewrites sys.argv to `[esft, *ARGS]` and calls a `hydra.main`-decorated function, so every
Hydra feature works as documented: `key=value` overrides, `-m` sweeps and launchers, `--cfg job`,
`hydra.run.dir=`. Typer must neither parse nor reject those arguments, hence the context settings below.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Continual fine-tuning of LLMs with Evolution Strategies and Anchored Weight Decay.")

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Run a curriculum: `esft train KEY=VALUE... [-m] [--cfg job]` (Hydra overrides; see README)."""
    from esft.commands.train import run_hydra

    if any(arg in ("-h", "--help") for arg in ctx.args):
        from esft.commands.preflight import config_dirs
        from esft.commands.train_help import train_help
        from esft.errors import EsftError
        from esft.resources import conf_dir, overrides_in

        typer.echo(ctx.get_help())
        try:
            dirs = config_dirs(ctx.args, overrides_in(ctx.args))
        except EsftError as exc:
            _fail(str(exc))
        typer.echo("\nAll arguments are Hydra overrides, e.g. `esft train task=reverse awd.lambda=0`, "
                   "`esft train -m awd.lambda=0,1`.\n")
        typer.echo(train_help(conf_dir(), dirs))
        raise typer.Exit(0)
    run_hydra(_expand_resume(list(ctx.args)))


def _expand_resume(args: list[str]) -> list[str]:
    """`--resume DIR` = the overrides DIR was started with, plus `hydra.run.dir=DIR` (Hydra then resumes it)."""
    if "--resume" not in args:
        return args
    index = args.index("--resume")
    if index + 1 >= len(args):
        _fail("--resume needs a run directory")
    run_dir = Path(args[index + 1])
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.exists():
        _fail(f"{run_dir} is not an esft run dir (no .hydra/overrides.yaml)")
    from omegaconf import OmegaConf

    saved = [str(o) for o in OmegaConf.load(overrides_file) if not str(o).startswith("hydra.run.dir=")]
    from esft.resources import overrides_in

    rest = args[:index] + args[index + 2:]
    extra = overrides_in(rest)
    flags = [a for a in rest if a not in extra]
    given_dirs = any(a in ("--config-dir", "-cd") for a in rest) or any(o.startswith("hydra.searchpath=")
                                                                       for o in extra)
    search = [] if given_dirs else _saved_search_path(run_dir)
    return [*flags, *saved, *extra, *search, f"hydra.run.dir={run_dir.resolve()}"]


def _saved_search_path(run_dir: Path) -> list[str]:
    """The user config dirs the run was started with (`--config-dir`, `hydra.searchpath`), which Hydra records
    only in .hydra/hydra.yaml, as one `hydra.searchpath` override: a task kept outside esft resumes too."""
    from omegaconf import OmegaConf

    record = run_dir / ".hydra" / "hydra.yaml"
    if not record.exists():
        return []
    sources = OmegaConf.select(OmegaConf.load(record), "hydra.runtime.config_sources", default=None) or []
    dirs = [str(s.path) for s in sources if s.schema == "file" and s.provider != "main"]
    return [f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]"] if dirs else []


def _fail(message: str) -> None:
    typer.echo(f"esft: error: {message}", err=True)
    raise typer.Exit(2)


@app.command("drift-report")
def drift_report(
    paths: list[str] = typer.Argument(..., help="Run dirs, multirun sweep roots or globs."),
    out: Optional[str] = typer.Option(None, "--out", help="Output dir (default: DIR/drift-report for one dir, else "
                                                           "drift-report-NAMES beside the inputs)."),
    force: bool = typer.Option(False, "--force", help="Replace a report already in the output dir."),
    group_by: Optional[list[str]] = typer.Option(None, "--group-by", help="Config key(s) to group runs by."),
    task: Optional[str] = typer.Option(None, "--task", help="Only report this prior task."),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    budget: str = typer.Option("compute_tokens", "--budget",
                               help="Also compare groups at equal cost of the new stage, measured in "
                                    "compute_tokens | population_evals | seconds; none: skip."),
    to: Optional[list[str]] = typer.Option(None, "--to", help="Also publish the report's tables and plots to "
                                                               "tensorboard | wandb | mlflow (repeatable)."),
) -> None:
    """Tables, plots and a report of prior-task drift from finished (or running) runs."""
    from rich.console import Console

    from esft.report.command import drift_report as run_report
    from esft.report.publish import check_targets

    console = Console() if sys.stdout.isatty() else Console(width=160)  # files and pipes: don't squeeze tables
    if to and (problem := check_targets(to)):  # a missing tracker library: say so before any work
        typer.echo(f"esft drift-report: {problem}", err=True)
        raise typer.Exit(2)
    code = run_report(paths, out, group_by, task, fmt, console, budget, force=force)
    if code == 0 and to:
        code = _publish(paths, out, to)
    raise typer.Exit(code)


def _publish(paths: list[str], out: Optional[str], targets: list[str]) -> int:
    """`--to`: send the report just written to trackers (esft/report/publish.py)."""
    from esft.errors import EsftError
    from esft.report.command import default_out
    from esft.report.publish import publish_report

    try:
        for line in publish_report(Path(out) if out else default_out(paths), targets, paths):
            typer.echo(f"esft drift-report: published to {line}", err=True)
    except EsftError as exc:
        typer.echo(f"esft drift-report: {exc}", err=True)
        return 2
    return 0


@app.command()
def replay(
    run_dir: str = typer.Argument(..., help="An ES run dir (with es_updates.jsonl)."),
    step: int = typer.Option(..., "--step", help="Rebuild the weights after this global step (0 = theta0)."),
    out: str = typer.Option(..., "--out", help="Directory for save_pretrained (weights + tokenizer)."),
) -> None:
    """Rebuild the weights at any step from theta0 and the replay log (AWD included), saved with save_pretrained."""
    from esft.commands.replay import replay_run
    from esft.errors import EsftError

    try:
        message = replay_run(Path(run_dir), step, Path(out))
    except EsftError as exc:
        _fail(str(exc))
    typer.echo(message)


@app.command()
def tasks(
    config_dir: Optional[list[str]] = typer.Option(None, "--config-dir", help="Also list DIR/task/*.yaml."),
) -> None:
    """List the task names `task=` and `eval.tasks` accept (the unknown-task error lists the same)."""
    from esft.tasks.registry import available

    for name in available([Path(d) for d in config_dir or []]):
        typer.echo(name)


def main() -> None:  # python -m esft
    app()


if __name__ == "__main__":
    sys.exit(main())
