"""Method name -> trainer. Trainers share one seam (set_stage, step, state_dict, load_state_dict,
diagnostics, finalize, num_parameters); the experiment drives them and never looks inside."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esft.errors import EsftError
from esft.policy import Policy

METHODS = ("es",)


def validate_method_config(method: str, cfg: Mapping[str, Any]) -> None:
    """Check a method's settings before anything expensive (model loading, warm-up) happens."""
    if method not in METHODS:
        raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
    if method == "es":
        from esft.es.awd import validate_awd
        from esft.es.noise import NOISE_MODES
        from esft.es.population import EVALUATORS
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
        count = es.get("prompts_per_step")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise EsftError(f"es.prompts_per_step must be a positive integer or null (got {count!r})")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EsftError(f"{key} must be a number (got {value!r})")
    return float(value)


def build_trainer(method: str, policy: Policy, cfg: Mapping[str, Any], replay_log: Callable[[dict], None]):
    batch_size = int((cfg.get("eval") or {}).get("batch_size", 256))
    if method == "es":
        from esft.es.trainer import ESTrainer

        return ESTrainer(policy, cfg["es"], cfg["awd"], int(cfg.get("seed", 0)), replay_log, batch_size)
    raise EsftError(f"unknown method '{method}'; available methods: {', '.join(METHODS)}")
