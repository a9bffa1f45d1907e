"""The run's settings, typed and validated once, before anything expensive runs.

`RunSettings.from_config(cfg)` turns the composed Hydra config (a plain mapping) into small frozen dataclasses,
one per section (es, awd, eval with kl, checkpoint, policy, progress, distributed, model, the RL method's
settings), and refuses any bad value with one `EsftError` line that names the key, the value and the fix.

Why here and once: a bad value that slips through costs a model load, a warm-up and often a whole run before it
shows (an `es.sigma=inf` run trains to "done" on NaN weights; `es.population_size=1e9` sits for minutes before
anything is written). So every number is checked to be finite and in range, every count to be an integer, every
choice to be among the known ones, and the sections against each other and the model (the tiny model's hidden
size must split into heads, the context must hold a prompt plus the generation budget, the population must fit
in memory). The defaults live in conf/ only: these classes read each key that conf/ declares and never
re-state a default.

The ES and AWD rules themselves are `esft.es.strategy.ESSettings.validate` and `esft.core.awd.validate_awd`; this
module only feeds them checked numbers and adds what they cannot know (finiteness, the model, memory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from esft.errors import EsftError

#: es.alpha above this is refused: the update moves each weight by about alpha * sqrt(2/N) standard normal
#: units per step (z-scored rewards, antithetic pairs), so alpha = 1 already replaces a pretrained weight
#: (|w| ~ 0.02) with noise in one step; the papers use 5e-4 to 1e-2.
ALPHA_MAX = 1.0
ALPHA_HINT = ("; es.alpha is the ES learning rate (theta += alpha/N sum z eps), the papers use 5e-4 to 1e-2, "
              "e.g. es.alpha=0.01")
#: bytes of host bookkeeping per population member and step (seed, reward, shaped value, coefficient as Python
#: objects and numpy rows); only matters for absurd population sizes, which it turns into a clear refusal.
BYTES_PER_MEMBER = 128


# -- value checks: each returns the checked value or raises one line naming key, value and fix -----------------


def number(value: Any, key: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within [low, high] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EsftError(f"{key} must be a number (got {value!r}); e.g. {key}=0.01")
    result = float(value)
    if not math.isfinite(result):
        bounds = _range(low, high, low_open, high_open)
        raise EsftError(f"{key} must be a finite number{' ' + bounds if low is not None or high is not None else ''}"
                        f" (got {value!r})" + (ALPHA_HINT if key == "es.alpha" else ""))
    too_low = low is not None and (result <= low if low_open else result < low)
    too_high = high is not None and (result >= high if high_open else result > high)
    if too_low or too_high:
        raise EsftError(f"{key} must be {_range(low, high, low_open, high_open)} (got {value!r})"
                        + (ALPHA_HINT if key == "es.alpha" and too_high else ""))
    return result


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts) if parts else "use a finite value"


def integer(value: Any, key: str, *, low: int | None = None, what: str = "") -> int:
    """An integer (not a bool, not a float) >= low."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EsftError(f"{key} must be an integer (got {value!r}){what}")
    if low is not None and value < low:
        raise EsftError(f"{key} must be an integer >= {low} (got {value!r}){what}")
    return value


def optional_integer(value: Any, key: str, *, low: int, what: str = "") -> int | None:
    return None if value is None else integer(value, key, low=low, what=what)


def flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise EsftError(f"{key} must be true or false (got {value!r})")
    return value


