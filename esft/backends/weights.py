"""Named weights from the fp32 master: the part of the vLLM backend that can be tested without a GPU.

A second inference engine (vLLM) holds its own copy of the weights, so every time FlatParams writes a vector
into the HF model (a member's master + s*sigma*eps, or the restore) the engine must receive the same values.
Engines load weights by *checkpoint name* (vLLM's `model.load_weights(weights=[(name, tensor), ...])` fuses
q/k/v and gate/up itself), so the bridge is a pure mapping: flat fp32 vector -> [(HF name, tensor in the
engine's dtype)], computed per tensor with the same arithmetic as FlatParams.load_perturbed (fp32 add, then
one cast), so the engine holds bit-for-bit what the HF model holds.

Tied embeddings: FlatParams lists each parameter once (`named_parameters` de-duplicates tied tensors), so a
model with `tie_word_embeddings=True` yields only `model.embed_tokens.weight`. That is exactly what the
engines want: vLLM's Qwen2/Llama `load_weights` skip `lm_head.weight` when the config ties it, and the HF sink
writes into the shared tensor. An untied checkpoint has two distinct parameters and both are emitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from esft.es.noise import DrawRef, perturbed

if TYPE_CHECKING:
    from esft.es.params import FlatParams

NamedTensors = list[tuple[str, torch.Tensor]]


def iter_named_weights(params: FlatParams, base: torch.Tensor, dtype: torch.dtype,
                       noise: torch.Tensor | DrawRef | None = None, scale: float = 0.0,
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) per model parameter holding `base + scale * noise` (or `base`) cast to `dtype`.

    A generator, one tensor-sized temporary at a time: on a GPU the full vector in the engine dtype would be
    another model-sized allocation beside the engine. The add is the one FlatParams.load_perturbed does. With
    portable (philox) noise `noise` is a DrawRef: each tensor's noise is drawn on the weights' device as the
    engine asks for it (no noise vector crosses PCIe) and added without FMA, as FlatParams does."""
    for name, part, shape in zip(params.names, _slices(params), params.shapes):
        if noise is None:
            values = base[part]
        elif isinstance(noise, DrawRef):
            values = perturbed(base[part], noise[part], scale)
        else:
            values = torch.add(base[part], noise[part].to(base.device), alpha=scale)
        yield name, values.view(shape).to(dtype)


def named_weights_for(params: FlatParams, vector: torch.Tensor, dtype: torch.dtype) -> NamedTensors:
    """The weights a vector stands for, by HF parameter name, in the engine's dtype (a list: easy to inspect)."""
    return list(iter_named_weights(params, vector, dtype))


def _slices(params: FlatParams) -> Iterator[slice]:
    return (part for _, part in params.slices())


@runtime_checkable
class WeightSink(Protocol):
    """Anything that can take named weights: the vLLM engine, or an HF model (tests, CPU)."""

    def load_weights(self, weights) -> None:  # weights: Iterable[tuple[str, torch.Tensor]]
        ...


class HFModelSink:
    """Copies named weights into an HF model's parameters by name (the `load_state_dict` semantics, without
    building a state dict). Used on CPU to prove that what the vLLM sink would receive reproduces the in-place
    path exactly, and as the generation model of the fake engine in tests."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._params = dict(model.named_parameters())  # tied tensors appear once, under their first name
        self.loaded: list[str] = []

    @torch.no_grad()
    def load_weights(self, weights) -> None:
        self.loaded = []
        for name, tensor in weights:
            if name not in self._params:
                raise KeyError(f"the model has no parameter '{name}'")
            target = self._params[name]
            if target.shape != tensor.shape:
                raise ValueError(f"shape mismatch for '{name}': model {tuple(target.shape)}, "
                                 f"weights {tuple(tensor.shape)}")
            target.copy_(tensor)
            self.loaded.append(name)


class FollowsWeights:
    """A second engine that mirrors the HF model (the vLLM engine): `Policy.watch(params)` asks it to follow
    every vector a FlatParams writes into the model, pushed as `load_weights(iter_named_weights(...))`."""

    dtype: torch.dtype  # the engine's weight dtype; subclasses also define load_weights(named tensors)

    def follow(self, params: "FlatParams") -> None:
        if getattr(self, "_followed", None) is params:
            return
        self._followed = params
        params.on_load.append(lambda base, noise, scale: self.load_weights(
            iter_named_weights(params, base, self.dtype, noise, scale)))
