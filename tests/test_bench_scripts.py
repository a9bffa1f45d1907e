"""The benchmark scripts run end to end (on shrunken workloads) and print the JSON the README promises.

Timings are not asserted (speed targets live in the benchmarks, not in tests); the point is that the one
GPU run a session may get is not lost to a Python error in a path the CPU workloads do not take (members
timed on a subset, no per-method warm-up, bf16).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _main_json(script, argv: list[str], capsys) -> dict:
    """Run a script's main (restoring torch's thread count, which the scripts set) and parse its last line."""
    previous = torch.get_num_threads()
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_es_prints_the_headline_json(monkeypatch, capsys):
    bench = _load("bench_es")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2}
    tiny = replace(bench.WORKLOADS["tiny"], population=4, prompts=8, repeats=2)
    # the GPU workload's code paths (subset of members timed, one global warm-up, bf16), shrunk to run on a CPU
    gpu_like = replace(bench.WORKLOADS["gpu05b"], shape={**bench.WORKLOADS["gpu05b"].shape, **small}, vocab=258,
                       population=4, prompts=4, new_tokens=4, sequential_members=2, needs_cuda=False,
                       batch_size=16)
    monkeypatch.setattr(bench, "WORKLOADS", {"tiny": tiny, "gpu05b": gpu_like})
    headline = _main_json(bench, ["--workload", "all", "--threads", "1", "--json"], capsys)
    for key in ("speedup_vs_reference", "fraction_of_inference", "peak_rss_mb"):
        assert headline[key] > 0, key
    assert headline["headline_workload"] == "tiny"
    workloads = {w["workload"]: w for w in headline["workloads"]}
    assert workloads["gpu05b"]["dtype"] == "bfloat16" and workloads["gpu05b"]["sequential_members"] == 2
    assert workloads["gpu05b"]["methods"]["reference"]["members"] == 2
    assert workloads["gpu05b"]["methods"]["lowrank"]["members"] == 4


def test_bench_es_dtype_overrides_the_workloads(monkeypatch, capsys):
    bench = _load("bench_es")
    tiny = replace(bench.WORKLOADS["tiny"], population=2, prompts=4, repeats=1)
    monkeypatch.setattr(bench, "WORKLOADS", {"tiny": tiny})
    result = _main_json(bench, ["--workload", "tiny", "--threads", "1", "--dtype", "bfloat16", "--json"], capsys)
    result = result["workloads"][0]
    assert result["dtype"] == "bfloat16"


def test_bench_es_refuses_an_unknown_workload():
    bench = _load("bench_es")
    with pytest.raises(SystemExit):
        bench.main(["--workload", "bogus"])


def test_bench_noise_times_chunked_and_unchunked_draws(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # as when the script runs: it imports bench_es beside it
    bench = _load("bench_noise")
    small = ({"architecture": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}, 258)
    monkeypatch.setattr(bench, "SHAPES", {"small": small})
    result = _main_json(bench, ["--model", "small", "--threads", "2", "--repeats", "1", "--json"], capsys)
    assert result["numel"] == sum(bench.parameter_sizes("small"))
    assert set(result["seconds_per_draw"]) == {"chunked, 1 thread", "chunked, 2 threads", "unchunked, 1 thread",
                                               "unchunked, 2 threads"}
    assert all(seconds > 0 for seconds in result["seconds_per_draw"].values())


def test_bench_noise_measures_philox_and_prints_the_step_model(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = _load("bench_noise")
    small = ({"architecture": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}, 258)
    monkeypatch.setattr(bench, "SHAPES", {"small": small})
    previous = torch.get_num_threads()
    try:
        assert bench.main(["--model", "small", "--philox", "--threads", "2", "--repeats", "1", "--json"]) == 0
        philox = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["philox"]
        assert bench.main(["--step-model", "--repeats", "1", "--json"]) == 0
        model = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        torch.set_num_threads(previous)
    assert {"philox eager, 1 thread (ns/number)", "torch.randn, 2 threads (ns/number)",
            "philox full draw, 2 threads (s)"} <= set(philox)
    assert all(value > 0 for value in philox.values())
    assert set(model["estimate"]) == set(bench.MODEL_NUMEL)
    for row in model["estimate"].values():  # the new design never does more noise work than the old one
        assert row["new compiled (s)"] < row["new eager (s)"] < row["old total (s)"]


def test_bench_es_real_model_workload_uses_the_preset_task(monkeypatch, capsys):
    """The smollm2 workload's code path (a model loaded through esft, the preset's task and its reward, the
    preset's sigma/alpha/lambda) on a SmolLM2-shaped random Llama instead of the 135M weights."""
    bench = _load("bench_es")
    from tests.models.test_llama_path import llama_policy

    monkeypatch.setattr(bench, "load_model_policy", lambda w, device: llama_policy())
    assert bench.WORKLOADS["smollm2"].on_request  # real weights: never part of the default (auto) run
    smol = replace(bench.WORKLOADS["smollm2"], population=4, prompts=3, new_tokens=3, repeats=1)
    monkeypatch.setattr(bench, "WORKLOADS", {"smollm2": smol})
    result = _main_json(bench, ["--workload", "smollm2", "--threads", "1", "--json"], capsys)["workloads"][0]
    assert result["workload"] == "smollm2" and result["prompts"] == 3
    assert set(result["methods"]) >= {"reference", "inplace", "lowrank", "inference-seq", "inference-batched"}
    task = bench.build_task(smol, llama_policy())
    assert [e.prompt for e in task.examples][0].startswith("What is ") and len(task.examples) == 3
    assert task.score(f"{task.examples[0].answer}", task.examples[0]) == 1.0


