"""Policy backends beyond HF `generate`: the vLLM engine (esft/backends/vllm_backend.py, imported lazily)
and the weight bridge that keeps a second engine's weights equal to the HF model's (weights.py)."""

from esft.backends.weights import HFModelSink, WeightSink, iter_named_weights, named_weights_for

BACKENDS = ("hf", "vllm")

__all__ = ["BACKENDS", "HFModelSink", "WeightSink", "iter_named_weights", "named_weights_for"]
