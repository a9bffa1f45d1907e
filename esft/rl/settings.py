"""method.* for the gradient baselines (GRPO, PPO), checked once before the model loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esft.core.config import integer, need, number, optional_integer
from esft.errors import EsftError

#: the RL baselines' numeric settings: keys that must be > 0, integer counts >= 1, and numbers >= 0
_RL_POSITIVE = {"grpo": ("learning_rate", "temperature", "max_grad_norm"),
                "ppo": ("learning_rate", "temperature", "max_grad_norm")}
_RL_COUNTS = {"grpo": ("num_generations", "prompts_per_step"),
              "ppo": ("num_generations", "prompts_per_step", "epochs", "minibatches")}
_RL_NONNEGATIVE = {"grpo": ("beta", "epsilon"), "ppo": ("beta", "clip", "vf_clip", "vf_coef", "gamma", "lam")}
_RL_FRACTIONS = ("top_p",)


def check_rl_settings(method: str, node: Mapping[str, Any]) -> None:
    where = "method"
    for key in _RL_POSITIVE[method]:
        if key in node or key != "max_grad_norm":
            number(need(node, key, where), f"method.{key}", low=0, low_open=True)
    for key in _RL_COUNTS[method]:
        integer(need(node, key, where), f"method.{key}", low=1)
    for key in _RL_NONNEGATIVE[method]:
        if key in node or key == "beta":
            number(need(node, key, where), f"method.{key}", low=0)
    for key in _RL_FRACTIONS:
        if key in node:
            number(node[key], f"method.{key}", low=0, high=1, low_open=True)
    if method == "grpo" and node["num_generations"] < 2:
        raise EsftError("method.num_generations must be >= 2 for GRPO (advantages are relative within a group)")
    optional_integer(node.get("max_completion_length"), "method.max_completion_length", low=1,
                     what=" or null (the task's own budget)")