def test_probe_prior_drift_scores_the_priors_along_one_ray(monkeypatch, capsys):
    """The displacement probe on a SmolLM2-shaped random Llama and the fixture's PIQA rows: r=0 is the base
    (drop 0), the weights are back at theta0 afterwards, and the plain-ES step estimate grows as r^2."""
    probe = _load("probe_prior_drift")
    from esft.models.tiny import build_model, build_tokenizer
    from esft.policy import Policy
    from tests.models.test_llama_path import SMOL_SHAPED

    tokenizer = build_tokenizer()  # bytes: PIQA's options need a longer context than the shared test Llama's
    model = build_model({**SMOL_SHAPED, "max_position_embeddings": 1024}, len(tokenizer))
    policy = Policy(model, tokenizer, torch.device("cpu"), use_chat_template=False)
    before = [p.detach().clone() for p in policy.model.parameters()]
    monkeypatch.setattr(probe, "load_policy", lambda cfg, log_fn: policy)
    data = Path(__file__).parent / "data"
    result = _main_json(probe, ["--data-dir", str(data), "--tasks", "piqa", "--n", "6", "--radii", "0,5,10",
                                "--threads", "1", "--json"], capsys)
    rows = result["rows"]
    assert [r["radius"] for r in rows] == [0.0, 5.0, 10.0] and result["n"] == 6
    assert rows[0]["tasks"]["piqa"]["drop"] == 0.0
    assert rows[2]["plain_es_steps"] == pytest.approx(4 * rows[1]["plain_es_steps"])
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))


def test_probe_prior_drift_places_trained_models_at_their_own_distance(monkeypatch, capsys, tmp_path):
    """--models: a saved model (here theta0 moved by a known vector) is scored paired against theta0 at its
    measured |theta - theta0|; a folder of another model is one clear error."""
    probe = _load("probe_prior_drift")
    from esft.models.tiny import build_model, build_tokenizer
    from esft.policy import Policy
    from tests.models.test_llama_path import SMOL_SHAPED

    tokenizer = build_tokenizer()
    model = build_model({**SMOL_SHAPED, "max_position_embeddings": 1024}, len(tokenizer))
    policy = Policy(model, tokenizer, torch.device("cpu"), use_chat_template=False)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    expected = sum(p.numel() for p in model.parameters()) ** 0.5 * 0.01
    (tmp_path / "run" / "final_model").mkdir(parents=True)
    model.save_pretrained(tmp_path / "run" / "final_model")
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), before):
            p.copy_(p0)
    monkeypatch.setattr(probe, "load_policy", lambda cfg, log_fn: policy)
    data = Path(__file__).parent / "data"
    args = ["--data-dir", str(data), "--tasks", "piqa", "--n", "6", "--threads", "1", "--json"]
    rows = _main_json(probe, [*args, "--radii", "0", "--models", str(tmp_path / "run")], capsys)["rows"]
    assert rows[1]["model"] == str(tmp_path / "run") and rows[1]["radius"] == pytest.approx(expected, rel=1e-4)
    assert rows[0]["tasks"]["piqa"]["drop"] == 0.0 and "drop_se" in rows[1]["tasks"]["piqa"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # back at theta0
    other = build_model({**SMOL_SHAPED, "num_hidden_layers": 1}, len(tokenizer))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match="no weights for"):
        probe.main([*args, "--radii", "0", "--models", str(tmp_path / "other")])
