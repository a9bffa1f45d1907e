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
    from esft.hydra_app import run_hydra

    if any(arg in ("-h", "--help") for arg in ctx.args):
        typer.echo(ctx.get_help())
        typer.echo("\nAll arguments are Hydra overrides, e.g. `esft train task=reverse awd.lambda=0`, "
                   "`esft train -m awd.lambda=0,1`, `esft train --cfg job`; Hydra's own help: --hydra-help.")
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
    from esft.config_check import overrides_in

    rest = args[:index] + args[index + 2:]
    extra = overrides_in(rest)
    flags = [a for a in rest if a not in extra]
    return [*flags, *saved, *extra, f"hydra.run.dir={run_dir.resolve()}"]


def _fail(message: str) -> None:
    typer.echo(f"esft: error: {message}", err=True)
    raise typer.Exit(2)


@app.command("drift-report")
def drift_report(
    paths: list[str] = typer.Argument(..., help="Run dirs, multirun sweep roots or globs."),
    out: Optional[str] = typer.Option(None, "--out", help="Output dir (default: drift-report/ beside the first path)."),
    group_by: Optional[list[str]] = typer.Option(None, "--group-by", help="Config key(s) to group runs by."),
    task: Optional[str] = typer.Option(None, "--task", help="Only report this prior task."),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    budget: str = typer.Option("compute_tokens", "--budget",
                               help="Also compare groups at equal cost of the new stage, measured in "
                                    "compute_tokens | population_evals | seconds; none: skip."),
) -> None:
    """Tables, plots and a report of prior-task drift from finished (or running) runs."""
    from rich.console import Console

    from esft.report.command import drift_report as run_report

    console = Console() if sys.stdout.isatty() else Console(width=160)  # files and pipes: don't squeeze tables
    raise typer.Exit(run_report(paths, out, group_by, task, fmt, console, budget))


@app.command()
def replay(
    run_dir: str = typer.Argument(..., help="An ES run dir (with es_updates.jsonl)."),
    step: int = typer.Option(..., "--step", help="Rebuild the weights after this global step (0 = theta0)."),
    out: str = typer.Option(..., "--out", help="Directory for save_pretrained (weights + tokenizer)."),
) -> None:
    """Rebuild the weights at any step from theta0 and the replay log (AWD included), saved with save_pretrained."""
    from esft.errors import EsftError
    from esft.replay_command import replay_run

    try:
        message = replay_run(Path(run_dir), step, Path(out))
    except EsftError as exc:
        _fail(str(exc))
    typer.echo(message)


@app.command()
def tasks() -> None:
    """List the available task names."""
    from esft.tasks.registry import available

    for name in available():
        typer.echo(name)


def main() -> None:  # python -m esft
    app()


if __name__ == "__main__":
    sys.exit(main())
