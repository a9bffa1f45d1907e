"""Method name -> trainer. Trainers share one seam (set_stage, step, state_dict, load_state_dict,
diagnostics, finalize, num_parameters); the experiment drives them and never looks inside. A trainer whose
library owns the training loop (GRPO through TRL) offers `run_stage(stage, hooks)` instead of `step`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esft.errors import EsftError
from esft.policy import Policy

METHODS = ("es", "grpo", "ppo")


def validate_method_config(method: str, cfg: Mapping[str, Any]) -> None:
    """Check a method's settings before anything expensive (model loading, warm-up) happens.

    The rules live in esft/run/settings.py (one place of validation, shared with `RunSettings.from_config`); this
    entry point checks only the method's own sections (es/awd or method/awd, and the rollout backend), so it
    also serves hand-built configs that hold nothing else."""
    from esft.run.settings import MethodSection, PolicySection, check_backend, method_sections

    if method not in METHODS:
        raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
    if method == "grpo":
        from esft.rl.grpo import require_trl

        require_trl()
    node = {**(cfg.get("method") or {}), "name": method}
    settings = MethodSection.from_config(node)
    es, _ = method_sections(settings, cfg)
    check_backend(method, PolicySection.from_config(cfg.get("policy") or {}), es)


def build_trainer(method: str, policy: Policy, cfg: Mapping[str, Any], replay_log: Callable[[dict], None]):
    batch_size = int((cfg.get("eval") or {}).get("batch_size", 256))
    if method == "es":
        from esft.es.trainer import ESTrainer

        return ESTrainer(policy, cfg["es"], cfg["awd"], int(cfg.get("seed", 0)), replay_log, batch_size)
    if method == "grpo":
        from esft.rl.grpo import GRPOTrainer

        keep = int((cfg.get("checkpoint") or {}).get("keep", 2) or 0)
        return GRPOTrainer(policy, cfg["method"], cfg["awd"], int(cfg.get("seed", 0)), keep)
    if method == "ppo":
        from esft.rl.ppo import PPOTrainer

        return PPOTrainer(policy, cfg["method"], cfg["awd"], int(cfg.get("seed", 0)))
    raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
