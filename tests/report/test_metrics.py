"""Drift metrics over fabricated runs with known curves; every expected number is computed by hand here."""

from __future__ import annotations

import json
import math

import pytest

from esft.errors import EsftError
from esft.report.grouping import differing_keys, flatten, group_runs
from esft.report.load import load_run, load_runs
from esft.report.metrics import aggregate, drift, paired_margin, predicted_theta, run_metrics, summarize
from esft.storage.rundir import EVALS_FILE, METRICS_FILE

approx = pytest.approx


def test_drift_of_a_hand_curve() -> None:
    # the prior task before the new stage (step 4): 0.9; then 0.5, 0.3, 0.6 at steps 6, 8, 10
    d = drift([(4, 0.9), (6, 0.5), (8, 0.3), (10, 0.6)])
    assert d["start"] == 0.9 and d["min"] == 0.3 and d["final"] == 0.6
    assert d["max_drop"] == approx(0.6)
    assert d["final_drop"] == approx(0.3)
    assert d["recovery"] == approx(0.3)
    assert d["min_step"] == 8 and d["min_step_in_stage"] == 4
    # deficits 0, 0.4, 0.6, 0.3 every 2 steps: 2*(0+0.4)/2 + 2*(0.4+0.6)/2 + 2*(0.6+0.3)/2 = 2.3, over 6 steps
    assert d["area"] == approx(2.3 / 6)


def test_drift_edge_cases() -> None:
    assert drift([]) is None
    only_start = drift([(4, 0.7)])
    assert only_start["max_drop"] == 0 and only_start["area"] is None
    rising = drift([(0, 0.5), (5, 0.8), (10, 0.9)])
    assert rising["max_drop"] == 0 and rising["min_step"] == 0 and rising["final_drop"] == approx(-0.4)
    assert rising["area"] == 0
    # ties: the first step reaching the minimum; uneven spacing: deficits 0, 0.2, 0.2 at 0, 1, 4
    tied = drift([(0, 0.6), (1, 0.4), (4, 0.4)])
    assert tied["min_step"] == 1
    assert tied["area"] == approx((1 * 0.2 / 2 + 3 * 0.2) / 4)


def test_paired_margin_by_hand() -> None:
    # d = before - after = [1, 0, 0, 0]: mean 0.25, sample variance (0.75^2 + 3 * 0.25^2) / 3 = 0.25
    assert paired_margin("1111", "0111") == approx(1.96 * math.sqrt(0.25 / 4))
    assert paired_margin("1010", "1010") == 0.0  # no item changed its outcome
    assert paired_margin("101", "1010") is None  # different item sets cannot be paired
    assert paired_margin(None, "1") is None and paired_margin("1", "0") is None  # n < 2
    assert paired_margin("1x", "10") is None


