"""The live line keeps its bar, step count and ETA on narrow terminals; plain lines carry the same numbers."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pytest
from rich.console import Console

from esft.core.progress import (
    Bar,
    Field,
    LoopProgress,
    Pace,
    RunDisplay,
    StatusLine,
    clock_text,
    fit_line,
    progress_bar,
)

BAR = re.compile(r"━*─+|━+─*")
ROWS = [{"task": "add", "accuracy": 0.54}, {"task": "reverse", "accuracy": 0.48},
        {"task": "subtract", "accuracy": 0.99}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metrics(step: int, skipped: bool = False) -> dict[str, Any]:
    return {"step": step, "reward_mean": 0.539, "reward_std": 0.044, "theta_dist": 0.01234, "skipped": skipped,
            "seconds": 1.5}


def render(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue().rstrip("\n")


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def bar_width(line: str) -> int:
    return max((len(m.group()) for m in BAR.finditer(line)), default=0)


@pytest.fixture
def mid_run() -> RunDisplay:
    """Stage 2 of 2 at step 12 of 20, 30 s after stage 2 began at step 10, one eval made at step 10."""
    clock = FakeClock()
    display = RunDisplay(20, 2, console=Console(file=io.StringIO()), clock=clock)
    display.stage(1, "reverse", 10)
    display.evals(10, "stage_start", ROWS)
    clock.now += 30
    display.step(metrics(12))
    return display


@pytest.mark.parametrize("width", [60, 80, 150])
def test_bar_step_count_and_eta_survive_every_width(mid_run: RunDisplay, width: int) -> None:
    line = render(StatusLine(mid_run.items), width)
    assert "\n" not in line and len(line) <= width
    assert bar_width(line) >= 10
    assert " 12/20 " in line
    assert "eta 2:00" in line  # 2 steps in 30 s since this process started counting at step 10; 8 to go
    assert "2/2" in line and "reward 0.539" in line


def test_least_important_fields_go_first(mid_run: RunDisplay) -> None:
    wide, medium, narrow = (render(StatusLine(mid_run.items), w) for w in (150, 80, 60))
    assert "stage 2/2 reverse" in wide and "elapsed 0:30" in wide and "|θ-θ0| 0.0123" in wide
    assert "eval @ step 10: add 54.0 reverse 48.0 subtract 99.0" in wide
    # 80 columns: the evaluation (also printed above the line) and the elapsed time go, the rest stays
    assert "eval @" not in medium and "elapsed" not in medium
    assert "stage 2/2 reverse" in medium and "reward 0.539±0.044" in medium and "|θ-θ0| 0.0123" in medium
    # 60 columns: |θ-θ0| and the word "stage" go next
    assert "|θ-θ0|" not in narrow and "stage" not in narrow
    assert narrow.startswith("2/2 reverse ")


def test_a_skipped_step_is_still_said_when_narrow(mid_run: RunDisplay) -> None:
    mid_run.step(metrics(13, skipped=True))
    assert "(no step: equal rewards)" in render(StatusLine(mid_run.items), 150)
    assert "(no step)" in render(StatusLine(mid_run.items), 60)


def test_fit_line_applies_cuts_in_rank_order_and_widens_the_bar() -> None:
    items = [Field(("aaaa", "a"), cuts=(2,)), Bar(1, 2, min_width=4, max_width=10), Field(("bbbb", ""), cuts=(1,))]
    assert fit_line(items, 100) == (["aaaa", "", "bbbb"], 10)
    assert fit_line(items, 16) == (["aaaa", "", "bbbb"], 6)
    assert fit_line(items, 13) == (["aaaa", "", ""], 8)  # rank 1 (bbbb) goes before rank 2 (aaaa -> a)
    assert fit_line(items, 8) == (["a", "", ""], 6)
    with pytest.raises(ValueError, match="at most one Bar"):
        fit_line([Bar(0, 1), Bar(0, 1)], 80)
    with pytest.raises(ValueError, match="cut rank"):
        Field(("x", "y", ""), cuts=(2, 1))


def test_final_frame_shows_the_last_evaluation_and_the_time_taken() -> None:
    """The live display's last frame is what stays on screen: it must show the stage-end evaluation, not the
    one before the last step (the stale 'last eval' of issue 17)."""
    out = io.StringIO()
    clock = FakeClock()
    display = RunDisplay(4, 1, console=Console(file=out, width=150, force_terminal=True, color_system=None),
                         clock=clock)
    with display:
        display.stage(0, "add", 0)
        display.evals(0, "stage_start", [{"task": "add", "accuracy": 0.10}])
        for step in range(1, 5):
            clock.now += 2
            display.step(metrics(step))
            if step == 2:
                display.evals(2, "periodic", [{"task": "add", "accuracy": 0.30}])
        display.evals(4, "stage_end", [{"task": "add", "accuracy": 0.90}])
    last_frame = strip_ansi(out.getvalue()).rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    assert "4/4" in last_frame and "took 0:08" in last_frame and "eta" not in last_frame
    assert "eval @ step 4: add 90.0" in last_frame
    assert "eval @ step 4 (stage_end): add 90.0" in out.getvalue()  # printed above the line as it happened


def test_plain_lines_carry_the_eta_and_the_step_of_the_eval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    display = RunDisplay(20, 1, log_every=5, console=Console(file=io.StringIO()), clock=clock)
    assert not display.live
    with caplog.at_level(logging.INFO, logger="esft"), display:
        display.stage(0, "add", 0)
        display.evals(0, "stage_start", ROWS[:1])
        for step in range(1, 21):
            clock.now += 3
            display.step(metrics(step))
        display.evals(20, "stage_end", ROWS[1:2])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "stage 1/1 add: starting at step 1"
    assert lines[1] == "eval @ step 0 (stage_start): add 54.0"
    assert len(lines) == 8  # a step line every 5 steps (log_every), the last eval, the closing line
    assert lines[2].startswith("stage 1/1 add step 5/20 reward 0.539±0.044 |θ-θ0| 0.0123 1.50s/step, eta 0:45")
    assert lines[2].endswith("| last eval @ step 0: add 54.0")
    assert lines[-1] == "finished step 20/20 in 1:00 | last eval @ step 20: reverse 48.0"


def test_pace_ignores_the_steps_of_an_earlier_process() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    assert pace.eta(0, 10) is None
    pace.start(100)  # resumed at step 100
    pace.start(150)  # a later stage does not restart the count
    clock.now += 40
    assert pace.eta(100, 200) is None
    assert pace.eta(110, 200) == pytest.approx(4 * 90)
    assert pace.elapsed() == 40


def test_clock_text() -> None:
    assert [clock_text(s) for s in (0, 59.6, 61, 3600, 3725)] == ["0:00", "1:00", "1:01", "1:00:00", "1:02:05"]
    assert clock_text(None) == clock_text(float("inf")) == "?"


def test_loop_progress_plain_lines_at_each_quarter_with_an_eta() -> None:
    clock, lines = FakeClock(), []
    with LoopProgress("warming up the tiny model", 800, log=lines.append, console=Console(file=io.StringIO()),
                      clock=clock) as bar:
        for step in range(1, 801):
            clock.now += 0.25
            bar.update(step, f"loss {1 / step:.3f}")
    assert lines == [
        "warming up the tiny model: 200/800 steps (25%), loss 0.005, elapsed 0:50, eta 2:30",
        "warming up the tiny model: 400/800 steps (50%), loss 0.003, elapsed 1:40, eta 1:40",
        "warming up the tiny model: 600/800 steps (75%), loss 0.002, elapsed 2:30, eta 0:50",
    ]  # the caller logs the summary at 100%


def test_loop_progress_says_it_is_alive_when_slow() -> None:
    clock, lines = FakeClock(), []
    with LoopProgress("converting", 100, unit="tensor", log=lines.append, console=Console(file=io.StringIO()),
                      every_s=60, clock=clock) as bar:
        for done in range(1, 11):
            clock.now += 30
            bar.update(done)
    assert lines[0] == "converting: 2/100 tensors (2%), elapsed 1:00, eta 49:00"
    assert len(lines) == 5  # every 60 s although no quarter was reached


@pytest.mark.parametrize("width", [40, 60, 80])
def test_loop_progress_live_line_fits(width: int) -> None:
    clock = FakeClock()
    bar = LoopProgress("warming up the tiny model", 800, short="warm-up", console=Console(file=io.StringIO()),
                       clock=clock)
    clock.now += 30
    bar.update(200, "loss 0.632")
    line = render(StatusLine(bar.items), width)
    assert len(line) <= width and bar_width(line) >= 10
    assert "200/800" in line and "eta 1:30" in line
    if width == 80:  # the loss says more about a warm-up than the elapsed time does
        assert "loss 0.632" in line and "elapsed" not in line


def test_progress_bar_on_a_terminal_draws_instead_of_logging() -> None:
    out, lines = io.StringIO(), []
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with progress_bar("warming up the tiny model", 8, short="warm-up", log=lines.append, console=console) as bar:
        for step in range(1, 9):
            bar.update(step, "loss 0.5")
    assert lines == []
    final = strip_ansi(out.getvalue()).rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    assert "8/8 steps" in final and "took" in final and "━" * 10 in final
