"""fp32 master weights, the anchor theta0, and the bridge to the model's own tensors.

ES updates are tiny (alpha/sqrt(N) per coordinate, ~1e-4 in the papers) and in bf16 a perturb-then-restore
cycle leaves an error of the same order (a pitfall of the papers' reference code). So the truth lives in one flat fp32
vector `master`; the model's tensors are only ever *written from* it (theta + sigma*eps for a member, theta
to restore), never updated in place in low precision. With an fp32 model on the same device the model's
parameters become views of one working buffer, so loading a member is a single fused add.

`on_load` callbacks hear of every write, as (base, noise, scale) meaning base + scale * noise (noise None for
a plain load): a second copy of the weights (the vLLM engine, esft/backends) follows the model through them.
The list is empty on the HF backend, so its path costs one empty loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from esft.core.distance import distances
from esft.es.noise import DrawRef, perturbed

#: numbers of portable noise drawn at once when loading a member (16 MB of fp32)
PORTABLE_BLOCK = 1 << 22
LoadCallback = Callable[[torch.Tensor, "torch.Tensor | None", float], None]
class FlatParams:
    """All trainable parameters of a model as one fp32 vector, plus the anchor theta0."""

    def __init__(self, model: nn.Module, share_master: bool = False) -> None:
        """`share_master`: an fp32 model computes straight from `master` (no working copy), for evaluators
        that never write the weights (lowrank: the perturbation lives in forward hooks)."""
        self.model = model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights once
        self.names = [n for n, _ in self.named]
        self.shapes = [tuple(p.shape) for _, p in self.named]
        self.sizes = [p.numel() for _, p in self.named]
        self.numel = sum(self.sizes)
        first = self.named[0][1]
        self.device = first.device
        self._params_by_name = dict(self.named)
        self.on_load: list[LoadCallback] = []  # told of every vector written into the model (see module doc)
        self._aliased = all(p.dtype == torch.float32 and p.device == self.device for _, p in self.named)
        with torch.no_grad():
            if self._aliased:
                self.work = self._gather_model()
                self.master = self.work if share_master else self.work.clone()
            else:
                self.work = None
                self.master = torch.empty(self.numel, device=self.device)  # filled per tensor: no fp32 copy of the
                for (_, param), (_, part) in zip(self.named, self.slices()):  # model list next to the cat
                    self.master[part].copy_(param.detach().reshape(-1))
            self.theta0 = self._initial_weights()

    def _gather_model(self) -> torch.Tensor:
        """Move an fp32 model's tensors into one flat buffer, one tensor at a time, the model then viewing
        it: each original tensor is released as soon as it is copied, so building the buffer costs one
        tensor of extra memory at most, not a second model."""
        buffer = torch.empty(self.numel, device=self.device)
        for (_, param), (_, part), shape in zip(self.named, self.slices(), self.shapes):
            buffer[part].copy_(param.detach().reshape(-1))
            param.data = buffer[part].view(shape)
        return buffer

    def _initial_weights(self) -> torch.Tensor:
        """theta0, in the model's own dtype when all parameters share one: the initial weights ARE those bf16
        (or fp16) values, so keeping them in that dtype is exact and halves the anchor (a 7B model: 14 GB
        instead of 28). Every use promotes to fp32 (AWD, distances, replay), with bit-identical results."""
        dtypes = {p.dtype for _, p in self.named}
        if len(dtypes) != 1 or dtypes == {torch.float32}:
            return self.master.clone()
        return torch.cat([p.detach().reshape(-1) for _, p in self.named]).to(self.device)

    def _alias_model_to(self, buffer: torch.Tensor) -> None:
        for (_, param), (_, part), shape in zip(self.named, self.slices(), self.shapes):
            param.data = buffer[part].view(shape)

    def slices(self):
        offset = 0
        for name, size in zip(self.names, self.sizes):
            yield name, slice(offset, offset + size)
            offset += size

    @torch.no_grad()
    def load(self, vector: torch.Tensor) -> None:
        """Make the model compute with `vector` (cast to the model's dtype per tensor when not fp32).

        A model that computes from `master` itself (share_master) is pointed at `vector` instead of having
        it written in: writing theta0 there for the off-task KL would overwrite the weights being trained."""
        if self._aliased and self.work is self.master:
            if vector.dtype != torch.float32 or vector.device != self.device:
                vector = vector.to(self.device, torch.float32)
            self._alias_model_to(vector)
        elif self._aliased:
            self.work.copy_(vector)
        else:
            for (_, param), (_, part) in zip(self.named, self.slices()):
                param.copy_(vector[part].view(param.shape))
        for callback in self.on_load:
            callback(vector, None, 0.0)

    @torch.no_grad()
    def load_perturbed(self, noise: torch.Tensor, scale: float) -> None:
        """Load master + scale * noise without touching master (the exact-restore evaluation path).

        `noise` may live on the CPU while the weights are on a GPU: it then travels one tensor at a time, so a
        draw never needs D more floats of GPU memory (a 7B model: 28 GB). The sums are the same either way."""
        if self.work is self.master:
            raise RuntimeError("load_perturbed would overwrite master: build FlatParams with share_master=False")
        if isinstance(noise, DrawRef):
            self._load_portable(noise, scale)
        elif self._aliased and noise.device == self.device:
            torch.add(self.master, noise, alpha=scale, out=self.work)
        elif self._aliased:
            for _, part in self.slices():
                torch.add(self.master[part], noise[part].to(self.device, non_blocking=True), alpha=scale,
                          out=self.work[part])
        else:
            for (_, param), (_, part) in zip(self.named, self.slices()):  # one tensor-sized temporary at a time
                values = torch.add(self.master[part], noise[part].to(self.device, non_blocking=True), alpha=scale)
                param.copy_(values.view(param.shape))
        for callback in self.on_load:
            callback(self.master, noise, scale)

    def _load_portable(self, draw: DrawRef, scale: float) -> None:
        """master + scale * eps for portable (philox) noise, drawn on the weights' device one block at a time
        (at most PORTABLE_BLOCK numbers of noise exist at once) and added without FMA (noise.perturbed)."""
        for name, part in self.slices():
            for start in range(part.start, part.stop, PORTABLE_BLOCK):
                block = slice(start, min(part.stop, start + PORTABLE_BLOCK))
                if self._aliased:
                    perturbed(self.master[block], draw[block], scale, out=self.work[block])
                else:
                    param = self._params_by_name[name]
                    values = perturbed(self.master[block], draw[block], scale)
                    param.view(-1)[block.start - part.start:block.stop - part.start].copy_(values)

    def restore(self) -> None:
        self.load(self.master)

    @contextmanager
    def theta0_loaded(self) -> Iterator[None]:
        """The model computes with theta0 inside the block and with master, exactly, after it (the off-task
        KL's reference); master itself is never written."""
        self.load(self.theta0)
        try:
            yield
        finally:
            self.restore()

    def _triples(self, reference: torch.Tensor):
        return ((name, self.master[part], reference[part]) for name, part in self.slices())

    def distance(self, reference: torch.Tensor | None = None) -> float:
        """|theta - theta0| (L2 over all parameters), the drift the papers track, accumulated per tensor in
        blocks (esft.core.distance): no D-sized temporary (a 7B model's would be 28 GB beside the weights)."""
        return distances(self._triples(self.theta0 if reference is None else reference), by_layer=False)[0]

    def layer_distances(self) -> dict[str, float]:
        """|theta - theta0| restricted to each layer, blockwise like `distance`."""
        return distances(self._triples(self.theta0))[1]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The master for a checkpoint: the tensor itself on a CPU (no copy: saving reads it synchronously),
        one host copy from a device."""
        return {"master": self.master.detach().cpu()}

    @torch.no_grad()
    def release_model(self) -> None:
        """Give every model tensor its own storage holding master (needed before save_pretrained: safetensors
        refuses tensors that share one buffer)."""
        for (_, param), (_, part) in zip(self.named, self.slices()):
            param.data = self.master[part].view(param.shape).to(param.dtype).clone()
        self._aliased = False
        self.work = None
