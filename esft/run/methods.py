"""Method name -> trainer. Every trainer implements the Trainer protocol (esft/core/trainer.py); the experiment
drives it through that seam and never looks inside."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from esft.core.trainer import Trainer
from esft.errors import EsftError
from esft.policy import Policy

if TYPE_CHECKING:
    from esft.run.settings import RunSettings

METHODS = ("es", "grpo", "ppo")


def validate_method_config(method: str, cfg: Mapping[str, Any]) -> None:
    """Check a method's settings before anything expensive (model loading, warm-up) happens.

    The rules live in esft/run/settings.py (one place of validation, shared with `RunSettings.from_config`); this
    entry point checks only the method's own sections (es/awd or method/awd, and the rollout backend), so it
    also serves hand-built configs that hold nothing else."""
    from esft.models.settings import PolicySection
    from esft.run.settings import MethodSection, check_backend, method_sections

    if method not in METHODS:
        raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
    if method == "grpo":
        from esft.rl.grpo import require_trl

        require_trl()
    node = {**(cfg.get("method") or {}), "name": method}
    settings = MethodSection.from_config(node)
    es, _ = method_sections(settings, cfg)
    check_backend(method, PolicySection.from_config(cfg.get("policy") or {}), es)


def build_trainer(settings: RunSettings, policy: Policy, replay_log: Callable[[dict], None]) -> Trainer:
    """The trainer of `settings.method` on `policy`, from the run's checked settings (esft/run/settings.py);
    `replay_log` receives the ES replay rows (es_updates.jsonl)."""
    method = settings.method.name
    if method == "es":
        from esft.es.trainer import ESTrainer

        return ESTrainer(policy, settings.es, settings.awd, settings.seed, replay_log, settings.eval.batch_size)
    if method == "grpo":
        from esft.rl.grpo import GRPOTrainer

        return GRPOTrainer(policy, settings.method.values, settings.awd, settings.seed, settings.checkpoint.keep)
    if method == "ppo":
        from esft.rl.ppo import PPOTrainer

        return PPOTrainer(policy, settings.method.values, settings.awd, settings.seed)
    raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
