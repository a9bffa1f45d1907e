"""Build a Policy from the `model` and `policy` config sections: the built-in tiny model (warmed up once and
cached), a packaged GGUF's cached conversion (SmolLM2), a Hugging Face hub id or a local directory, and,
with `policy.backend=vllm`, the vLLM engine that mirrors it.

The experiment (and `esft replay`) call `load_policy`; the Policy itself knows nothing of where models come
from, of tasks (the tiny model's warm-up trains on them) or of backends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from esft.errors import EsftError
from esft.policy import Policy

log = logging.getLogger("esft")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EsftError(f"model.device={name} but no CUDA device is available; use model.device=cpu")
    return torch.device(name)


def resolve_backend(policy_cfg: Mapping[str, Any]) -> str:
    """`policy.backend`: hf (default) or vllm, checked (vLLM importable, CUDA present) before any model loads."""
    backend = str(policy_cfg.get("backend") or "hf")  # no policy section (esft replay, scripts): no engine
    if backend not in ("hf", "vllm"):
        raise EsftError(f"unknown policy.backend '{backend}'; use hf or vllm")
    if backend == "vllm":
        from esft.backends.vllm_backend import require_vllm

        require_vllm()
    return backend


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise EsftError(f"unknown model.dtype '{name}'; use float32, bfloat16 or float16")
    return DTYPES[name]


def _load_hf(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.exists() and path.is_dir():
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if not has_weights:
            raise EsftError(f"model directory '{name}' holds no weights (*.safetensors); "
                            "save one with save_pretrained or pass a Hugging Face model id")
    elif path.exists():
        raise EsftError(f"model.name '{name}' is a file; pass a directory saved with save_pretrained or a hub id")
    else:
        from esft.models.hub import ensure_model_reachable

        ensure_model_reachable(name)  # hub unreachable: one line now, not ~20 retry lines over ~45 s
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, use_safetensors=True)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EsftError(f"cannot load model '{name}': {first} (offline? pass a local directory)") from None
    return model, tokenizer


def load_policy(model_cfg: Mapping[str, Any], log_fn: Callable[[str], None] = log.info,
                policy_cfg: Mapping[str, Any] | None = None) -> Policy:
    """The Policy of a `model` section (conf/model/*.yaml declares name, dtype, device, chat_template) and an
    optional `policy` section (the rollout backend)."""
    name = str(model_cfg["name"])
    device = resolve_device(str(model_cfg["device"]))
    dtype = resolve_dtype(str(model_cfg["dtype"]))
    policy_cfg = policy_cfg or {}
    backend = resolve_backend(policy_cfg)
    if name == "tiny":
        from esft.models.warmup import load_or_build_tiny

        model, tokenizer, _ = load_or_build_tiny(model_cfg, log=log_fn)
        model = model.to(dtype)
    else:
        from esft.models.packaged import resolve_model_name

        name = resolve_model_name(model_cfg, log_fn)  # a packaged GGUF's cached conversion, or the name
        model, tokenizer = _load_hf(name, dtype)
    setting = model_cfg["chat_template"]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting is True and not has_template:
        raise EsftError(f"model.chat_template=true but the tokenizer of '{name}' has no chat template")
    use_template = has_template if setting in ("auto", None) else bool(setting)
    engine = None
    if backend == "vllm":  # before the HF model moves to the GPU: vLLM sizes its KV cache from free memory
        from esft.backends.vllm_backend import build_generator

        engine = build_generator(name, model, tokenizer, model_cfg, policy_cfg, dtype)
    return Policy(model, tokenizer, device, use_template, engine)
