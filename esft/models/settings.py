"""model.* and policy.*, typed and checked once: which model (the tiny shape, a hub id, a directory), where
and in what dtype it runs, and the rollout backend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from esft.core.config import choice, flag, integer, need, number, section, text
from esft.errors import EsftError


@dataclass(frozen=True)
class PolicySection:
    """policy.*: how rollouts run (HF generate or one vLLM engine)."""

    backend: str
    gpu_memory_utilization: float | None  # vllm only; None where a config leaves the vllm keys out
    enforce_eager: bool | None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "PolicySection":
        memory, eager = node.get("gpu_memory_utilization"), node.get("enforce_eager")
        return cls(choice(node.get("backend") or "hf", "policy.backend", ("hf", "vllm")),  # absent = no engine
                   None if memory is None else number(memory, "policy.gpu_memory_utilization", low=0, high=1,
                                                      low_open=True),
                   None if eager is None else flag(eager, "policy.enforce_eager"))


@dataclass(frozen=True)
class TinySection:
    """model.tiny.*: the built-in Qwen2/Llama shape. Heads must split the hidden size into even head dims
    (rotary embeddings rotate pairs of coordinates) and the key/value heads must divide the query heads (GQA)."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "TinySection":
        from esft.models.tiny import _ARCHITECTURES

        get = lambda key: need(node, key, "model.tiny")  # noqa: E731
        shape = {key: integer(get(key), f"model.tiny.{key}", low=1) for key in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings")}
        tiny = cls(architecture=choice(get("architecture"), "model.tiny.architecture", tuple(_ARCHITECTURES)),
                   **shape)
        heads, hidden = tiny.num_attention_heads, tiny.hidden_size
        if hidden % heads or (hidden // heads) % 2:
            raise EsftError(f"model.tiny.hidden_size={hidden} must split into num_attention_heads={heads} heads "
                            "of an even size (rotary embeddings); e.g. hidden_size=128 with 4 heads")
        if heads % tiny.num_key_value_heads:
            raise EsftError(f"model.tiny.num_key_value_heads={tiny.num_key_value_heads} must divide "
                            f"num_attention_heads={heads}")
        integer(get("init_seed"), "model.tiny.init_seed", low=0)
        if "warmup" in node:
            _check_warmup(section(node, "warmup"))
        return tiny

    def num_parameters(self) -> int:
        """Parameters of the tiny model (tied embeddings), counted on the meta device: no memory, no init."""
        return _tiny_parameters(self)


@lru_cache(maxsize=64)  # a sweep's points mostly share one shape
def _tiny_parameters(tiny: TinySection) -> int:
    from dataclasses import asdict

    import torch

    from esft.models.tiny import _ARCHITECTURES, EOS_ID, PAD_ID, build_tokenizer, model_config

    _, model_cls = _ARCHITECTURES[tiny.architecture]
    config = model_config(asdict(tiny), len(build_tokenizer()), PAD_ID, EOS_ID)
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())


def _check_warmup(node: Mapping[str, Any]) -> None:
    """model.tiny.warmup.*: the supervised warm-up (esft/models/warmup.py)."""
    where = "model.tiny.warmup"
    integer(need(node, "steps", where), f"{where}.steps", low=0)
    integer(need(node, "batch_size", where), f"{where}.batch_size", low=1)
    number(need(node, "lr", where), f"{where}.lr", low=0, low_open=True)
    integer(need(node, "warmup_steps", where), f"{where}.warmup_steps", low=0)
    number(need(node, "weight_decay", where), f"{where}.weight_decay", low=0)
    number(need(node, "grad_clip", where), f"{where}.grad_clip", low=0, low_open=True)
    integer(need(node, "seed", where), f"{where}.seed", low=0)
    betas = need(node, "betas", where)
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise EsftError(f"{where}.betas must be two numbers in [0, 1) (got {betas!r})")
    for index, beta in enumerate(betas):
        number(beta, f"{where}.betas[{index}]", low=0, high=1, high_open=True)
    mix = need(node, "mix", where)
    if not isinstance(mix, Mapping) or not mix:
        raise EsftError(f"{where}.mix must map task names to weights (got {mix!r})")
    weights = [number(value, f"{where}.mix.{name}", low=0) for name, value in mix.items()]
    if sum(weights) <= 0:
        raise EsftError(f"{where}.mix needs at least one positive weight (got {dict(mix)})")


@dataclass(frozen=True)
class ModelSection:
    """model.*: a hub id, a local directory, or the built-in tiny model (with its `tiny` shape)."""

    name: str
    dtype: str
    device: str
    chat_template: bool | str
    cache_dir: str | None
    tiny: TinySection | None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "ModelSection":
        name = text(need(node, "name", "model"), "model.name")
        device = text(need(node, "device", "model"), "model.device")
        if device not in ("cpu", "cuda", "auto") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise EsftError(f"unknown model.device '{device}'; use cpu, cuda, cuda:N or auto")
        template = need(node, "chat_template", "model")
        if not (isinstance(template, bool) or template == "auto"):
            raise EsftError(f"model.chat_template must be auto, true or false (got {template!r})")
        tiny = TinySection.from_config(section(node, "tiny")) if name == "tiny" else None
        # cache_dir is where the warm-up lives, not what a run computes: config_fingerprint drops it from the
        # run's config, so a config that went through a fingerprint may lack it (None)
        cache_dir = None if node.get("cache_dir") is None else text(node["cache_dir"], "model.cache_dir")
        return cls(name, choice(need(node, "dtype", "model"), "model.dtype", ("float32", "bfloat16", "float16")),
                   device, template, cache_dir, tiny)

    @property
    def context(self) -> int | None:
        """Tokens the model can attend over, when known before loading it (the tiny model's config)."""
        return self.tiny.max_position_embeddings if self.tiny else None
