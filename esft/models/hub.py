"""Fail fast when a Hugging Face hub model cannot be had: one line instead of ~20 retry lines over ~45 s.

`huggingface_hub` retries an unreachable endpoint with back-off and logs every attempt before the loader gives
up. So before loading a hub id esft probes the endpoint once (a TCP connect with a short timeout). Unreachable:
it sets HF_HUB_OFFLINE=1 for the rest of the process (a cached model then loads from the cache with no network
attempts at all) and refuses an uncached id at once, naming the fix. A local directory or the tiny model never
needs the hub.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from esft.errors import EsftError

#: seconds the reachability probe may take; a reachable endpoint answers a TCP connect far faster
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE in the environment, or huggingface_hub's own flag already set."""
    if any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a transformers dependency
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


@lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the hub endpoint (HF_ENDPOINT, default huggingface.co:443) opens quickly."""
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def is_cached(model_id: str) -> bool:
    """Whether the hub cache holds the model's config (its weights are fetched with it by from_pretrained)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return False
    found = try_to_load_from_cache(model_id, "config.json")
    return isinstance(found, str)


def ensure_model_reachable(name: str) -> None:
    """Before loading `model.name`: a local dir or tiny needs nothing; a hub id needs the cache or the hub."""
    if name == "tiny" or Path(name).expanduser().exists():
        return
    requested = offline_requested()
    if not requested and hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"  # no retries for what follows: cached files load without the network
    if not is_cached(name):
        why = "HF_HUB_OFFLINE is set" if requested else "the hub is unreachable"
        raise EsftError(f"cannot load model '{name}' (model.name): it is not in the local Hugging Face cache "
                        f"and {why}; download it where there is network (`huggingface-cli download NAME`) "
                        "or pass model.name=LOCAL_DIR")
