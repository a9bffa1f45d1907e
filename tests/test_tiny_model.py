"""The built-in tiny model: byte-level tokenizer, config-built model, supervised warm-up and its cache."""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

import esft.models.warmup as warmup_module
from esft.errors import EsftError
from esft.models.tiny import EOS_ID, PAD_ID, _bytes_to_unicode, build_model, build_tokenizer
from esft.models.warmup import MARKER, WEIGHTS, cache_key, load_or_build_tiny

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"
TEXTS = ["12+34=", "héllo wörld 🎉 日本語", "  tabs\tand\nnewlines  ", "Ωμέγα <|pad|> ∑x²", ""]


def entries(folder: Path) -> list[str]:
    """The cache folder's entries, leaving out the build locks (`.<key>.lock`, kept for the next build)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def tiny_model_cfg(cache_dir: Path, steps: int = 30, batch_size: int = 32) -> dict[str, Any]:
    """The shipped `model` config node, shrunk to a seconds-long warm-up, caching under `cache_dir`."""
    cfg = yaml.safe_load(CONF.read_text())
    cfg["cache_dir"] = str(cache_dir)
    cfg["tiny"]["warmup"].update(steps=steps, batch_size=batch_size, warmup_steps=5)
    return cfg


def expected_parameters(tiny: dict[str, Any], vocab: int, qkv_bias: bool) -> int:
    """Parameter count from the config: tied embedding + per layer (attention, MLP, 2 RMSNorms) + final norm."""
    h, i, layers = tiny["hidden_size"], tiny["intermediate_size"], tiny["num_hidden_layers"]
    kv = h * tiny["num_key_value_heads"] // tiny["num_attention_heads"]
    attention = h * h + 2 * h * kv + h * h + ((h + 2 * kv) if qkv_bias else 0)
    return vocab * h + layers * (attention + 3 * h * i + 2 * h) + h


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_any_text_and_survives_save_load(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert loaded.encode(text) == ids
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (PAD_ID, EOS_ID, "left")
    assert len(loaded) == len(tok) == 258


def test_vocabulary_is_the_byte_level_alphabet() -> None:
    assert set(_bytes_to_unicode().values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_digits_and_operators_are_single_tokens_without_bos_eos() -> None:
    tok = build_tokenizer()
    for ch in "0123456789+-=|>":
        assert len(tok.encode(ch)) == 1, ch
    assert tok.encode("12+34=") == [ord(c) for c in "12+34="]  # id = byte value, nothing added
    assert tok.encode("é") == list("é".encode())  # one token per UTF-8 byte
    assert tok.bos_token_id is None
    batch = tok(["12+34=", "1+1="], padding=True)["input_ids"]
    assert batch[1][:2] == [PAD_ID, PAD_ID]  # left padding


# ---------------------------------------------------------------- model


@pytest.mark.parametrize(("architecture", "qkv_bias"), [("qwen2", True), ("llama", False)])
def test_model_matches_config(architecture: str, qkv_bias: bool) -> None:
    tiny = {**yaml.safe_load(CONF.read_text())["tiny"], "architecture": architecture}
    model = build_model(tiny, len(build_tokenizer()))
    assert model.config.model_type == architecture
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(tiny, 258, qkv_bias)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config._attn_implementation == "sdpa" and model.dtype == torch.float32
    assert (model.config.pad_token_id, model.config.eos_token_id) == (PAD_ID, EOS_ID)
    assert model.config.max_position_embeddings == tiny["max_position_embeddings"]


def test_default_model_size() -> None:
    tiny = yaml.safe_load(CONF.read_text())["tiny"]
    # 528,000 with the research's 18-token vocabulary; the byte-level vocabulary adds 240 x 128 embedding rows
    assert sum(p.numel() for p in build_model(tiny, 258).parameters()) == 558_720


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    tiny = yaml.safe_load(CONF.read_text())["tiny"]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_model(tiny, 258), build_model(tiny, 258)
    assert torch.equal(torch.random.get_rng_state(), before)
    c = build_model({**tiny, "init_seed": 1}, 258)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_bad_model_config_is_a_user_error() -> None:
    tiny = yaml.safe_load(CONF.read_text())["tiny"]
    with pytest.raises(EsftError, match="architecture"):
        build_model({**tiny, "architecture": "gpt2"}, 258)
    with pytest.raises(EsftError, match="hidden_size"):
        build_model({k: v for k, v in tiny.items() if k != "hidden_size"}, 258)


# ---------------------------------------------------------------- warm-up and cache


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real (30-step) warm-up through `load_or_build_tiny`, shared by the cache tests."""
    cache_dir = tmp_path_factory.mktemp("cache")
    cfg = tiny_model_cfg(cache_dir)
    lines: list[str] = []
    model, tok, metrics = load_or_build_tiny(cfg, log=lines.append)
    cache = cache_dir / "tiny" / cache_key(cfg["tiny"])[:16]
    return {"cfg": cfg, "model": model, "tok": tok, "metrics": metrics, "lines": lines, "cache": cache}


