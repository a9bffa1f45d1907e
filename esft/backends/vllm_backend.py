"""vLLM rollouts (`policy.backend=vllm`, extra `esft[vllm]`): one engine for the whole run, fed every member's weights.

Why this shape (as the papers' vLLM code does it, minus its pitfalls):
- The engine is created once and kept alive across steps: start-up (weight load, memory profiling, CUDA-graph
  capture) costs far more than a step, and HF `generate` was the reference code's bottleneck (559 s/iteration).
- Members are evaluated by *loading* master + s*sigma*eps into the engine (computed in fp32 from esft's master,
  cast once), never by adding and subtracting noise in the engine's half precision (restore drift, pitfall 2).
- Prefix caching is OFF (`enable_prefix_caching=False`): every member shares the step's prompts, so a prefix
  cache would serve KV computed under another member's weights and corrupt its fitness.
- Prompts go in as token ids made by the Policy (same template, same truncation) and completions come back
  as token ids decoded by the Policy's tokenizer, so both backends cut at the stop strings identically.
- Weight update: vLLM's in-process path. Older engines (V0) expose the model at
  `llm.llm_engine.model_executor.driver_worker.model_runner.model`; V1 engines reach the worker through
  `llm.collective_rpc` and the worker extension below (`worker_extension_cls`). The engine core is kept in
  this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so tensors are handed over, not serialised.
The HF model stays loaded for teacher-forced scoring (exact-answer tasks) and for FlatParams' bookkeeping.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from esft.backends.weights import FollowsWeights
from esft.errors import EsftError

INSTALL_HINT = "pip install 'esft[vllm]' on a CUDA machine"
WORKER_EXTENSION = "esft.backends.vllm_backend.EsftWorkerExtension"
Weights = Iterable[tuple[str, torch.Tensor]]


def require_vllm() -> None:
    """Fail fast, in one line, before any model is loaded: vLLM missing, or no CUDA device to run it on."""
    if importlib.util.find_spec("vllm") is None:
        raise EsftError(f"policy.backend=vllm needs vLLM, which is not installed: {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise EsftError(f"policy.backend=vllm needs a CUDA device and none is available: {INSTALL_HINT}, "
                        "or use policy.backend=hf")


class EsftWorkerExtension:
    """Mixed into vLLM's GPU worker (V1: `LLM(worker_extension_cls=...)`); called through `collective_rpc`.

    `self.model_runner.model` is the engine's nn.Module; its `load_weights` takes checkpoint names and does the
    q/k/v and gate/up fusion and the tied-embedding skip itself, copying into the existing storage, so
    captured CUDA graphs stay valid."""

    def esft_load_weights(self, weights: Weights) -> None:
        self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]


def _v0_model(llm: Any) -> Any | None:
    """The engine's model on vLLM V0 (`driver_worker.model_runner.model`), or None on V1."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        return None


def weight_loader(llm: Any) -> Callable[[Weights], None]:
    """Adapter over the vLLM versions' in-process weight-update paths (V0 attribute chain, V1 collective_rpc)."""
    model = _v0_model(llm)
    if model is not None and hasattr(model, "load_weights"):
        return lambda weights: model.load_weights(weights=weights)
    if hasattr(llm, "collective_rpc"):
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

        def rpc(weights: Weights) -> None:
            # across processes the weights are serialised: a list of CPU tensors, not a generator
            payload = weights if in_process else [(n, t.detach().cpu()) for n, t in weights]
            llm.collective_rpc("esft_load_weights", args=(payload,))
        return rpc
    raise EsftError("this vLLM version exposes neither driver_worker.model_runner.model (V0) nor "
                    "LLM.collective_rpc (V1), so esft cannot load weights into it; use vllm>=0.8 or policy.backend=hf")


class VLLMGenerator(FollowsWeights):
    """One `vllm.LLM` for the run: greedy generation from token ids, and `load_weights` from named tensors."""

    def __init__(self, model_path: str, dtype: torch.dtype, gpu_memory_utilization: float = 0.85,
                 enforce_eager: bool = False, max_model_len: int | None = None, seed: int = 0) -> None:
        require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # tensors handed over in-process
        import vllm

        self.dtype = dtype
        self._sampling_params = vllm.SamplingParams
        kwargs: dict[str, Any] = dict(model=model_path, tokenizer=model_path, dtype=str(dtype).removeprefix("torch."),
                                      enable_prefix_caching=False,  # stale KV across weight changes (#18)
                                      gpu_memory_utilization=float(gpu_memory_utilization),
                                      enforce_eager=bool(enforce_eager), seed=int(seed),
                                      worker_extension_cls=WORKER_EXTENSION)
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        try:
            self.llm = vllm.LLM(**kwargs)
        except TypeError as exc:  # V0 engines before worker extensions: the attribute-chain path needs none
            if "worker_extension_cls" not in str(exc):
                raise
            kwargs.pop("worker_extension_cls")
            self.llm = vllm.LLM(**kwargs)
        self._load = weight_loader(self.llm)

    def load_weights(self, weights: Weights) -> None:
        """Push (HF name, tensor) pairs into the engine, replacing the values it computes with."""
        self._load(weights)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()
                 ) -> list[list[int]]:
        """Greedy completion token ids per prompt (prompt excluded), stopping at EOS or a stop string."""
        params = self._sampling_params(temperature=0.0, max_tokens=int(max_new_tokens), stop=list(stop) or None,
                                       include_stop_str_in_output=True)
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]


def export_for_engine(model: Any, tokenizer: Any, cache_dir: str | os.PathLike) -> str:
    """Save an in-memory model (the built-in tiny one) where vLLM can load it: a save_pretrained directory.

    Hub ids and local directories are handed to vLLM as they are; only models esft builds itself need this."""
    from tempfile import mkdtemp

    root = Path(cache_dir).expanduser() / "vllm-export"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(mkdtemp(prefix="model-", dir=root))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


def build_generator(name: str, model: Any, tokenizer: Any, model_cfg: Any, policy_cfg: Any,
                    dtype: torch.dtype) -> VLLMGenerator:
    """The run's engine, from `model.*` (what to load, dtype) and `policy.*` (memory share, CUDA graphs)."""
    path = name
    if name == "tiny":
        path = export_for_engine(model, tokenizer, model_cfg.get("cache_dir") or ".")
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return VLLMGenerator(path, dtype, float(policy_cfg["gpu_memory_utilization"]),
                         bool(policy_cfg["enforce_eager"]), max_len)
