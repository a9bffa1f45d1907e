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
    """Check a method's settings before anything expensive (model loading, warm-up) happens."""
    if method not in METHODS:
        raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
    if method == "es":
        from esft.es.awd import validate_awd
        from esft.es.noise import NOISE_MODES
        from esft.es.population import EVALUATORS, resolve_cache_noise
        from esft.es.strategy import ESSettings

        es, awd = cfg["es"], cfg["awd"]
        settings = ESSettings(es["population_size"], _number(es["sigma"], "es.sigma"),
                              _number(es["alpha"], "es.alpha"), bool(es["antithetic"]), str(es["shaping"]))
        settings.validate()
        validate_awd(str(awd["kind"]), _number(awd["lambda"], "awd.lambda"), settings.alpha, str(awd["anchor"]))
        if es.get("evaluator") not in EVALUATORS:
            raise EsftError(f"unknown es.evaluator '{es.get('evaluator')}'; use one of: {', '.join(EVALUATORS)}")
        if es.get("noise", "iid") not in NOISE_MODES:
            raise EsftError(f"unknown es.noise '{es.get('noise')}'; use one of: {', '.join(NOISE_MODES)}")
        resolve_cache_noise(es.get("cache_noise", "auto"), str(es.get("evaluator")), 1, 0)  # the value's form
        count = es.get("prompts_per_step")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise EsftError(f"es.prompts_per_step must be a positive integer or null (got {count!r})")
    if method in ("grpo", "ppo"):
        _validate_rl(method, cfg)
    _validate_backend(method, cfg)


def _validate_backend(method: str, cfg: Mapping[str, Any]) -> None:
    """policy.backend=vllm mirrors the weights FlatParams writes; other weight writers would leave it stale."""
    backend = str((cfg.get("policy") or {}).get("backend", "hf") or "hf")
    if backend == "hf":
        return
    if backend != "vllm":
        raise EsftError(f"unknown policy.backend '{backend}'; use hf or vllm")
    if method != "es":
        raise EsftError(f"policy.backend=vllm supports method=es only (method={method} updates the HF model "
                        "with an optimizer the engine does not follow); use policy.backend=hf")
    if str(cfg["es"].get("evaluator", "inplace")) != "inplace":
        raise EsftError("policy.backend=vllm needs es.evaluator=inplace (lowrank members live in forward hooks "
                        "of the HF model, which the engine does not run); use es.evaluator=inplace")


#: method-config keys that must be positive numbers / positive integers / non-negative numbers, per baseline
_RL_POSITIVE = {"grpo": ("learning_rate", "temperature"), "ppo": ("learning_rate", "temperature")}
_RL_COUNTS = {"grpo": ("num_generations", "prompts_per_step"),
              "ppo": ("num_generations", "prompts_per_step", "epochs", "minibatches")}
_RL_NONNEGATIVE = {"grpo": ("beta",), "ppo": ("beta", "clip", "vf_clip", "vf_coef", "gamma", "lam")}


def _validate_rl(method: str, cfg: Mapping[str, Any]) -> None:
    """GRPO / PPO settings (cfg.method.*) and AWD with c = learning_rate * awd.lambda."""
    from esft.es.awd import validate_awd

    if method == "grpo":
        from esft.rl.grpo import require_trl

        require_trl()
    node, awd = cfg["method"], cfg["awd"]
    for key in _RL_POSITIVE[method]:
        if _number(node.get(key), f"method.{key}") <= 0:
            raise EsftError(f"method.{key} must be > 0 (got {node.get(key)!r})")
    for key in _RL_COUNTS[method]:
        value = node.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EsftError(f"method.{key} must be a positive integer (got {value!r})")
    for key in _RL_NONNEGATIVE[method]:
        if _number(node.get(key), f"method.{key}") < 0:
            raise EsftError(f"method.{key} must be >= 0 (got {node.get(key)!r})")
    if method == "grpo" and node["num_generations"] < 2:
        raise EsftError("method.num_generations must be >= 2 for GRPO (advantages are relative within a group)")
    length = node.get("max_completion_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise EsftError(f"method.max_completion_length must be a positive integer or null (got {length!r})")
    try:
        validate_awd(str(awd["kind"]), _number(awd["lambda"], "awd.lambda"), float(node["learning_rate"]),
                     str(awd["anchor"]))
    except EsftError as exc:
        raise EsftError(f"{exc} (for method={method}, alpha is method.learning_rate)") from None


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EsftError(f"{key} must be a number (got {value!r})")
    return float(value)


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