def test_prior_drift_carries_paired_margins_where_rows_have_outcomes(make_run) -> None:
    run_dir = make_run()
    rows = [json.loads(line) for line in (run_dir / EVALS_FILE).read_text().splitlines()]
    # subtract over the new stage (0.8, 0.7, 0.7, 0.8 at steps 4-10) as 10 items; min first at step 6
    outcomes = {4: "1111111100", 6: "0111111100", 8: "1011111100", 10: "1111111100"}
    for row in rows:
        if row["task"] == "subtract" and row["step"] in outcomes:
            row["correct"] = outcomes[row["step"]]
    (run_dir / EVALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sub = run_metrics(load_run(run_dir))["prior"]["subtract"]
    # max drop (4 -> 6): d has one 1 among 10: mean 0.1, variance (0.81 + 9 * 0.01) / 9 = 0.1
    assert sub["max_drop_margin"] == approx(1.96 * math.sqrt(0.1 / 10))
    assert sub["final_drop_margin"] == 0.0
    assert run_metrics(load_run(make_run("plain")))["prior"]["subtract"]["final_drop_margin"] is None


def test_run_metrics_two_stage_curriculum(make_run) -> None:
    m = run_metrics(load_run(make_run()))
    assert m["state"] == "done" and m["new_task"] == "reverse" and m["new_stage_start"] == 4
    assert list(m["prior"]) == ["add", "subtract"]  # earlier curriculum task, then the eval-only task
    add = m["prior"]["add"]
    assert (add["start"], add["min"], add["min_step"], add["final"]) == (0.9, 0.3, 8, 0.6)
    assert (add["max_drop"], add["final_drop"], add["recovery"]) == (approx(0.6), approx(0.3), approx(0.3))
    assert add["area"] == approx(2.3 / 6)
    sub = m["prior"]["subtract"]  # 0.8, 0.7, 0.7, 0.8 over steps 4..10
    assert sub["max_drop"] == approx(0.1) and sub["min_step"] == 6
    assert sub["final_drop"] == approx(0.0) and sub["recovery"] == approx(0.1)
    assert sub["area"] == approx((2 * 0.1 / 2 + 2 * 0.1 + 2 * 0.1 / 2) / 6)
    assert m["new_task_gain"] == {"start": 0.5, "final": 0.9, "gain": approx(0.4)}


def test_gem_matrix_acc_bwt(make_run) -> None:
    gem = run_metrics(load_run(make_run()))["gem"]
    assert gem["tasks"] == ["add", "reverse"]
    assert gem["R"] == [[0.9, 0.5], [0.6, 0.9]]  # stage_end evals at steps 4 and 10
    assert gem["acc"] == approx((0.6 + 0.9) / 2)
    assert gem["bwt"] == approx(0.6 - 0.9)


def test_single_stage_eval_tasks_are_prior_and_bwt_is_null(make_run) -> None:
    m = run_metrics(load_run(make_run(prior=[])))
    assert m["stages"] == 1 and list(m["prior"]) == ["subtract"]
    # subtract 0.8, 0.8, 0.8, 0.7 at steps 0, 2, 4, 6
    assert m["prior"]["subtract"]["max_drop"] == approx(0.1) and m["prior"]["subtract"]["min_step"] == 6
    assert m["gem"]["R"] == [[0.6]] and m["gem"]["acc"] == approx(0.6) and m["gem"]["bwt"] is None


def test_theta_fit_without_and_with_awd(make_run) -> None:
    # D=4000, N=16, alpha=0.01, T=10, antithetic: alpha*sqrt(T*D/N)*sqrt(N/(N-1)) = 0.5*sqrt(16/15); measured 0.6
    pairs = math.sqrt(16 / 15)
    plain = run_metrics(load_run(make_run("plain", lam=0.0)))["theta"]
    assert plain["final"] == approx(0.6) and plain["steps"] == 10
    assert plain["pred"] == approx(0.5 * pairs) and plain["ratio"] == approx(1.2 / pairs)
    assert plain["ratio_free"] == approx(1.2 / pairs)
    awd = run_metrics(load_run(make_run("awd", lam=5.0)))["theta"]
    c = 0.01 * 5.0  # pulled after each update: sum over j = 1..10 of (1-c)^(2j)
    expected = 0.01 * pairs * math.sqrt(4000 / 16 * sum((1 - c) ** (2 * j) for j in range(1, 11)))
    assert awd["pred"] == approx(expected) and awd["ratio"] == approx(0.6 / expected)
    assert awd["pred_free"] == approx(0.5 * pairs)


def test_theta_prediction_without_pairs_and_other_shaping(make_run) -> None:
    run = load_run(make_run())
    run.config["es"]["antithetic"] = False
    assert run_metrics(run)["theta"]["pred"] == approx(0.5)  # z-scores of N rewards: sum of squares N exactly
    run.config["es"]["shaping"] = "centered_rank"
    assert run_metrics(run)["theta"]["pred"] is None  # ranks have another sum of squares: no prediction


def test_theta_prediction_with_a_stage_anchor_adds_the_stages_walks(make_run) -> None:
    run = load_run(make_run(lam=5.0))
    run.config["awd"]["anchor"] = "stage"
    c, pairs = 0.05, math.sqrt(16 / 15)
    # stage 0: steps 1-4 around theta0, stage 1: steps 5-10 around theta_4; independent, so variances add
    expected = math.hypot(predicted_theta(4, 0.01, 4000, 16, c, True), predicted_theta(6, 0.01, 4000, 16, c, True))
    assert run_metrics(run)["theta"]["pred"] == approx(expected)
    assert expected > 0.01 * pairs * math.sqrt(4000 / 16 * sum((1 - c) ** (2 * j) for j in range(1, 11)))


def test_predicted_theta_saturates() -> None:
    assert predicted_theta(100, 0.01, 1600, 16) == approx(0.01 * math.sqrt(100 * 100))
    assert predicted_theta(100, 0.01, 1600, 16, antithetic=True) == approx(math.sqrt(16 / 15))
    c = 0.1
    saturation = 0.01 * (1 - c) * math.sqrt(1600 / (16 * (2 * c - c * c)))
    assert predicted_theta(10_000, 0.01, 1600, 16, c) == approx(saturation)
    assert predicted_theta(1, 0.01, 1600, 16, c) == approx(0.01 * math.sqrt(100) * (1 - c))  # pulled once
    assert predicted_theta(10, 0.0, 1600, 16) is None
    assert predicted_theta(10, 0.01, 1600, 16, c=1.0) is None  # not a contraction (AWD refuses it too)


def test_pair_factor_matches_a_simulated_random_reward_walk() -> None:
    """The derivation in pair_factor, checked by sampling: random rewards, z-scored, N=4 with pairs."""
    import numpy as np

    from esft.es.strategy import ESSettings, tell
    from esft.report.metrics import pair_factor

    rng = np.random.default_rng(0)
    for antithetic in (True, False):
        settings = ESSettings(population_size=4, sigma=1.0, alpha=1.0, antithetic=antithetic)
        sums = [sum(c * c for c in tell(rng.normal(size=4), settings).coefficients) for _ in range(20_000)]
        # E|u|^2 / (alpha^2 D / N) = E[sum_k c_k^2] / N
        assert math.sqrt(np.mean(sums) / 4) == approx(pair_factor(4, antithetic), rel=0.01)


def test_compute_totals(make_run) -> None:
    m = run_metrics(load_run(make_run(pop=8)))
    assert m["compute"] == {"compute_tokens": 10_000, "forward_tokens": 10_000, "backward_tokens": None,
                            "population_evals": 80, "generated_tokens": 1000, "seconds": 5.0}
    assert m["compute_new_stage"]["forward_tokens"] == 6000 and m["compute_new_stage"]["population_evals"] == 48


def test_compute_tokens_weigh_backward_twice(make_run) -> None:
    run = load_run(make_run(pop=8))
    for row in run.metrics:
        row["backward_tokens"] = 100
    m = run_metrics(run)
    assert m["compute"]["backward_tokens"] == 1000 and m["compute"]["compute_tokens"] == 10_000 + 2 * 1000


def test_running_run_reports_what_it_has(make_run) -> None:
    m = run_metrics(load_run(make_run(state="running", until=7)))
    assert m["state"] == "running" and m["steps_done"] == 7 and m["steps_planned"] == 10
    assert m["prior"]["add"]["final"] == 0.5 and m["prior"]["add"]["final_step"] == 6  # latest eval so far
    assert m["gem"]["acc"] is None and m["gem"]["bwt"] is None
    assert m["theta"]["steps"] == 7


def test_missing_status_is_partial_and_failed_is_kept(make_run) -> None:
    assert load_run(make_run("a", state=None)).state == "partial"
    failed = run_metrics(load_run(make_run("b", state="failed", until=5, message="CUDA OOM")))
    assert failed["state"] == "failed" and failed["message"] == "CUDA OOM"


def test_corrupt_line_is_skipped_with_a_message(make_run) -> None:
    path = make_run()
    lines = (path / METRICS_FILE).read_text().splitlines(keepends=True)
    lines[2] = lines[2][:15] + "\n"  # step 3, torn
    (path / METRICS_FILE).write_text("".join(lines))
    run = load_run(path)
    assert len(run.warnings) == 1
    assert run.warnings[0].startswith(f"{path / METRICS_FILE}: line 3 is not valid JSON")
    assert [r["step"] for r in run.metrics] == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_aggregate_mean_and_sample_std() -> None:
    agg = aggregate([0.6, 0.4, None])
    assert agg["mean"] == approx(0.5) and agg["std"] == approx(math.sqrt(0.02)) and agg["n"] == 2
    assert aggregate([0.3])["std"] is None
    assert aggregate([])["mean"] is None


def test_grouping_labels_name_the_differences(make_run) -> None:
    runs = [load_run(make_run(f"r{i}", seed=s, lam=lam, pop=pop))
            for i, (s, lam, pop) in enumerate([(0, 0.0, 16), (1, 0.0, 16), (0, 1.0, 16), (0, 0.0, 32)])]
    assert flatten(runs[0].config)["prior.tasks"] == "add"
    assert differing_keys(runs) == ["awd.lambda", "es.population_size"]  # seed is ignored
    groups, keys = group_runs(runs)
    assert [g.label for g in groups] == ["awd.lambda=0, es.population_size=16",
                                         "awd.lambda=0, es.population_size=32",
                                         "awd.lambda=1, es.population_size=16"]
    assert [len(g.runs) for g in groups] == [2, 1, 1]
    by_pop, keys = group_runs(runs, ["population_size"])  # a unique suffix is enough
    assert keys == ["es.population_size"] and [g.label for g in by_pop] == ["es.population_size=16",
                                                                            "es.population_size=32"]
    with pytest.raises(EsftError, match="--group-by nope"):
        group_runs(runs, ["nope"])


def test_group_summary_averages_seeds(make_run) -> None:
    other = {"add": [0.2, 0.6, 0.8, 0.6, 0.2, 0.5],  # before 0.8, min 0.2 @ 8, final 0.5
             "reverse": [0.5, 0.5, 0.5, 0.6, 0.8, 0.9], "subtract": [0.8, 0.8, 0.8, 0.7, 0.7, 0.8]}
    runs = [load_run(make_run("s0", seed=0)), load_run(make_run("s1", seed=1, curves=other))]
    groups, keys = group_runs(runs)
    assert keys == [] and groups[0].label == "all runs"
    summary, curves = summarize(groups, keys)
    add = summary["groups"][0]["prior"]["add"]
    assert add["start"]["mean"] == approx(0.85) and add["min"]["mean"] == approx(0.25)
    assert add["max_drop"]["mean"] == approx(0.6) and add["max_drop"]["std"] == approx(0.0)
    assert add["final_drop"]["mean"] == approx(0.3) and add["min_step"]["mean"] == 8
    assert summary["groups"][0]["acc"]["mean"] == approx((0.75 + 0.7) / 2)
    mean = curves["all runs"]["prior"]["add"]
    assert mean["step"] == [0, 2, 4, 6, 8, 10] and mean["mean"][2] == approx(0.85)
    filtered, _ = summarize(groups, keys, task="subtract")
    assert list(filtered["groups"][0]["prior"]) == ["subtract"]


def test_load_runs_finds_sweep_jobs_and_reports_empty_paths(make_sweep, tmp_path) -> None:
    root = make_sweep("sweep", [dict(lam=0.0), dict(lam=1.0), dict(lam=0.0, seed=1)])
    (tmp_path / "empty").mkdir()
    loaded = load_runs([str(root), str(tmp_path / "empty"), str(tmp_path / "swe*")])
    assert [r.name for r in loaded.runs] == ["0_awd.lambda=0.0", "1_awd.lambda=1.0", "2_awd.lambda=0.0,seed=1"]
    assert len(loaded.messages) == 1 and "empty: no runs found" in loaded.messages[0]
    assert (root / "0_awd.lambda=0.0" / EVALS_FILE).exists()


def test_run_names_drop_the_overrides_every_job_shares(make_sweep) -> None:
    root = make_sweep("sweep", [dict(lam=0.0, pop=16), dict(lam=1.0, pop=16)])
    assert [r.name for r in load_runs([str(root)]).runs] == ["0_awd.lambda=0.0", "1_awd.lambda=1.0"]


def test_keys_added_to_the_schema_later_do_not_split_groups(make_run) -> None:
    from esft.report.grouping import differing_keys

    old, new = load_run(make_run(name="old")), load_run(make_run(name="new"))
    new.config["policy"] = {"backend": "hf"}
    assert differing_keys([old, new]) == []
    other = load_run(make_run(name="other"))
    other.config["policy"] = {"backend": "vllm"}
    assert differing_keys([old, new, other]) == ["policy.backend"]


def test_groups_are_compared_at_equal_cost_of_the_new_stage(make_run) -> None:
    """pop=16 costs 16 evals a step, pop=32 twice that: at the budget of the cheaper group (6 new-stage steps
    x 16 = 96 evals) the pop=32 runs are read at step 6, two steps into the new stage (64 <= 96 < 128)."""
    runs = [load_run(make_run(f"p{pop}s{seed}", seed=seed, pop=pop)) for pop in (16, 32) for seed in (0, 1)]
    groups, keys = group_runs(runs)
    summary, _ = summarize(groups, keys, budget="population_evals")
    budget = summary["equal_budget"]
    assert budget["measure"] == "population_evals" and budget["budget"] == 96
    cheap, dear = budget["groups"]
    assert cheap["label"].endswith("=16") and dear["label"].endswith("=32")
    # the cheap group is read at its end: add 0.9 -> min 0.3, final 0.6; reverse 0.5 -> 0.9
    assert cheap["steps_in_stage"]["mean"] == 6 and cheap["cost"]["mean"] == 96
    assert cheap["prior"]["add"]["max_drop"]["mean"] == approx(0.6)
    assert cheap["prior"]["add"]["final_drop"]["mean"] == approx(0.3)
    assert cheap["new_task_gain"]["mean"] == approx(0.4)
    # the dear group at step 6: add 0.9 -> 0.5, reverse 0.5 -> 0.6, subtract 0.8 -> 0.7
    assert dear["steps_in_stage"]["mean"] == 2 and dear["cost"]["mean"] == 64 and dear["n_runs"] == 2
    assert dear["prior"]["add"]["max_drop"]["mean"] == approx(0.4)
    assert dear["prior"]["subtract"]["final_drop"]["mean"] == approx(0.1)
    assert dear["new_task_gain"]["mean"] == approx(0.1)
    # the whole-stage numbers are untouched, and one group (or --budget none) has no equal-budget view
    assert summary["groups"][1]["new_task_gain"]["mean"] == approx(0.4)
    assert summarize(groups, keys, budget=None)[0]["equal_budget"] is None
    assert summarize(groups[:1], keys)[0]["equal_budget"] is None
    same_cost = [load_run(make_run(f"l{lam}", lam=lam)) for lam in (0.0, 1.0)]
    groups, keys = group_runs(same_cost)
    assert summarize(groups, keys)[0]["equal_budget"] is None, "equal costs: the main tables already compare"


def test_drop_from_the_base_model_shows_drift_before_the_new_stage(make_run) -> None:
    """The issue's case: an eval-only task falls 99% -> 70% in stage A, then to 24% in stage B. The new stage's
    max drop is 46 points; measured from the base model (the run's first eval) it is 75."""
    curves = {"add": [0.2, 0.6, 0.9, 0.5, 0.3, 0.6], "reverse": [0.5, 0.5, 0.5, 0.6, 0.8, 0.9],
              "subtract": [0.99, 0.8, 0.70, 0.5, 0.24, 0.3]}
    m = run_metrics(load_run(make_run(curves=curves)))
    sub = m["prior"]["subtract"]
    assert sub["start"] == 0.70 and sub["max_drop"] == approx(0.46)
    assert sub["base"] == 0.99 and sub["base_step"] == 0
    assert sub["max_drop_from_base"] == approx(0.75) and sub["final_drop_from_base"] == approx(0.69)
    add = m["prior"]["add"]  # learned in stage A from 20%: never below the base model
    assert add["base"] == 0.2 and add["max_drop_from_base"] == 0 and add["final_drop_from_base"] == approx(-0.4)
    groups, keys = group_runs([load_run(make_run("again", curves=curves))])
    group = summarize(groups, keys)[0]["groups"][0]
    assert group["prior"]["subtract"]["max_drop_from_base"]["mean"] == approx(0.75)
    assert group["mean_max_drop_from_base"]["mean"] == approx(0.75 / 2)
    assert group["new_task_final"]["mean"] == approx(0.9)


def test_a_running_run_measures_from_base_only_up_to_its_latest_eval(make_run) -> None:
    m = run_metrics(load_run(make_run(state="running", until=7)))
    assert m["prior"]["add"]["final_drop_from_base"] == approx(0.2 - 0.5)  # its latest eval is step 6


def test_positions_that_cannot_place_a_row_skip_it(tmp_path) -> None:
    from esft.report.load import read_jsonl_tolerant

    path = tmp_path / "rows.jsonl"
    path.write_text('{"step": 1.0, "x": 1}\n{"step": 2.5}\n{"step": "3"}\n{"stage": -Infinity}\n'
                    '{"step": 5, "x": Infinity}\n{"step": 6, "x": NaN}\n{"step": 7, "nested": {"y": NaN}}\n'
                    '{"step": 8, "accuracy": true, "task": "t"}\n')
    rows, warnings = read_jsonl_tolerant(path)
    assert [r["step"] for r in rows] == [1, 5, 6, 7, 8] and isinstance(rows[0]["step"], int)
    assert rows[4] == {"step": 8, "accuracy": None, "task": "t"}  # a bool is no accuracy
    assert rows[1]["x"] is None and rows[2]["x"] is None
    assert warnings == [f"{path}: line 2: step is 2.5, not an integer; line skipped",
                        f"{path}: line 3: step is '3', not an integer; line skipped",
                        f"{path}: line 4: stage is -inf, not an integer; line skipped",
                        f"{path}: lines 5, 6: x is not a finite number; that value ignored",
                        f"{path}: line 8: accuracy is not a finite number; that value ignored"]


def test_scoring_modes_per_task(make_run) -> None:
    run = load_run(make_run())
    for row in run.evals:
        row["scoring"] = "loglik" if row["task"] == "subtract" else None
    run.evals[-1]["scoring"] = "generate" if run.evals[-1]["task"] == "subtract" else run.evals[-1]["scoring"]
    m = run_metrics(run)
    assert m["scoring"] == {"subtract": "loglik,generate"}
    groups, keys = group_runs([run])
    assert summarize(groups, keys)[0]["groups"][0]["scoring"] == {"subtract": "loglik,generate"}
