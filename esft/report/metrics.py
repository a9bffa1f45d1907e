"""Drift metrics of one run, as pure functions of the loaded run dir (no printing, no files).

Vocabulary. The *new stage* is the curriculum's last stage and its task the *new task*; every other task
(earlier curriculum tasks and eval-only tasks) is a *prior task*. All steps are global steps (esft.storage.rundir).

Per prior task, over the eval points (step, accuracy) of the new stage, the first being its `stage_start`
eval (at step first_step - 1, before any update of the stage):
  start        accuracy before the new stage
  min          the lowest accuracy in the stage, start included; `min_step` the (first) step it is reached
  final        the last accuracy of the stage (for a run still running: the latest one)
  max_drop     start - min  (>= 0)
  final_drop   start - final (negative when the task improved)
  recovery     final - min  (>= 0)
  area         the trapezoid rule over the eval points of max(0, start - acc), divided by the steps covered
               (last eval step - start step; the stage length for a finished stage): a mean drop, in
               accuracy units. The clipped deficit is interpolated linearly between eval points.
and, over every eval of the run from its very first one (the base model, before any update of any stage), so
that drift during earlier stages is not hidden behind the new stage's `start`:
  base                  accuracy at the task's first eval in the run (`base_step`, normally 0)
  max_drop_from_base    base - the lowest accuracy of the whole run (>= 0)
  final_drop_from_base  base - final
and, where the evals rows carry each item's outcome (`correct`; every eval of a run scores the same fixed items):
  max_drop_margin, final_drop_margin   the paired 95% margin of max_drop / final_drop: 1.96 sd(d) / sqrt(n)
               over the per-item differences d_i = before_i - after_i (normal approximation). Most items keep
               their outcome between two evals, so this is several times tighter than the margin of two
               independent proportions and is the right test of "did this task drop?" for one run.
Per run:
  new_task_gain   new task's final accuracy in the new stage minus its accuracy at the stage start
  GEM (Lopez-Paz & Ranzato 2017): R[i][j] = accuracy on curriculum task j at the `stage_end` eval of stage
                  i; ACC = mean_j R[T-1][j]; BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]) (null with one stage);
                  both null while a needed entry is missing (a run that has not finished)
  theta           final |theta - theta0| and the random-walk prediction at T = the last step (`step_norm`):
                  alpha*k*sqrt(T*D/N) without AWD (`pred_free`, always), and for AWD-L2 with c = alpha*lambda
                  alpha*k*(1-c)*sqrt(D/N * (1 - (1-c)^(2T)) / (2c - c^2)), the sum of the decayed per-step
                  variances, which saturates at alpha*k*(1-c)*sqrt(D/(N*(2c - c^2))); k = sqrt(N/(N-1)) with
                  antithetic pairs, 1 without; with `awd.anchor=stage` the stages' squared predictions add (the
                  pull restarts from each stage's anchor). `ratio` = measured / prediction (the AWD-aware one;
                  null for AWD-L1, which has no closed form here). ES with z-score shaping only.
  new_task_gain   also carries the new task's `final` accuracy (a group can gain less yet end higher)
  scoring         {task: how its evals were scored} when the evals rows say (`scoring`: loglik | generate)
  compute         sums of forward/backward_tokens, population_evals, generated_tokens and seconds over metrics rows
                  (compute_tokens = forward + 2 x backward tokens, proportional to FLOPs),
                  for the whole run and for the new stage alone
Across groups:
  equal budget    every group read at the same cost of the new stage: the cheapest group's mean cost (in
                  compute_tokens by default, or population_evals or seconds). Each run is read at the last
                  eval of its new stage whose cumulative stage cost is within that budget, with the gain and
                  the drift metrics computed over the evals up to there. A group that costs 4x per step is
                  thus judged after a quarter of its steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from esft.report.grouping import Group, format_value
from esft.report.load import Run

Point = tuple[int, float]
#: the per-prior-task metrics, in table order
DRIFT_FIELDS = ("start", "min", "min_step", "final", "max_drop", "final_drop", "recovery", "area")
#: the per-prior-task metrics measured from the run's first eval (the base model), beside the new-stage ones
BASE_FIELDS = ("base", "max_drop_from_base", "final_drop_from_base")
#: paired 95% margins of the new-stage drops, where evals rows carry per-item outcomes (`correct`)
MARGIN_FIELDS = ("max_drop_margin", "final_drop_margin")
LOGGED_COMPUTE = ("forward_tokens", "backward_tokens", "population_evals", "generated_tokens", "seconds")
# compute_tokens = forward + 2 x backward tokens: proportional to training FLOPs (~2D per forward token,
# ~4D per backward token), so ES (forward only) and GRPO/PPO (forward + backward) compare at equal compute.
COMPUTE_FIELDS = ("compute_tokens", *LOGGED_COMPUTE)
#: costs at which `drift-report --budget` compares groups
BUDGET_MEASURES = ("compute_tokens", "population_evals", "seconds")


def cfg_get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _names(entries: Any) -> list[str]:
    if not isinstance(entries, list):
        return []
    return [str(e["name"]) if isinstance(e, dict) and "name" in e else str(e) for e in entries]


def stages(run: Run) -> list[dict[str, Any]]:
    """The curriculum's stages (index, task, first_step, last_step): run.json, else config, else metrics."""
    listed = (run.info or {}).get("stages")
    if isinstance(listed, list) and listed:
        return [dict(s, index=s.get("index", i)) for i, s in enumerate(listed)]
    tasks = _names(cfg_get(run.config, "prior.tasks", [])) + _names([cfg_get(run.config, "task")])
    steps = cfg_get(run.config, "steps")
    if cfg_get(run.config, "task.name") and isinstance(steps, int):
        prior_steps = cfg_get(run.config, "prior.steps") or steps
        out, first = [], 1
        for i, task in enumerate(tasks):
            length = steps if i == len(tasks) - 1 else prior_steps
            out.append({"index": i, "task": task, "first_step": first, "last_step": first + length - 1})
            first += length
        return out
    by_stage: dict[int, dict[str, Any]] = {}
    for row in run.metrics:
        s = by_stage.setdefault(int(row.get("stage", 0)), {"task": row.get("task"), "steps": []})
        s["steps"].append(int(row.get("step", 0)))
    return [
        {"index": i, "task": s["task"], "first_step": min(s["steps"]), "last_step": max(s["steps"])}
        for i, s in sorted(by_stage.items())
    ]


