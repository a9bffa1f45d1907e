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

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.core.awd import AWDSection
from esft.core.config import integer, need, section
from esft.errors import EsftError
from esft.es.settings import ESSection
from esft.evaluation.settings import EvalSection
from esft.models.settings import ModelSection, PolicySection
from esft.rl.settings import check_rl_settings

#: bytes of host bookkeeping per population member and step (seed, reward, shaped value, coefficient as Python
#: objects and numpy rows); only matters for absurd population sizes, which it turns into a clear refusal.
BYTES_PER_MEMBER = 128


@dataclass(frozen=True)
class CheckpointSection:
    """checkpoint.*: every=0 saves only at stage ends; keep=0 keeps every checkpoint."""

    every: int
    keep: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "CheckpointSection":
        return cls(integer(need(node, "every", "checkpoint"), "checkpoint.every", low=0,
                           what="; 0 = only at stage ends"),
                   integer(need(node, "keep", "checkpoint"), "checkpoint.keep", low=0, what="; 0 = keep all"))


@dataclass(frozen=True)
class ProgressSection:
    log_every: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "ProgressSection":
        return cls(integer(need(node, "log_every", "progress"), "progress.log_every", low=1))


@dataclass(frozen=True)
class DistributedSection:
    """distributed.*: checksum_every=0 compares the ranks' weights only at the end."""

    checksum_every: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> "DistributedSection":
        return cls(integer(need(node, "checksum_every", "distributed"), "distributed.checksum_every", low=0,
                           what="; 0 = only at the end"))


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
            check_rl_settings(name, node)
        return cls(str(name), dict(node))


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
            seed=integer(need(cfg, "seed"), "seed", low=0, what="; e.g. seed=0"),
            steps=integer(need(cfg, "steps"), "steps", low=0),
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
