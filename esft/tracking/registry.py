"""Which trackers a run uses (`logger` config group) and whether their libraries are installed.

Selection, all equivalent and combinable: `logger=tensorboard` (an option of conf/logger/ that sets
`tensorboard.enabled: true`), `logger=[tensorboard,wandb]` (several options), or `logger.extra=[tensorboard,
wandb]`. The JSONL files are always written; a tracker is one class in its own module, registered below
with the pip extra that installs its library.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esft.errors import EsftError


@dataclass(frozen=True)
class TrackerSpec:
    module: str      # esft.tracking.<module>
    cls: str
    requires: str    # the library it imports
    extra: str       # pip install 'esft[<extra>]'


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec("tensorboard", "TensorBoardTracker", "tensorboard", "tensorboard"),
    "wandb": TrackerSpec("wandb", "WandbTracker", "wandb", "wandb"),
    "mlflow": TrackerSpec("mlflow", "MlflowTracker", "mlflow", "mlflow"),
}


def logger_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return dict(cfg.get("logger") or {})


def selected_trackers(cfg: Mapping[str, Any]) -> list[str]:
    """Tracker names in a stable order: `logger.extra` first, then the options enabled by `logger=NAME`."""
    settings = logger_settings(cfg)
    extra = settings.get("extra") or []
    names = [extra] if isinstance(extra, str) else list(extra)
    names += [name for name in TRACKERS if (settings.get(name) or {}).get("enabled")]
    names = [str(n) for n in dict.fromkeys(names) if str(n) != "jsonl"]  # jsonl is always on
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise EsftError(f"unknown logger '{unknown[0]}' in logger.extra; available: jsonl (always on), "
                        f"{', '.join(TRACKERS)}")
    return names


def check_trackers(cfg: Mapping[str, Any]) -> list[str]:
    """The selected trackers; EsftError naming the pip extra if one's library is not installed."""
    names = selected_trackers(cfg)
    for name in names:
        spec = TRACKERS[name]
        try:
            importlib.import_module(spec.requires)
        except ImportError:
            raise EsftError(f"logger {name} needs the {spec.requires} package: "
                            f"pip install 'esft[{spec.extra}]'") from None
    return names


def tracker_class(name: str) -> type:
    spec = TRACKERS[name]
    return getattr(importlib.import_module(f"esft.tracking.{spec.module}"), spec.cls)