def prior_tasks(run: Run, stage_list: list[dict[str, Any]]) -> list[str]:
    """Earlier curriculum tasks, then eval-only tasks; never the new task."""
    new = stage_list[-1]["task"] if stage_list else None
    evals = (run.info or {}).get("eval_tasks") or _names(cfg_get(run.config, "eval.tasks", []))
    evals = evals or [r["task"] for r in run.evals if r.get("role") == "eval_only"]
    ordered = [s["task"] for s in stage_list[:-1]] + list(evals)
    return [t for i, t in enumerate(ordered) if t != new and t not in ordered[:i]]


def _task_rows(run: Run, task: str, stage: int | None) -> Iterator[dict[str, Any]]:
    """The evals rows of `task` that have a step (of `stage` only, when given), in file order."""
    for row in run.evals:
        if row.get("task") == task and row.get("step") is not None and stage in (None, row.get("stage")):
            yield row


def eval_curve(run: Run, task: str, stage: int | None = None) -> list[Point]:
    """(step, accuracy) of `task`, sorted, one point per step (the later row wins), rows without one dropped."""
    points = {int(row["step"]): float(row["accuracy"]) for row in _task_rows(run, task, stage)
              if row.get("accuracy") is not None}
    return sorted(points.items())


def item_outcomes(run: Run, task: str, stage: int | None = None) -> dict[int, str]:
    """{step: the row's per-item outcomes (`correct`, a 0/1 string)} of `task`; the later row of a step wins."""
    return {int(row["step"]): row["correct"] for row in _task_rows(run, task, stage)
            if isinstance(row.get("correct"), str)}


