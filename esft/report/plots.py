"""The report's PNG plots (matplotlib, Agg canvas; no pyplot, so no global backend state is touched).

Every plot has a title, axis labels and a legend whose entries are the group labels (the config keys that
differ between groups) with the number of runs, and the runs that are not done. A group's line is the mean
over its seeds and its band the mean ± one standard deviation. Colours are fixed per group across plots.
Accuracies are drawn in percent and drops and gains in percentage points, the unit of the tables.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22"]
MARKERS = "osD^vP*X<>"
DPI = 110
PCT = 100.0
PLOTS = {
    "prior_accuracy.png": "Prior-task accuracy vs step, with the base model's level",
    "new_task_accuracy.png": "New-task accuracy vs step",
    "theta_drift.png": "|θ - θ0| vs step, with the random-walk prediction",
    "drop_vs_cost.png": "Prior-task drop and new-task gain vs compute",
}


def legend_label(group: dict[str, Any]) -> str:
    not_done = [f"{n} {s}" for s, n in sorted(group["states"].items()) if s != "done"]
    extra = "; " + ", ".join(not_done) if not_done else ""
    return f"{group['label']} (n={group['n_runs']}{extra})"


def _figure(width: float, height: float, summary: dict[str, Any]) -> Figure:
    """A constrained-layout figure with room below the axes for the legend (two columns of entries)."""
    entries = len(summary["groups"]) + 4  # groups, the stage line and up to three line styles
    return Figure(figsize=(width, height + 0.4 + 0.2 * math.ceil(entries / 2)), layout="constrained")


def _color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _legend_title(summary: dict[str, Any]) -> str:
    keys = summary.get("group_keys") or []
    return f"group ({', '.join(keys)})" if keys else "group"


def _band(ax: Any, curve: dict[str, list[float]], color: str, label: str | None, marker: str = "o",
          scale: float = 1.0) -> None:
    if not curve["step"]:
        return
    steps = curve["step"]
    mean, std = [v * scale for v in curve["mean"]], [v * scale for v in curve["std"]]
    ax.plot(steps, mean, color=color, label=label, marker=marker, markersize=3, linewidth=1.6)
    if any(std):
        lo = [m - s for m, s in zip(mean, std)]
        hi = [m + s for m, s in zip(mean, std)]
        ax.fill_between(steps, lo, hi, color=color, alpha=0.18, linewidth=0)


def _stage_lines(ax: Any, curves: dict[str, Any]) -> None:
    starts = sorted({s for c in curves.values() for s in c["new_stage_start"]})
    for i, step in enumerate(starts):
        ax.axvline(step, color="0.45", linestyle="--", linewidth=1,
                   label="new stage starts" if i == 0 else None)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def _legend(fig: Figure, ax: Any, summary: dict[str, Any], extra: list[Any] | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for handle in extra or []:
        handles.append(handle)
        labels.append(handle.get_label())
    if handles:
        fig.legend(handles, labels, title=_legend_title(summary), loc="outside lower center",
                   ncol=2 if len(handles) > 3 else len(handles), fontsize=8, title_fontsize=8, frameon=False)


def _base_line(ax: Any, group: dict[str, Any], task: str, color: str) -> str | None:
    """The group's base-model accuracy of `task` as a dotted level across the panel; returns the panel's drop
    text for the group (max drop in the new stage and from the base model), or None without numbers."""
    drift = group["prior"].get(task) or {}
    base, drop, from_base = (drift.get(k) or {} for k in ("base", "max_drop", "max_drop_from_base"))
    if base.get("n"):
        ax.axhline(base["mean"] * PCT, color=color, linestyle=":", linewidth=1.1, alpha=0.8)
    if not drop.get("n"):
        return None
    text = f"max drop {drop['mean'] * PCT:.1f} pts"
    return text + (f", {from_base['mean'] * PCT:.1f} from base" if from_base.get("n") else "")


def plot_prior_accuracy(summary: dict[str, Any], curves: dict[str, Any], path: Path) -> None:
    tasks = [t for g in summary["groups"] for t in g["prior"]]
    tasks = list(dict.fromkeys(tasks))
    cols = min(3, max(1, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / cols))
    fig = _figure(max(6.4, 4.6 * cols), 3.4 * rows, summary)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if not tasks:
        _empty(axes[0], "no prior-task evaluations in these runs")
    for ax, task in zip(axes, tasks):
        drops = []
        for i, group in enumerate(summary["groups"]):
            curve = curves[group["label"]]["prior"].get(task)
            if curve:
                _band(ax, curve, _color(i), legend_label(group), scale=PCT)
            text = _base_line(ax, group, task, _color(i))
            if text:
                drops.append((text, _color(i)))
        for line, (text, color) in enumerate(drops):  # one line per group, in its colour, bottom left
            ax.text(0.02, 0.03 + 0.075 * line, text, transform=ax.transAxes, fontsize=7, color=color, zorder=5,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.0})
        _stage_lines(ax, curves)
        ax.set_title(f"prior task: {task}")
        ax.set_xlabel("global step")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):] if tasks else []:
        ax.set_visible(False)
    fig.suptitle("Prior-task accuracy vs step (mean ± std over seeds); dotted: the base model's accuracy")
    base = [Line2D([], [], color="0.2", linestyle=":", label="base model (first eval)")] if tasks else []
    _legend(fig, axes[0], summary, extra=base)
    _save(fig, path)


def plot_new_task(summary: dict[str, Any], curves: dict[str, Any], path: Path) -> None:
    fig = _figure(6.4, 3.6, summary)
    ax = fig.subplots()
    for i, group in enumerate(summary["groups"]):
        _band(ax, curves[group["label"]]["new"], _color(i), legend_label(group), scale=PCT)
    _stage_lines(ax, curves)
    tasks = ", ".join(dict.fromkeys(g["new_task"] for g in summary["groups"]))
    ax.set_title(f"New-task accuracy vs step (task: {tasks}; mean ± std over seeds)")
    ax.set_xlabel("global step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    _legend(fig, ax, summary)
    _save(fig, path)


def plot_theta(summary: dict[str, Any], curves: dict[str, Any], path: Path) -> None:
    fig = _figure(6.4, 3.6, summary)
    ax = fig.subplots()
    used: set[str] = set()
    for i, group in enumerate(summary["groups"]):
        c = curves[group["label"]]
        _band(ax, c["theta"], _color(i), legend_label(group), marker="")
        # one prediction per group: the AWD-L2 one where it applies, else the free random walk
        free, pred = c["theta_pred_free"], c["theta_pred"]
        line, style = (pred, "--") if pred["step"] and pred["mean"] != free["mean"] else (free, ":")
        if line["step"]:
            used.add(style)
            ax.plot(line["step"], line["mean"], color=_color(i), linestyle=style, linewidth=1.3, alpha=0.9)
    _stage_lines(ax, curves)
    names = {":": "predicted: α·k·sqrt(T·D/N), k = sqrt(N/(N-1)) with pairs", "--": "predicted with AWD-L2, c = α·λ"}
    style = [Line2D([], [], color="0.2", label="measured (mean ± std)")]
    style += [Line2D([], [], color="0.2", linestyle=s, label=names[s]) for s in (":", "--") if s in used]
    if not any(curves[g["label"]]["theta"]["step"] for g in summary["groups"]):
        _empty(ax, "no theta_dist logged in these runs")
    ax.set_title("|θ - θ0| vs step, measured and predicted")
    ax.set_xlabel("global step T")
    ax.set_ylabel("|θ - θ0| (L2, all parameters)")
    ax.grid(alpha=0.3)
    _legend(fig, ax, summary, extra=style)
    _save(fig, path)


def _cost(group: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if group["new_stage_compute_tokens"]["n"]:
        return group["new_stage_compute_tokens"], "compute in the new stage (forward + 2 x backward tokens)"
    return group["new_stage_population_evals"], "population evaluations in the new stage"


def _varying(summary: dict[str, Any]) -> str:
    """What the groups differ in, for a title: their grouping keys, or that nothing differs."""
    keys = summary.get("group_keys") or []
    if len(summary["groups"]) < 2 or not keys:
        return "one group"
    return "groups differ in " + ", ".join(keys)


def _from_zero(ax: Any, values: list[float]) -> None:
    """Start the value axis at 0 (a gap of a few points must not fill the panel); below 0 only for negatives."""
    low, high = min([0.0, *values]), max([0.0, *values])
    pad = 0.08 * (high - low or 1.0)
    ax.set_ylim(low - pad if low < 0 else 0.0, high + pad)


def plot_drop_vs_cost(summary: dict[str, Any], path: Path) -> None:
    fig = _figure(10.5, 3.6, summary)
    left, right = fig.subplots(1, 2)
    xlabel = "compute"
    reach: dict[Any, list[float]] = {left: [], right: []}
    costs: list[float] = []
    for i, group in enumerate(summary["groups"]):
        cost, xlabel = _cost(group)
        for ax, value in ((left, group["mean_max_drop"]), (right, group["new_task_gain"])):
            if cost["n"] and value["n"]:
                mean, std = value["mean"] * PCT, (value["std"] or 0.0) * PCT
                reach[ax] += [mean - std, mean + std]
                costs.append(cost["mean"] + (cost["std"] or 0.0))
                # hollow, distinct shapes: groups at the same point (equal compute, equal drop) stay visible
                ax.errorbar(cost["mean"], mean, xerr=cost["std"] or None, yerr=std or None,
                            fmt=MARKERS[i % len(MARKERS)], color=_color(i), markersize=9, capsize=3,
                            markerfacecolor="none", markeredgewidth=2,
                            label=legend_label(group) if ax is left else None)
    for ax, ylabel, title in ((left, "mean max drop of the prior tasks (pts)", "Forgetting vs compute"),
                              (right, "new-task gain (pts)", "Learning vs compute")):
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if not ax.has_data():
            _empty(ax, "no compute or accuracy logged")
            continue
        _from_zero(ax, reach[ax])
        ax.set_xlim(0, 1.15 * max(costs) or 1.0)  # cost from 0 too: a group twice as dear sits twice as far
    fig.suptitle(f"Drop and gain vs cost of the new stage (mean ± std over seeds): {_varying(summary)}")
    _legend(fig, left, summary)
    _save(fig, path)


def save_plots(summary: dict[str, Any], curves: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot into `out`; returns {file name: title}."""
    out.mkdir(parents=True, exist_ok=True)
    plot_prior_accuracy(summary, curves, out / "prior_accuracy.png")
    plot_new_task(summary, curves, out / "new_task_accuracy.png")
    plot_theta(summary, curves, out / "theta_drift.png")
    plot_drop_vs_cost(summary, out / "drop_vs_cost.png")
    return dict(PLOTS)
