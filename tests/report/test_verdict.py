"""The verdict lines: which groups are compared, and the wording computed from their numbers."""

from __future__ import annotations

from typing import Any

from esft.report.verdict import comparable_pairs, verdict


def agg(mean: float | None, std: float | None = None, n: int = 1) -> dict[str, Any]:
    return {"mean": mean, "std": std, "n": n if mean is not None else 0}


def group(key: dict[str, str], drop: float, base_drop: float, final: float, gain: float, n: int = 1,
          std: float | None = None) -> dict[str, Any]:
    return {"label": ", ".join(f"{k}={v}" for k, v in key.items()), "key": key, "n_runs": n, "new_task": "reverse",
            "prior": {"subtract": {"max_drop": agg(drop, std, n), "max_drop_from_base": agg(base_drop, std, n)}},
            "new_task_final": agg(final, std, n), "new_task_gain": agg(gain, std, n)}


def test_one_setting_apart_is_compared_and_one_seed_makes_no_claim() -> None:
    summary = {"groups": [group({"awd.lambda": "0"}, 0.47, 0.75, 0.977, 0.655),
                          group({"awd.lambda": "1"}, 0.01, 0.03, 0.997, 0.582)]}
    assert verdict(summary) == [
        "awd.lambda=1 (vs 0) cut the max drop of subtract from 47.0 to 1.0 points in the new stage "
        "(75.0 -> 3.0 from the base model) (n=1 seed each: no spread, no claim)",
        "awd.lambda=1 (vs 0): new task reverse ended at 99.7% vs 97.7%, gain 58.2 vs 65.5 points "
        "(n=1 seed each: no spread, no claim)",
    ]


def test_seeds_spread_decides_the_wording() -> None:
    close = {"groups": [group({"k": "a"}, 0.30, 0.30, 0.9, 0.4, n=3, std=0.05),
                        group({"k": "b"}, 0.25, 0.25, 0.9, 0.4, n=3, std=0.05)]}
    assert verdict(close)[0].endswith("(n=3 seeds each; the gap is within the two seed spreads added)")
    same = {"groups": [group({"k": "a"}, 0.30, 0.30, 0.9, 0.4), group({"k": "b"}, 0.3, 0.3, 0.9, 0.4)]}
    assert verdict(same)[0].startswith("k=b (vs a) left the max drop of subtract at 30.0 points")
    worse = {"groups": [group({"k": "a"}, 0.1, 0.1, 0.9, 0.4), group({"k": "b"}, 0.3, 0.3, 0.9, 0.4)]}
    assert verdict(worse)[0].startswith("k=b (vs a) raised the max drop of subtract from 10.0 to 30.0")


def test_groups_two_settings_apart_are_never_compared() -> None:
    g = [group({"awd.lambda": "0", "pop": "16"}, 0.5, 0.5, 0.9, 0.4),
         group({"awd.lambda": "1", "pop": "32"}, 0.1, 0.1, 0.9, 0.4)]
    assert comparable_pairs(g) == []
    assert verdict({"groups": g}) == ["no two groups differ in exactly one setting: no comparison drawn (see the "
                                      "tables)"]
    grid = [group({"l": a, "p": b}, 0.5, 0.5, 0.9, 0.4) for a in ("0", "1") for b in ("16", "32")]
    pairs = [(x["label"], y["label"], k) for x, y, k in comparable_pairs(grid)]
    assert pairs == [("l=0, p=16", "l=0, p=32", "p"), ("l=0, p=16", "l=1, p=16", "l"),
                     ("l=0, p=32", "l=1, p=32", "l"), ("l=1, p=16", "l=1, p=32", "p")]


def test_a_single_group_states_its_drops() -> None:
    summary = {"groups": [group({}, 0.46, 0.75, 0.9, 0.4)]}
    assert verdict(summary) == ["subtract: max drop 46.0 points in the new stage, 75.0 from the base model "
                                "(n=1 seed: no spread, no claim)"]


def test_the_settings_held_fixed_are_named() -> None:
    g = [group({"awd.lambda": "0", "pop": "16"}, 0.5, 0.5, 0.9, 0.4),
         group({"awd.lambda": "0", "pop": "32"}, 0.1, 0.1, 0.9, 0.4)]
    assert verdict({"groups": g})[0].startswith("pop=32 (vs 16; awd.lambda=0) cut the max drop of subtract from 50.0")