def paired_margin(before: str | None, after: str | None) -> float | None:
    """95% margin of the accuracy drop between two evals of the same items, from d_i = before_i - after_i:
    1.96 * sd(d) / sqrt(n) (sample sd). None unless both outcome strings exist, match in length (n >= 2) and
    hold only 0/1 -- outcomes of different item sets cannot be paired."""
    if not before or not after or len(before) != len(after) or len(before) < 2:
        return None
    if not set(before) | set(after) <= {"0", "1"}:
        return None
    diffs = [int(b) - int(a) for b, a in zip(before, after)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return 1.96 * math.sqrt(var / n)


def drift(points: list[Point]) -> dict[str, Any] | None:
    """Drift metrics of one prior task over one stage; points[0] is the accuracy before the stage."""
    if not points:
        return None
    start_step, start = points[0]
    min_step, minimum = min(points, key=lambda p: (p[1], p[0]))
    final_step, final = points[-1]
    span = final_step - start_step
    area = None
    if span > 0:
        deficits = [(s, max(0.0, start - a)) for s, a in points]
        integral = sum((s1 - s0) * (d0 + d1) / 2 for (s0, d0), (s1, d1) in zip(deficits, deficits[1:]))
        area = integral / span
    return {
        "start": start, "start_step": start_step, "min": minimum, "min_step": min_step,
        "min_step_in_stage": min_step - start_step, "final": final, "final_step": final_step,
        "max_drop": start - minimum, "final_drop": start - final, "recovery": final - minimum,
        "area": area, "points": len(points),
    }


def drift_from_base(points: list[Point]) -> dict[str, Any] | None:
    """Drop of a prior task from the run's first eval of it (the base model) over every later eval: the new
    stage's `start` already carries whatever earlier stages did to the task, so `drift` alone would report a
    task that fell 99% -> 70% in stage A and then to 24% in stage B as a 46-point drop instead of 75."""
    if not points:
        return None
    base_step, base = points[0]
    minimum = min(value for _, value in points)
    return {"base": base, "base_step": base_step, "max_drop_from_base": base - minimum,
            "final_drop_from_base": base - points[-1][1]}


def prior_drift(run: Run, task: str, new: dict[str, Any]) -> dict[str, Any] | None:
    """drift() over the new stage with drift_from_base() over the whole run up to the new stage's last eval."""
    stage_points = eval_curve(run, task, new["index"])
    out = drift(stage_points)
    if out is None:
        return None
    until = stage_points[-1][0]
    base = drift_from_base([p for p in eval_curve(run, task) if p[0] <= until])
    out.update(base or dict.fromkeys(("base", "base_step", *BASE_FIELDS[1:])))
    outcomes = item_outcomes(run, task, new["index"])
    before = outcomes.get(out["start_step"])
    out["max_drop_margin"] = paired_margin(before, outcomes.get(out["min_step"]))
    out["final_drop_margin"] = paired_margin(before, outcomes.get(out["final_step"]))
    return out


def scoring(run: Run) -> dict[str, str]:
    """{task: its evals' `scoring` values, comma-joined in first-seen order}; tasks whose rows lack it are absent."""
    seen: dict[str, list[str]] = {}
    for row in run.evals:
        value, task = row.get("scoring"), row.get("task")
        if isinstance(value, str) and isinstance(task, str) and value not in seen.setdefault(task, []):
            seen[task].append(value)
    return {task: ",".join(values) for task, values in seen.items() if values}


def gem(run: Run, stage_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The accuracy matrix R (rows: after stage i, columns: curriculum task j) with ACC and BWT."""
    tasks = [s["task"] for s in stage_list]
    ends = {
        (row.get("stage"), row.get("task")): float(row["accuracy"])
        for row in run.evals
        if row.get("event") == "stage_end" and row.get("accuracy") is not None
    }
    matrix = [[ends.get((s["index"], task)) for task in tasks] for s in stage_list]
    last = matrix[-1] if matrix else []
    acc = sum(last) / len(last) if last and None not in last else None
    bwt = None
    pairs = [(matrix[-1][j], matrix[j][j]) for j in range(len(tasks) - 1)]
    if pairs and all(a is not None and b is not None for a, b in pairs):
        bwt = sum(a - b for a, b in pairs) / len(pairs)
    return {"tasks": tasks, "R": matrix, "acc": acc, "bwt": bwt}


def pair_factor(pop: float, antithetic: bool) -> float:
    """How much antithetic pairs lengthen the z-scored ES step: sqrt(N/(N-1)) with pairs, 1 without.

    One step is u = alpha/N * sum_k c_k eps_k over the K noise draws, eps_k ~ N(0, I_D). Where the reward
    ignores a direction (the random walk this prediction models), the rewards do not depend on the eps, so
    E|u|^2 = alpha^2 D / N^2 * E[sum_k c_k^2].
      Without pairs K = N and c_k = z_k. The z-scores of N rewards (population std) have sum_k z_k^2 = N
      exactly, so E|u|^2 = alpha^2 D / N: the step norm alpha*sqrt(D/N).
      With pairs K = N/2 and draw k's coefficient is z+ - z- (members 2k and 2k+1 saw +eps_k and -eps_k), so
      sum_k (z+ - z-)^2 = sum_n z_n^2 - 2 sum_k z+ z- = N - 2 sum_k z+ z-. The z-scores also sum to 0, so
      0 = (sum_n z_n)^2 = N + sum_{i != j} z_i z_j, and for exchangeable rewards every one of the N(N-1)
      ordered pairs has E[z_i z_j] = -1/(N-1): the two members of a pair are slightly anti-correlated. Then
      E[sum_k c_k^2] = N + 2 (N/2) / (N-1) = N^2 / (N-1), and the step norm is alpha*sqrt(D/N)*sqrt(N/(N-1)).
    Measured on a random-reward task: 1.040 with pairs at N=16 (sqrt(16/15) = 1.033) and 1.0001 without pairs
    at N=4. Centered-rank shaping has a smaller sum of squares and is not covered (see theta_params).
    """
    return math.sqrt(pop / (pop - 1)) if antithetic and pop > 1 else 1.0


def predicted_theta(steps: float, alpha: float, dim: float, pop: float, c: float = 0.0,
                    antithetic: bool = False) -> float | None:
    """Expected |theta_T - theta0| of the ES random walk; c = alpha*lambda is the AWD-L2 pull (0: none).

    Each step adds an independent u_t with E|u_t|^2 = s^2, s = alpha*sqrt(D/N)*pair_factor. Without AWD the
    variances add: s*sqrt(T). AWD-L2 pulls after the update, x_{t+1} = (1-c)(x_t + u_t), so after T steps
    E|x_T|^2 = s^2 sum_{j=1..T} (1-c)^(2j) = s^2 (1-c)^2 (1 - (1-c)^(2T)) / (2c - c^2), which saturates at
    s (1-c) / sqrt(2c - c^2) instead of growing without bound.
    """
    if steps < 0 or alpha <= 0 or dim <= 0 or pop <= 0 or not 0 <= c < 1:
        return None
    step = alpha * math.sqrt(dim / pop) * pair_factor(pop, antithetic)
    if c == 0:
        return step * math.sqrt(steps)
    return step * (1 - c) * math.sqrt((1 - (1 - c) ** (2 * steps)) / (2 * c - c * c))


def theta_params(run: Run) -> dict[str, Any] | None:
    """alpha, D, N, antithetic and the AWD pull c used by the prediction; None when not ES, a value is missing,
    or the rewards are shaped other than by z-score (the prediction's sum of squares N holds for z-scores)."""
    method = (run.info or {}).get("method") or cfg_get(run.config, "method.name", "es")
    alpha = cfg_get(run.config, "es.alpha")
    pop = cfg_get(run.config, "es.population_size")
    dim = (run.info or {}).get("num_parameters")
    shaping = cfg_get(run.config, "es.shaping", "zscore")
    if method != "es" or shaping != "zscore" or not all(isinstance(v, (int, float)) for v in (alpha, pop, dim)):
        return None
    lam = cfg_get(run.config, "awd.lambda", 0) or 0
    kind = cfg_get(run.config, "awd.kind", "l2")
    if not isinstance(lam, (int, float)):
        return None
    c = alpha * lam if kind == "l2" else 0.0
    antithetic = bool(cfg_get(run.config, "es.antithetic", True))
    return {"alpha": alpha, "dim": dim, "pop": pop, "c": c, "l1": kind == "l1" and lam > 0, "antithetic": antithetic,
            "anchor": cfg_get(run.config, "awd.anchor", "start")}


def theta_curve(run: Run) -> list[Point]:
    rows = run.metrics if any(r.get("theta_dist") is not None for r in run.metrics) else run.diagnostics
    return sorted({int(r["step"]): float(r["theta_dist"]) for r in rows
                   if r.get("theta_dist") is not None and r.get("step") is not None}.items())


def _stage_segments(run: Run, step: int) -> list[int]:
    """How many steps of each stage lie in 1..step (the last stage takes any steps beyond the plan)."""
    listed = stages(run)
    if not listed:
        return [step]
    counts = [max(0, min(step, int(s["last_step"])) - int(s["first_step"]) + 1) for s in listed]
    counts[-1] += max(0, step - int(listed[-1]["last_step"]))
    return counts


def theta_prediction_curve(run: Run, steps: list[int], free: bool = False) -> list[Point]:
    """predicted_theta at each step. With `awd.anchor=stage` the pull restarts from a new anchor at each stage
    start: the deviation from that anchor is a fresh AR(1) walk, independent of the steps before, so the
    squared predictions of the stages' own lengths add up."""
    p = theta_params(run)
    if p is None or (p["l1"] and not free):
        return []
    c = 0.0 if free else p["c"]

    def predict(step: int) -> float | None:
        if c == 0 or p["anchor"] != "stage":
            return predicted_theta(step, p["alpha"], p["dim"], p["pop"], c, p["antithetic"])
        parts = [predicted_theta(n, p["alpha"], p["dim"], p["pop"], c, p["antithetic"])
                 for n in _stage_segments(run, step)]
        return None if None in parts else math.sqrt(sum(v * v for v in parts if v is not None))

    values = [(s, predict(s)) for s in steps]
    return [(s, v) for s, v in values if v is not None]


def theta_summary(run: Run) -> dict[str, Any]:
    curve = theta_curve(run)
    if not curve:
        return {"final": None, "steps": None, "pred": None, "pred_free": None, "ratio": None, "ratio_free": None}
    steps, final = curve[-1]
    pred = dict(theta_prediction_curve(run, [steps])).get(steps)
    free = dict(theta_prediction_curve(run, [steps], free=True)).get(steps)
    return {
        "final": final, "steps": steps, "pred": pred, "pred_free": free,
        "ratio": final / pred if pred else None, "ratio_free": final / free if free else None,
    }


def compute_used(run: Run, stage: int | None = None) -> dict[str, Any]:
    """Sums of the compute counters over metrics rows (of one stage when given); null if never logged."""
    rows = [r for r in run.metrics if stage is None or r.get("stage") == stage]
    out: dict[str, Any] = {}
    for name in LOGGED_COMPUTE:
        values = [r[name] for r in rows if isinstance(r.get(name), (int, float))]
        out[name] = sum(values) if values else None
    forward = out["forward_tokens"]
    out["compute_tokens"] = None if forward is None else forward + 2 * (out["backward_tokens"] or 0)
    return {name: out[name] for name in COMPUTE_FIELDS}


def new_task_gain(run: Run, new: dict[str, Any]) -> dict[str, Any]:
    """Gain over the new stage with its start and final accuracy (the final one is what a user deploys)."""
    points = eval_curve(run, new["task"], new["index"])
    if not points:
        return {"start": None, "final": None, "gain": None}
    return {"start": points[0][1], "final": points[-1][1], "gain": points[-1][1] - points[0][1]}


def run_metrics(run: Run) -> dict[str, Any]:
    """Every per-run number of the report, JSON-ready."""
    stage_list = stages(run)
    new = stage_list[-1] if stage_list else None
    steps_done = max((int(r["step"]) for r in run.metrics if r.get("step") is not None), default=0)
    status = run.status or {}
    out: dict[str, Any] = {
        "name": run.name, "path": str(run.path), "state": run.state, "message": status.get("message"),
        "seed": format_value(run.config.get("seed")) if "seed" in run.config else None,
        "method": (run.info or {}).get("method") or cfg_get(run.config, "method.name"),
        "new_task": new["task"] if new else None, "stages": len(stage_list),
        "new_stage_start": new["first_step"] - 1 if new else None,
        "steps_done": steps_done, "steps_planned": new["last_step"] if new else None,
        "skipped_steps": sum(1 for r in run.metrics if r.get("skipped")),
        "warnings": len(run.warnings),
    }
    out["prior"] = {task: prior_drift(run, task, new) if new else None for task in prior_tasks(run, stage_list)}
    out["new_task_gain"] = new_task_gain(run, new) if new else {"start": None, "final": None, "gain": None}
    out["gem"] = gem(run, stage_list)
    out["theta"] = theta_summary(run)
    out["compute"] = compute_used(run)
    out["compute_new_stage"] = compute_used(run, new["index"]) if new else compute_used(run, -1)
    out["scoring"] = scoring(run)
    return out


def stage_cost_curve(run: Run, stage: int, measure: str) -> list[Point]:
    """(step, cost of the stage through that step) from the metrics rows; [] if a row lacks the counter.
    measure: a BUDGET_MEASURES name (compute_tokens = forward + 2 x backward tokens)."""
    rows = sorted((r for r in run.metrics if r.get("stage") == stage and r.get("step") is not None),
                  key=lambda r: int(r["step"]))
    total, out = 0.0, []
    for row in rows:
        if measure == "compute_tokens":
            forward, backward = row.get("forward_tokens"), row.get("backward_tokens") or 0
            value = forward + 2 * backward if isinstance(forward, (int, float)) else None
        else:
            value = row.get(measure)
        if not isinstance(value, (int, float)):
            return []
        total += value
        out.append((int(row["step"]), total))
    return out


def at_budget(run: Run, metrics: dict[str, Any], budget: float, measure: str) -> dict[str, Any] | None:
    """The run read at the last eval of its new stage that it reached within `budget` of the new stage's cost:
    new-task gain and prior-task drift up to that eval (the same definitions as over the whole stage).
    None when the run has no new stage or never logged the measure."""
    stage_list = stages(run)
    if not stage_list:
        return None
    new = stage_list[-1]
    costs = dict(stage_cost_curve(run, new["index"], measure))
    if not costs:
        return None
    start = new["first_step"] - 1
    points = eval_curve(run, new["task"], new["index"])
    within = [step for step, _ in points if step == start or costs.get(step, math.inf) <= budget]
    if not within:
        return None
    step = max(within)
    accuracy = dict(points)
    prior = {task: drift([p for p in eval_curve(run, task, new["index"]) if p[0] <= step])
             for task in metrics["prior"]}
    return {"step": step, "steps_in_stage": step - start, "cost": costs.get(step, 0.0),
            "new_task_gain": accuracy[step] - accuracy[points[0][0]], "prior": prior}


def equal_budget(groups: list[dict[str, Any]], runs_by_group: dict[str, list[tuple[Run, dict[str, Any]]]],
                 measure: str) -> dict[str, Any] | None:
    """Every group read at the cheapest group's cost of the new stage (mean over its seeds): the comparison
    the papers' cost claims need (e.g. AWD against a 4x larger population at the compute of the smaller one).
    None with fewer than two groups, when a group never logged the measure, or when every group cost the same
    (within 1%: the whole-stage tables already are the equal-cost comparison)."""
    key = f"new_stage_{measure}"
    means = [g[key]["mean"] for g in groups if g.get(key)]
    if len(groups) < 2 or len(means) < len(groups) or None in means or max(means) <= 1.01 * min(means):
        return None
    budget = min(means)
    out: dict[str, Any] = {"measure": measure, "budget": budget, "groups": []}
    for g in groups:
        reads = [r for r in (at_budget(run, m, budget, measure) for run, m in runs_by_group[g["label"]]) if r]
        tasks = _ordered_union([list(r["prior"]) for r in reads])

        def field(get: Any, reads: list[dict[str, Any]] = reads) -> dict[str, Any]:
            return aggregate_over(reads, get)

        out["groups"].append({
            "label": g["label"], "n_runs": len(reads),
            "steps_in_stage": field(lambda r: r["steps_in_stage"]), "cost": field(lambda r: r["cost"]),
            "new_task_gain": field(lambda r: r["new_task_gain"]),
            "prior": {t: {f: field(lambda r, t=t, f=f: r["prior"][t][f]) for f in ("max_drop", "final_drop")}
                      for t in tasks},
        })
    return out


def run_curves(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    """The step curves the plots draw for one run (whole run, all stages)."""
    theta = theta_curve(run)
    steps = [s for s, _ in theta]
    new = metrics["new_task"]
    return {
        "prior": {task: eval_curve(run, task) for task in metrics["prior"]},
        "new": eval_curve(run, new) if new else [],
        "theta": theta,
        "theta_pred": theta_prediction_curve(run, steps),
        "theta_pred_free": theta_prediction_curve(run, steps, free=True),
        "new_stage_start": metrics["new_stage_start"] if len(metrics["gem"]["tasks"]) > 1 else None,
    }


def aggregate(values: list[Any]) -> dict[str, Any]:
    """Mean and spread over seeds: sample standard deviation (null below two values), min, max, n."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate_over(items: list[dict[str, Any]], get: Any) -> dict[str, Any]:
    """aggregate() of get(item) over the items that have the value (a missing key or a None on the way skips)."""
    values = []
    for item in items:
        try:
            values.append(get(item))
        except (KeyError, TypeError):
            continue
    return aggregate(values)


def mean_curve(curves: list[list[Point]]) -> dict[str, list[float]]:
    """Pointwise mean and standard deviation over runs, at every step any run has (n may vary by step)."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    out: dict[str, list[float]] = {"step": [], "mean": [], "std": [], "n": []}
    for step in sorted(by_step):
        agg = aggregate(by_step[step])
        out["step"].append(step)
        out["mean"].append(agg["mean"])
        out["std"].append(agg["std"] or 0.0)
        out["n"].append(agg["n"])
    return out


# --- groups: seeds aggregated -------------------------------------------------------------------------------


def _ordered_union(lists: list[list[str]]) -> list[str]:
    out: list[str] = []
    for items in lists:
        out.extend(i for i in items if i not in out)
    return out


def _count(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _group_scoring(per_run: list[dict[str, Any]], tasks: list[str]) -> dict[str, str]:
    """{task: the scoring modes its runs' evals used, comma-joined}; tasks no run reported a mode for are absent."""
    out: dict[str, str] = {}
    for task in dict.fromkeys(tasks):
        modes = _ordered_union([m.get("scoring", {}).get(task, "").split(",") for m in per_run])
        if any(modes):
            out[task] = ",".join(mode for mode in modes if mode)
    return out


def group_summary(group: Group, per_run: list[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Mean and spread over a group's runs of every per-run number; prior tasks filtered to `task` if given."""
    tasks = [t for t in _ordered_union([list(m["prior"]) for m in per_run]) if task in (None, t)]

    def field(get: Any) -> dict[str, Any]:
        return aggregate_over(per_run, get)

    def mean_over_tasks(m: dict[str, Any], name: str) -> float | None:
        vals = [m["prior"][t][name] for t in tasks if m["prior"].get(t) and m["prior"][t][name] is not None]
        return sum(vals) / len(vals) if vals else None

    prior = {
        t: {f: field(lambda m, t=t, f=f: m["prior"][t][f]) for f in (*DRIFT_FIELDS, *BASE_FIELDS, *MARGIN_FIELDS)}
        for t in tasks
    }

    return {
        "label": group.label, "key": group.key, "runs": [m["name"] for m in per_run], "n_runs": len(per_run),
        "states": _count([m["state"] for m in per_run]),
        "new_task": ",".join(_ordered_union([[m["new_task"] or "-"] for m in per_run])),
        "prior": prior,
        "mean_max_drop": field(lambda m: mean_over_tasks(m, "max_drop")),
        "mean_area": field(lambda m: mean_over_tasks(m, "area")),
        "mean_max_drop_from_base": field(lambda m: mean_over_tasks(m, "max_drop_from_base")),
        "new_task_gain": field(lambda m: m["new_task_gain"]["gain"]),
        "new_task_final": field(lambda m: m["new_task_gain"]["final"]),
        "scoring": _group_scoring(per_run, [*tasks, *(m["new_task"] for m in per_run if m["new_task"])]),
        "acc": field(lambda m: m["gem"]["acc"]),
        "bwt": field(lambda m: m["gem"]["bwt"]),
        "theta_final": field(lambda m: m["theta"]["final"]),
        "theta_pred": field(lambda m: m["theta"]["pred"]),
        "theta_ratio": field(lambda m: m["theta"]["ratio"]),
        "theta_ratio_free": field(lambda m: m["theta"]["ratio_free"]),
        **{name: field(lambda m, n=name: m["compute"][n]) for name in COMPUTE_FIELDS},
        **{f"new_stage_{name}": field(lambda m, n=name: m["compute_new_stage"][n]) for name in COMPUTE_FIELDS},
    }


def group_curves(curves: list[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Pointwise mean/std over a group's runs of each plotted curve."""
    tasks = [t for t in _ordered_union([list(c["prior"]) for c in curves]) if task in (None, t)]
    return {
        "prior": {t: mean_curve([c["prior"][t] for c in curves if t in c["prior"]]) for t in tasks},
        **{name: mean_curve([c[name] for c in curves]) for name in ("new", "theta", "theta_pred",
                                                                    "theta_pred_free")},
        "new_stage_start": sorted({c["new_stage_start"] for c in curves if c["new_stage_start"] is not None}),
    }


def summarize(groups: list[Group], keys: list[str], task: str | None = None,
              budget: str | None = "compute_tokens") -> tuple[dict, dict]:
    """The report's data: (summary, JSON-ready; curves by group label, for the plots). `budget`: the
    BUDGET_MEASURES cost at which groups are also compared (`equal_budget`), or None."""
    summary: dict[str, Any] = {"group_keys": keys, "task_filter": task, "groups": [], "runs": [], "problems": []}
    curves: dict[str, Any] = {}
    runs_by_group: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for group in groups:
        per_run, per_curves = [], []
        runs_by_group[group.label] = []
        for run in group.runs:
            try:  # rows of the wrong shape must not sink the whole report
                m = run_metrics(run)
                per_curves.append(run_curves(run, m))
            except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
                summary["problems"].append(f"{run.path}: cannot compute its metrics ({type(exc).__name__}: "
                                           f"{exc}); run left out")
                continue
            m["group"] = group.label
            if task is not None:
                m["prior"] = {t: v for t, v in m["prior"].items() if t == task}
            per_run.append(m)
            runs_by_group[group.label].append((run, m))
        summary["runs"].extend(per_run)
        summary["groups"].append(group_summary(group, per_run, task))
        curves[group.label] = group_curves(per_curves, task)
    summary["equal_budget"] = equal_budget(summary["groups"], runs_by_group, budget) if budget else None
    return summary, curves
