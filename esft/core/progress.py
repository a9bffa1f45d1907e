"""What a person watching a run sees: a live one-line display on a terminal, plain periodic lines elsewhere.

Two users: `RunDisplay` (the training run, across its stages) and `progress_bar` (any long loop with a known
length, e.g. the tiny model's warm-up or a model conversion).

Why a hand-made line rather than rich's `Progress` columns: rich gives every column its natural width and, when
the terminal is narrower than their sum, cuts the *last* columns with an ellipsis. On an 80-column terminal
that left `stage 2/2 re… reward 0.539±0.044 |θ-θ0|` with no bar, step count or ETA. Here every field of the
line says how it shrinks and how much it matters (`Field.cuts`); `fit_line` applies the least important cuts
first until the line fits the width rich offers at render time, so the bar, the step count and the ETA are the
last things to go, and a resized terminal re-lays the line on the next refresh.

Under SLURM or a pipe, rich cannot animate and would print only the last frame, so when stdout is not a
terminal both fall back to a few log lines that carry the same numbers (including the ETA).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

log = logging.getLogger("esft")

Clock = Callable[[], float]
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Field:
    """One field of a status line: its forms, longest first, and the rank at which each shorter form replaces
    the one before it (`cuts[k]` takes form k to form k + 1; a lower rank is cut earlier). An empty last form
    means the field may vanish; a field without cuts always stays."""

    forms: tuple[str, ...]
    cuts: tuple[float, ...] = ()
    style: str = ""

    def __post_init__(self) -> None:
        if len(self.cuts) != len(self.forms) - 1 or list(self.cuts) != sorted(self.cuts):
            raise ValueError(f"a Field needs one increasing cut rank per shorter form, got {self}")


@dataclass(frozen=True)
class Bar:
    """The progress bar: as wide as the line leaves room for, between `min_width` and `max_width` cells (a line
    has at most one)."""

    completed: float
    total: float
    min_width: int = 10
    max_width: int = 40
    finished: bool = False


Item = Field | Bar


def fit_line(items: Sequence[Item], width: int) -> tuple[list[str], int]:
    """The form of every field and the bar width that fit `items` into `width` cells (one space between
    non-empty items). Cuts are applied in rank order across all fields until the line fits; if it still does
    not, the caller truncates (only then can a field without cuts be lost)."""
    if sum(isinstance(item, Bar) for item in items) > 1:
        raise ValueError("a status line has at most one Bar")
    levels = [0] * len(items)

    def form(i: int) -> str:
        item = items[i]
        return item.forms[levels[i]] if isinstance(item, Field) else ""

    def needed(bar_width: int) -> int:
        """Cells used with bars of `bar_width` (a bar always counts as shown, so its separator is included)."""
        shown = [bar_width if isinstance(item, Bar) else cell_len(form(i)) for i, item in enumerate(items)
                 if isinstance(item, Bar) or form(i)]
        return sum(shown) + max(0, len(shown) - 1)

    bar_min = min((item.min_width for item in items if isinstance(item, Bar)), default=0)
    cuts = sorted((rank, i, k) for i, item in enumerate(items) if isinstance(item, Field)
                  for k, rank in enumerate(item.cuts))
    for _rank, i, k in cuts:
        if needed(bar_min) <= width:
            break
        levels[i] = max(levels[i], k + 1)
    bar_max = max((item.max_width for item in items if isinstance(item, Bar)), default=0)
    spare = width - needed(0)
    bar_width = max(bar_min, min(bar_max, spare))
    return [form(i) for i in range(len(items))], bar_width


def render_line(items: Sequence[Item], width: int) -> Text:
    """`items` laid out by `fit_line` as one styled line of at most `width` cells.

    The bar is heavy `━` for done and light `─` for to-do, so it reads on a terminal without colours too (rich's
    own bar draws both halves alike and relies on colour)."""
    forms, bar_width = fit_line(items, width)
    line = Text(no_wrap=True, overflow="ellipsis", end="")
    for item, form in zip(items, forms):
        if isinstance(item, Bar):
            if line:
                line.append(" ")
            fraction = 0.0 if item.total <= 0 else min(1.0, max(0.0, item.completed / item.total))
            done = math.floor(bar_width * fraction)
            line.append("━" * done, style="bar.finished" if item.finished else "bar.complete")
            line.append("─" * (bar_width - done), style="bar.back")
        elif form:
            if line:
                line.append(" ")
            line.append(form, style=item.style)
    line.truncate(width, overflow="ellipsis")
    return line


class StatusLine:
    """A rich renderable that re-lays `items()` to the console's current width every time it is drawn."""

    def __init__(self, items: Callable[[], Sequence[Item]]) -> None:
        self.items = items

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield render_line(self.items(), options.max_width)


# ---------------------------------------------------------------------------------------------------- timing