def test_warmup_lowers_loss_and_reports_accuracies(built: dict[str, Any]) -> None:
    metrics = built["metrics"]
    assert metrics["steps"] == 30
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5  # ln(15) = 2.71 -> about 2.0 in 30 steps
    assert set(metrics["accuracy"]) == {"add", "add_reversed", "reverse", "copy", "subtract"}
    assert all(0.0 <= a <= 1.0 for a in metrics["accuracy"].values())
    assert not built["model"].training


def test_cache_is_written_then_loaded_with_identical_weights(built: dict[str, Any]) -> None:
    cache: Path = built["cache"]
    assert built["lines"][0] == f"warming up the tiny model once (30 steps); cached at {cache}"
    assert (cache / MARKER).is_file() and (cache / WEIGHTS).is_file()
    assert entries(cache.parent) == [cache.name]  # the temp dir was renamed into place

    lines: list[str] = []
    model, tok, metrics = load_or_build_tiny(OmegaConf.create(built["cfg"]), log=lines.append)
    assert lines == [f"loaded the warmed-up tiny model from cache: {cache}"]  # no training happened
    assert metrics == built["metrics"]
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    original = state(built["model"])
    assert state(model).keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in state(model).items())
    assert tok.encode("12+34=") == built["tok"].encode("12+34=") and tok.padding_side == "left"


def skip_training(model: Any, tokenizer: Any, warmup_cfg: Any, log: Any) -> dict[str, Any]:
    """Stand-in for `warmup_tiny` where a test needs the cache logic, not the training (keeps the file fast)."""
    return {"seconds": 0.0, "steps": 0, "first_loss": None, "final_loss": None, "accuracy": {}}


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "no_marker"])
def test_corrupt_cache_is_rebuilt(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    cfg = {**built["cfg"], "cache_dir": str(tmp_path)}
    cache = tmp_path / "tiny" / built["cache"].name
    shutil.copytree(built["cache"], cache)
    weights = cache / WEIGHTS
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip_bytes":  # still a parsable file: only the checksum can tell
        raw = bytearray(weights.read_bytes())
        raw[-64:] = bytes(64)
        weights.write_bytes(bytes(raw))
    else:  # a half-written cache (no completion marker)
        (cache / MARKER).unlink()
    if damage != "truncate":  # one real rebuild is enough to show it reproduces the weights
        monkeypatch.setattr(warmup_module, "warmup_tiny", skip_training)

    lines: list[str] = []
    rebuilt, _, _ = load_or_build_tiny(cfg, log=lines.append)
    assert "corrupt or incomplete" in lines[0] and "rebuilding" in lines[0]
    assert lines[1].startswith("warming up the tiny model once")
    if damage == "truncate":  # same seeds -> the rebuild reproduces the weights bit for bit
        original = state(built["model"])
        assert all(torch.equal(v, original[k]) for k, v in state(rebuilt).items())
    lines.clear()
    load_or_build_tiny(cfg, log=lines.append)
    assert lines == [f"loaded the warmed-up tiny model from cache: {cache}"]


def test_losing_the_publish_race_uses_the_winners_copy(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {**built["cfg"], "cache_dir": str(tmp_path)}
    cache = tmp_path / "tiny" / built["cache"].name

    def other_process_publishes_meanwhile(*args: Any) -> dict[str, Any]:
        shutil.copytree(built["cache"], cache)
        return skip_training(*args)

    monkeypatch.setattr(warmup_module, "warmup_tiny", other_process_publishes_meanwhile)
    lines: list[str] = []
    model, _, metrics = load_or_build_tiny(cfg, log=lines.append)
    assert any(line.startswith("another process cached the tiny model") for line in lines)
    assert metrics == built["metrics"]
    original = state(built["model"])
    assert all(torch.equal(v, original[k]) for k, v in state(model).items())
    assert entries(cache.parent) == [cache.name]  # our temp copy was removed


def test_temp_dirs_of_killed_saves_are_removed_once_stale(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {**built["cfg"], "cache_dir": str(tmp_path)}
    name = built["cache"].name
    stale, young = tmp_path / "tiny" / f".{name}.tmp-killed", tmp_path / "tiny" / f".{name}.tmp-saving-now"
    for leftover in (stale, young):
        leftover.mkdir(parents=True)
        (leftover / WEIGHTS).write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    monkeypatch.setattr(warmup_module, "warmup_tiny", skip_training)
    load_or_build_tiny(cfg, log=lambda line: None)
    assert entries(tmp_path / "tiny") == sorted([name, young.name])


def test_cache_key_tracks_the_config() -> None:
    tiny = yaml.safe_load(CONF.read_text())["tiny"]
    other = copy.deepcopy(tiny)
    other["warmup"]["seed"] = 1
    assert cache_key(tiny) == cache_key(OmegaConf.create(tiny)) == cache_key(dict(reversed(list(tiny.items()))))
    assert cache_key(other) != cache_key(tiny)