def choice(value: Any, key: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise EsftError(f"unknown {key} '{value}'; use one of: {', '.join(options)}")
    return value


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EsftError(f"{key} must be a non-empty string (got {value!r})")
    return value


def section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    node = cfg.get(key)
    if not isinstance(node, Mapping):
        raise EsftError(f"config section '{key}' is missing or not a mapping (got {node!r}); "
                        "see `esft train --cfg job`")
    return node


def _need(node: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in node:
        name = f"{where}.{key}" if where else key
        raise EsftError(f"config key {name} is missing; declare it (see conf/ and `esft train --cfg job`)")
    return node[key]


# -- sections -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ESSection:
    """es.*: the ES update (Qiu et al. 2025) and how a population is evaluated."""

    population_size: int
    sigma: float
    alpha: float
    antithetic: bool
    shaping: str
    evaluator: str
    rank: int | None  # lowrank only; None where a hand-built config leaves the lowrank keys out
    freeze_nonmatrix: bool | None
    prompts_per_step: int | None
    cache_noise: bool | str
    noise: str

    @classmethod
    def from_config(cls, es: Mapping[str, Any]) -> "ESSection":
        from esft.es.noise import NOISE_SETTINGS
        from esft.es.population import EVALUATORS
        from esft.es.shaping import SHAPERS

        get = lambda key: _need(es, key, "es")  # noqa: E731
        size = integer(get("population_size"), "es.population_size", low=2, what="; e.g. es.population_size=16")
        settings = cls(
            population_size=size,
            sigma=number(get("sigma"), "es.sigma", low=0, low_open=True),
            alpha=number(get("alpha"), "es.alpha", low=0, high=ALPHA_MAX, low_open=True),
            antithetic=flag(get("antithetic"), "es.antithetic"),
            shaping=choice(get("shaping"), "es.shaping", tuple(SHAPERS)),
            evaluator=choice(get("evaluator"), "es.evaluator", tuple(EVALUATORS)),
            rank=optional_integer(es.get("rank"), "es.rank", low=1),
            freeze_nonmatrix=None if es.get("freeze_nonmatrix") is None else flag(es["freeze_nonmatrix"],
                                                                                  "es.freeze_nonmatrix"),
            prompts_per_step=optional_integer(get("prompts_per_step"), "es.prompts_per_step", low=1,
                                              what=" or null (all prompts)"),
            cache_noise=_cache_noise(get("cache_noise")),
            noise=choice(get("noise"), "es.noise", NOISE_SETTINGS),
        )
        settings.strategy().validate()  # the ES rules (even N with pairs, ...) have one home: ESSettings
        return settings

    def strategy(self):
        """The `esft.es.strategy.ESSettings` the update itself uses."""
        from esft.es.strategy import ESSettings

        return ESSettings(self.population_size, self.sigma, self.alpha, self.antithetic, self.shaping)

    @property
    def draws(self) -> int:
        return self.population_size // 2 if self.antithetic else self.population_size


def _cache_noise(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() == "auto"):
        return value
    raise EsftError(f"es.cache_noise must be true, false or auto (got {value!r})")


@dataclass(frozen=True)
class AWDSection:
    """awd.*: Anchored Weight Decay (Schweighofer et al. 2026); c = alpha * lambda per step."""

    kind: str
    lam: float
    anchor: str

    @classmethod
    def from_config(cls, awd: Mapping[str, Any], alpha: float, alpha_key: str = "es.alpha") -> "AWDSection":
        from esft.core.awd import AWD_KINDS, validate_awd

        kind = choice(_need(awd, "kind", "awd"), "awd.kind", AWD_KINDS)
        lam = number(_need(awd, "lambda", "awd"), "awd.lambda", low=0)
        anchor = str(_need(awd, "anchor", "awd"))
        validate_awd(kind, lam, alpha, anchor)  # the contraction rule (alpha*lambda < 1 for L2) lives there
        return cls(kind, lam, anchor)


@dataclass(frozen=True)
class KLSection:
    """eval.kl.*: off-task KL(p_theta || p_theta0) on base-model continuations (the AWD paper's diagnostic)."""

    enabled: bool
    tasks: list[Any] | None
    samples: int
    max_new_tokens: int
    batch_size: int

    @classmethod
    def from_config(cls, kl: Mapping[str, Any]) -> "KLSection":
        tasks = kl.get("tasks")
        if tasks is not None and not isinstance(tasks, (list, tuple, str)):
            raise EsftError(f"eval.kl.tasks must be a list of task names or null (got {tasks!r})")
        return cls(flag(_need(kl, "enabled", "eval.kl"), "eval.kl.enabled"),
                   None if tasks is None else list(tasks) if not isinstance(tasks, str) else [tasks],
                   integer(_need(kl, "samples", "eval.kl"), "eval.kl.samples", low=1),
                   integer(_need(kl, "max_new_tokens", "eval.kl"), "eval.kl.max_new_tokens", low=1),
                   integer(_need(kl, "batch_size", "eval.kl"), "eval.kl.batch_size", low=1))


@dataclass(frozen=True)
class EvalSection:
    """eval.*: what every checkpoint scores. every=0 means no periodic evaluations (stage start/end only)."""

    every: int
    tasks: list[Any]
    size: int | None
    batch_size: int
    layer_distances: bool
    kl: KLSection

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "EvalSection":
        tasks = node.get("tasks")
        if tasks is not None and not isinstance(tasks, (list, tuple, str, Mapping)):
            raise EsftError(f"eval.tasks must be a list of task names or specs (got {tasks!r})")
        return cls(
            every=integer(_need(node, "every", "eval"), "eval.every", low=0, what="; 0 = no periodic evaluations"),
            tasks=[] if tasks is None else [tasks] if isinstance(tasks, (str, Mapping)) else list(tasks),
            size=optional_integer(_need(node, "size", "eval"), "eval.size", low=1,
                                  what="; examples scored per task (null = every example)"),
            batch_size=integer(_need(node, "batch_size", "eval"), "eval.batch_size", low=1),
            layer_distances=flag(_need(node, "layer_distances", "eval"), "eval.layer_distances"),
            kl=KLSection.from_config(section(node, "kl")),
        )


@dataclass(frozen=True)
class CheckpointSection:
    """checkpoint.*: every=0 saves only at stage ends; keep=0 keeps every checkpoint."""

    every: int
    keep: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "CheckpointSection":
        return cls(integer(_need(node, "every", "checkpoint"), "checkpoint.every", low=0,
                           what="; 0 = only at stage ends"),
                   integer(_need(node, "keep", "checkpoint"), "checkpoint.keep", low=0, what="; 0 = keep all"))


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
class ProgressSection:
    log_every: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "ProgressSection":
        return cls(integer(_need(node, "log_every", "progress"), "progress.log_every", low=1))


@dataclass(frozen=True)
class DistributedSection:
    """distributed.*: checksum_every=0 compares the ranks' weights only at the end."""

    checksum_every: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "DistributedSection":
        return cls(integer(_need(node, "checksum_every", "distributed"), "distributed.checksum_every", low=0,
                           what="; 0 = only at the end"))


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

        get = lambda key: _need(node, key, "model.tiny")  # noqa: E731
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
    integer(_need(node, "steps", where), f"{where}.steps", low=0)
    integer(_need(node, "batch_size", where), f"{where}.batch_size", low=1)
    number(_need(node, "lr", where), f"{where}.lr", low=0, low_open=True)
    integer(_need(node, "warmup_steps", where), f"{where}.warmup_steps", low=0)
    number(_need(node, "weight_decay", where), f"{where}.weight_decay", low=0)
    number(_need(node, "grad_clip", where), f"{where}.grad_clip", low=0, low_open=True)
    integer(_need(node, "seed", where), f"{where}.seed", low=0)
    betas = _need(node, "betas", where)
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise EsftError(f"{where}.betas must be two numbers in [0, 1) (got {betas!r})")
    for index, beta in enumerate(betas):
        number(beta, f"{where}.betas[{index}]", low=0, high=1, high_open=True)
    mix = _need(node, "mix", where)
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
        name = text(_need(node, "name", "model"), "model.name")
        device = text(_need(node, "device", "model"), "model.device")
        if device not in ("cpu", "cuda", "auto") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise EsftError(f"unknown model.device '{device}'; use cpu, cuda, cuda:N or auto")
        template = _need(node, "chat_template", "model")
        if not (isinstance(template, bool) or template == "auto"):
            raise EsftError(f"model.chat_template must be auto, true or false (got {template!r})")
        tiny = TinySection.from_config(section(node, "tiny")) if name == "tiny" else None
        # cache_dir is where the warm-up lives, not what a run computes: config_fingerprint drops it from the
        # run's config, so a config that went through a fingerprint may lack it (None)
        cache_dir = None if node.get("cache_dir") is None else text(node["cache_dir"], "model.cache_dir")
        return cls(name, choice(_need(node, "dtype", "model"), "model.dtype", ("float32", "bfloat16", "float16")),
                   device, template, cache_dir, tiny)

    @property
    def context(self) -> int | None:
        """Tokens the model can attend over, when known before loading it (the tiny model's config)."""
        return self.tiny.max_position_embeddings if self.tiny else None


#: the RL baselines' numeric settings: keys that must be > 0, integer counts >= 1, and numbers >= 0
_RL_POSITIVE = {"grpo": ("learning_rate", "temperature", "max_grad_norm"),
                "ppo": ("learning_rate", "temperature", "max_grad_norm")}
_RL_COUNTS = {"grpo": ("num_generations", "prompts_per_step"),
              "ppo": ("num_generations", "prompts_per_step", "epochs", "minibatches")}
_RL_NONNEGATIVE = {"grpo": ("beta", "epsilon"), "ppo": ("beta", "clip", "vf_clip", "vf_coef", "gamma", "lam")}
_RL_FRACTIONS = ("top_p",)


@dataclass(frozen=True)
class MethodSection:
    """method.*: which trainer, and for the RL baselines (GRPO, PPO) their settings (conf/method/*.yaml)."""

    name: str
    values: Mapping[str, Any]

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "MethodSection":
        from esft.run.methods import METHODS

        name = node.get("name")
        if name not in METHODS:
            raise EsftError(f"unknown method '{name}'; available methods: {', '.join(METHODS)}")
        if name == "grpo":
            from esft.rl.grpo import require_trl

            require_trl()  # GRPO runs through TRL, an extra: say so before the model loads
        if name in ("grpo", "ppo"):
            _check_rl(name, node)
        return cls(str(name), dict(node))


def _check_rl(method: str, node: Mapping[str, Any]) -> None:
    where = "method"
    for key in _RL_POSITIVE[method]:
        if key in node or key != "max_grad_norm":
            number(_need(node, key, where), f"method.{key}", low=0, low_open=True)
    for key in _RL_COUNTS[method]:
        integer(_need(node, key, where), f"method.{key}", low=1)
    for key in _RL_NONNEGATIVE[method]:
        if key in node or key == "beta":
            number(_need(node, key, where), f"method.{key}", low=0)
    for key in _RL_FRACTIONS:
        if key in node:
            number(node[key], f"method.{key}", low=0, high=1, low_open=True)
    if method == "grpo" and node["num_generations"] < 2:
        raise EsftError("method.num_generations must be >= 2 for GRPO (advantages are relative within a group)")
    optional_integer(node.get("max_completion_length"), "method.max_completion_length", low=1,
                     what=" or null (the task's own budget)")


# -- the whole run ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """Every section of one run, checked against each other. Built by `from_config`, never by hand."""

    seed: int
    steps: int
    data_dir: str | None
    method: MethodSection
    es: ESSection | None
    awd: AWDSection
    eval: EvalSection
    checkpoint: CheckpointSection
    policy: PolicySection
    progress: ProgressSection
    distributed: DistributedSection
    model: ModelSection

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RunSettings":
        """Validate the composed config (plain containers, interpolations resolved); one EsftError line if bad."""
        method = method_settings(cfg)
        es, awd = method_sections(method, cfg)
        data_dir = cfg.get("data_dir")
        if data_dir is not None and not isinstance(data_dir, str):
            raise EsftError(f"data_dir must be a path or null (got {data_dir!r})")
        settings = cls(
            seed=integer(_need(cfg, "seed"), "seed", low=0, what="; e.g. seed=0"),
            steps=integer(_need(cfg, "steps"), "steps", low=0),
            data_dir=data_dir, method=method, es=es, awd=awd,
            eval=EvalSection.from_config(section(cfg, "eval")),
            checkpoint=CheckpointSection.from_config(section(cfg, "checkpoint")),
            policy=PolicySection.from_config(cfg.get("policy") or {}),
            progress=ProgressSection.from_config(section(cfg, "progress")),
            distributed=DistributedSection.from_config(section(cfg, "distributed")),
            model=ModelSection.from_config(section(cfg, "model")),
        )
        check_backend(method.name, settings.policy, es)
        prior = cfg.get("prior") or {}
        if isinstance(prior, Mapping) and prior.get("steps") is not None:
            integer(prior["steps"], "prior.steps", low=0, what=" or null (the top-level steps)")
        settings.check_fits_model()
        return settings

    def check_fits_model(self) -> None:
        """Refuse what the model cannot hold: a KL continuation longer than the context, a population whose
        noise cache or bookkeeping exceeds the memory of the machine."""
        context = self.model.context
        if context is not None and self.eval.kl.enabled and self.eval.kl.max_new_tokens >= context:
            raise EsftError(f"eval.kl.max_new_tokens={self.eval.kl.max_new_tokens} leaves no room for a prompt in the "
                            f"model's context ({context} tokens); use at most {context // 2}")
        if self.es is not None and self.model.tiny is not None:
            check_population_memory(self.es, self.model.tiny.num_parameters(), self.model.device)


def method_settings(cfg: Mapping[str, Any]) -> MethodSection:
    return MethodSection.from_config(section(cfg, "method"))


def method_sections(method: MethodSection, cfg: Mapping[str, Any]) -> tuple[ESSection | None, AWDSection]:
    """The ES section (method=es) and AWD with its learning rate: es.alpha for ES, method.learning_rate for RL
    (AdamW-style decoupled decay, c = learning_rate * lambda)."""
    if method.name == "es":
        es = ESSection.from_config(section(cfg, "es"))
        return es, AWDSection.from_config(section(cfg, "awd"), es.alpha)
    try:
        return None, AWDSection.from_config(section(cfg, "awd"), float(method.values["learning_rate"]))
    except EsftError as exc:
        raise EsftError(f"{exc} (for method={method.name}, alpha is method.learning_rate)") from None


def check_backend(method: str, policy: PolicySection, es: ESSection | None) -> None:
    """policy.backend=vllm mirrors the weights FlatParams writes; other weight writers would leave it stale."""
    if policy.backend == "hf":
        return
    if method != "es":
        raise EsftError(f"policy.backend=vllm supports method=es only (method={method} updates the HF model "
                        "with an optimizer the engine does not follow); use policy.backend=hf")
    if es is not None and es.evaluator != "inplace":
        raise EsftError("policy.backend=vllm needs es.evaluator=inplace (lowrank members live in forward hooks "
                        "of the HF model, which the engine does not run); use es.evaluator=inplace")


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux /proc/meminfo MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def population_memory(es: ESSection, num_parameters: int) -> tuple[int, bool]:
    """(bytes one ES step needs beyond the model, whether the N/2 noise draws are cached).

    The fp32 master and the anchor theta0 (2 x 4D bytes), the update direction (4D), the cached draws when
    es.cache_noise keeps them (draws x 4D; `auto` keeps them only under CACHE_NOISE_BUDGET), and a fixed
    bookkeeping cost per member."""
    from esft.es.population import resolve_cache_noise

    cached = _quiet_cache_choice(resolve_cache_noise, es, num_parameters)
    weights = 3 * 4 * num_parameters
    draws = es.draws * 4 * num_parameters if cached else 0
    return weights + draws + es.population_size * BYTES_PER_MEMBER, cached


def _quiet_cache_choice(resolve, es: ESSection, num_parameters: int) -> bool:
    import logging

    logger = logging.getLogger("esft")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the choice is announced once, by the trainer, not by this estimate
    try:
        return resolve(es.cache_noise, es.evaluator, es.draws, num_parameters)
    finally:
        logger.setLevel(level)


def device_memory(device: str) -> int | None:
    """Bytes a step's tensors may use: host memory available on CPU, the GPU's total memory on CUDA."""
    if not str(device).startswith("cuda"):
        return available_memory()
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(torch.device(device))[1])


def check_population_memory(es: ESSection, num_parameters: int, device: str = "cpu",
                            available: int | None = None) -> None:
    """Refuse an es.population_size (or es.cache_noise=true) whose step cannot fit in memory: from the config
    for the tiny model (its parameter count is known without loading it), after loading for hub models."""
    needed, cached = population_memory(es, num_parameters)
    if available is None and device in ("auto", "cuda"):
        return  # resolved to a concrete device once the model is loaded (Experiment.setup checks again)
    available = device_memory(device) if available is None else available
    if available is None or needed <= available:
        return
    weights = 3 * 4 * num_parameters
    if weights > available:
        raise EsftError(f"the model's {num_parameters:,} parameters need about {weights / 2**30:.1f} GiB for ES's "
                        f"fp32 master, anchor and update alone but {available / 2**30:.1f} GiB are available on "
                        f"{device}; use a device with more memory (model.device) or a smaller model")
    noise = es.draws * 4 * num_parameters if cached else 0
    parts = (f"{es.draws:,} cached noise draws of {num_parameters:,} parameters: {noise / 2**30:.1f} GiB, "
             if cached else "") + f"{es.population_size:,} members' bookkeeping: "
    parts += f"{es.population_size * BYTES_PER_MEMBER / 2**30:.1f} GiB"
    fix = "set es.cache_noise=auto or false" if noise > available / 2 else "lower es.population_size"
    raise EsftError(f"es.population_size={es.population_size} needs about {needed / 2**30:.1f} GiB per step "
                    f"({parts}) but {available / 2**30:.1f} GiB are available; {fix}")


def check_task_budget(name: str, max_new_tokens: int, context: int | None, key: str) -> None:
    """A task's generation budget must leave room for a prompt in the model's context."""
    if context is not None and max_new_tokens >= context:
        raise EsftError(f"{key}={max_new_tokens} (task '{name}') leaves no room for a prompt in the model's "
                        f"context ({context} tokens); use at most {context // 2}, e.g. {key}={context // 4}")
