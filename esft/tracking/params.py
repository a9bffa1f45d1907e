"""The composed config as tracker hyperparameters: dotted keys, scalar values (what every tracker accepts)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"es": {"sigma": 0.01}}` -> `{"es.sigma": 0.01}`; lists and nulls become JSON text, so a tracker that
    only takes int/float/str/bool (TensorBoard's HParams, MLflow params) can still show them."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out