def clock_text(seconds: float | None) -> str:
    """m:ss under an hour, h:mm:ss above; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Pace:
    """Elapsed time and an ETA from the mean time per unit since the first unit *this process* counted.

    A mean over the whole run rather than rich's 30-second window, because a step of a large model can take
    longer than the window (rich then shows no ETA at all) and because evaluations and checkpoints recur, so
    an honest ETA pays for them too. Units done before `start` (a resumed run's earlier steps) are excluded:
    they took no time in this process."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.began = clock()
        self.origin: tuple[float, float] | None = None

    def start(self, done: float) -> None:
        """Count from `done` units now (first call wins: a later stage does not restart the mean)."""
        if self.origin is None:
            self.origin = (self.clock(), done)

    def elapsed(self) -> float:
        return self.clock() - self.began

    def seconds_per_unit(self, done: float) -> float | None:
        if self.origin is None or done <= self.origin[1]:
            return None
        return (self.clock() - self.origin[0]) / (done - self.origin[1])

    def eta(self, done: float, total: float) -> float | None:
        per_unit = self.seconds_per_unit(done)
        return None if per_unit is None else per_unit * max(0.0, total - done)


def _timing_fields(pace: Pace, done: float, total: float, finished: bool) -> tuple[Field, Field]:
    """(elapsed, ETA): the ETA never goes; the elapsed time goes early. A finished line says how long it took."""
    if finished:
        return Field(("",)), Field((f"took {clock_text(pace.elapsed())}",))
    elapsed = Field((f"elapsed {clock_text(pace.elapsed())}", ""), cuts=(2,), style="progress.elapsed")
    return elapsed, Field((f"eta {clock_text(pace.eta(done, total))}",), style="progress.remaining")


# ---------------------------------------------------------------------------------------------------- a loop


class LoopProgress:
    """Progress of one loop of `total` units: a live line on a terminal, else a plain line through `log` at
    every `1/lines` of the way and at least every `every_s` seconds (a loop that runs 30 minutes under load
    still says it is alive). The line at 100% is left to the caller, which usually logs a summary."""

    def __init__(self, description: str, total: int, *, unit: str = "step", log: Log = print,
                 console: Console | None = None, short: str | None = None, lines: int = 4, every_s: float = 120.0,
                 clock: Clock = time.monotonic) -> None:
        self.description, self.short, self.total, self.unit = description, short, max(0, int(total)), unit
        self.log, self.lines, self.every_s = log, max(1, lines), every_s
        self.console = console or Console()
        self.pace = Pace(clock)
        self.pace.start(0)
        self.done, self.note, self.finished = 0, "", False
        self._live: Live | None = None
        self._last_line_at = self.pace.clock()
        self._next_mark = 1

    def items(self) -> list[Item]:
        """The live line: description, bar, count, elapsed, ETA, note; the elapsed time goes first, then the note."""
        names = (self.description, self.short or "", "") if self.short else (self.description, "")
        description = Field(names, cuts=(5, 7) if self.short else (7,), style="bold")
        elapsed, eta = _timing_fields(self.pace, self.done, self.total, self.finished)
        note = Field((self.note, ""), cuts=(3,)) if self.note else Field(("",))
        count = Field((f"{self.done}/{self.total} {self.unit}s", f"{self.done}/{self.total}"), cuts=(4,))
        return [description, Bar(self.done, self.total, finished=self.finished), count, elapsed, eta, note]

    def __enter__(self) -> "LoopProgress":
        if self.console.is_terminal:
            self._live = Live(StatusLine(self.items), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self.finished = exc[0] is None and self.done >= self.total
            self._live.refresh()
            self._live.__exit__(*exc)

    def update(self, done: int, note: str = "") -> None:
        """`done` units are complete; `note` is a short live figure such as `loss 0.632`."""
        self.done, self.note = done, note
        if self._live is not None or done >= self.total:
            return
        mark = math.floor(done * self.lines / self.total) if self.total else 0
        now = self.pace.clock()
        if mark >= self._next_mark or now - self._last_line_at >= self.every_s:
            self._next_mark = max(self._next_mark, mark + 1)
            self._last_line_at = now
            self.log(self.plain_line())

    def plain_line(self) -> str:
        percent = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.description}: {self.done}/{self.total} {self.unit}s ({percent:.0f}%)"]
        if self.note:
            parts.append(self.note)
        eta = self.pace.eta(self.done, self.total)
        parts.append(f"elapsed {clock_text(self.pace.elapsed())}, eta {clock_text(eta)}")
        return ", ".join(parts)


@contextmanager
def progress_bar(description: str, total: int, *, unit: str = "step", log: Log = print,
                 console: Console | None = None, short: str | None = None) -> Iterator[LoopProgress]:
    """Show the progress of a loop of `total` units; call `.update(done, note)` after each unit.

        with progress_bar("warming up the tiny model", steps, short="warm-up", log=log) as bar:
            for step in range(1, steps + 1):
                ...
                bar.update(step, f"loss {loss:.3f}")
    """
    with LoopProgress(description, total, unit=unit, log=log, console=console, short=short) as bar:
        yield bar


# ---------------------------------------------------------------------------------------------------- a run


def _evals_text(rows: Sequence[dict[str, Any]]) -> str:
    return " ".join(f"{r['task']} {100 * r['accuracy']:.1f}" for r in rows if r.get("accuracy") is not None)


class RunDisplay:
    """Progress of one run across its stages.

    The live line, most important first: the bar, the global step count, the ETA, the stage number, the
    reward, the stage's task, |θ-θ0|, the elapsed time, and the latest evaluation (also printed above the line
    as it happens, so it is the first to go). The evaluation shown is always the last one made, with its step.
    """

    def __init__(self, total_steps: int, num_stages: int, log_every: int = 10, console: Console | None = None,
                 clock: Clock = time.monotonic):
        self.console = console or Console(log_path=False)  # the source line of each eval message is noise
        self.live = self.console.is_terminal
        self.total, self.num_stages, self.log_every = total_steps, num_stages, max(1, log_every)
        self.pace = Pace(clock)
        self.stage_index, self.stage_task, self.completed = 0, "", 0
        self.metrics: dict[str, Any] | None = None
        self.last_eval: tuple[int, str] | None = None  # (step, "task acc ...") of the latest evaluation
        self.finished = False
        self._live: Live | None = None

    @property
    def stage_label(self) -> str:
        return f"stage {self.stage_index + 1}/{self.num_stages} {self.stage_task}".rstrip()

    @property
    def last_evals(self) -> str:
        """The latest evaluation as `eval @ step N: task acc ...`, or "" before the first one."""
        return f"eval @ step {self.last_eval[0]}: {self.last_eval[1]}" if self.last_eval else ""

    def items(self) -> list[Item]:
        number = f"{self.stage_index + 1}/{self.num_stages}"
        stage = Field((self.stage_label, f"{number} {self.stage_task}".rstrip(), number, ""), cuts=(5, 7, 10),
                      style="bold")
        elapsed, eta = _timing_fields(self.pace, self.completed, self.total, self.finished)
        items: list[Item] = [stage, Bar(self.completed, self.total, finished=self.finished),
                             Field((f"{self.completed}/{self.total}",)), elapsed, eta]
        if self.metrics is not None:
            m = self.metrics
            reward = f"reward {m['reward_mean']:.3f}"
            items.append(Field((f"{reward}±{m['reward_std']:.3f}", reward, ""), cuts=(6, 9)))
            items.append(Field((f"|θ-θ0| {m['theta_dist']:.3g}", ""), cuts=(3,)))
            if m.get("skipped"):
                items.append(Field(("(no step: equal rewards)", "(no step)", ""), cuts=(4, 8), style="yellow"))
        if self.last_eval is not None:
            items.append(Field((f"| {self.last_evals}", ""), cuts=(1,), style="dim"))
        return items

    def __enter__(self) -> "RunDisplay":
        if self.live:
            self._live = Live(StatusLine(self.items), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished = exc[0] is None and self.completed >= self.total
        if self._live is not None:
            self._live.refresh()  # the frame left on screen: the final step, the final evaluation, the time taken
            self._live.__exit__(*exc)
        elif self.finished:  # the last step line predates the stage-end evaluation: close with the final state
            log.info("finished step %d/%d in %s | last %s", self.completed, self.total,
                     clock_text(self.pace.elapsed()), self.last_evals or "eval: -")

    def stage(self, index: int, task: str, completed: int) -> None:
        self.stage_index, self.stage_task, self.completed = index, task, completed
        self.pace.start(completed)
        if self._live is None:
            log.info("%s: starting at step %d", self.stage_label, completed + 1)

    def step(self, metrics: dict[str, Any]) -> None:
        self.metrics, self.completed = metrics, int(metrics["step"])
        if self._live is None and (self.completed % self.log_every == 0 or metrics["skipped"]):
            info = (f"reward {metrics['reward_mean']:.3f}±{metrics['reward_std']:.3f} |θ-θ0| "
                    f"{metrics['theta_dist']:.3g}" + ("  (no step: equal rewards)" if metrics["skipped"] else ""))
            log.info("%s step %d/%d %s %.2fs/step, eta %s | last %s", self.stage_label, self.completed, self.total,
                     info, metrics["seconds"], clock_text(self.pace.eta(self.completed, self.total)),
                     self.last_evals or "eval: -")

    def evals(self, step: int, event: str, rows: Sequence[dict[str, Any]]) -> None:
        self.last_eval = (step, _evals_text(rows))
        message = f"eval @ step {step} ({event}): {self.last_eval[1]}"
        if self._live is not None:
            self.console.log(message)
        else:
            log.info(message)
