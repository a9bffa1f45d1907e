"""EGGROLL-style low-rank ES noise (Sarkar et al. 2025, arXiv 2511.16652) and the batched forward that lets a
whole population share one pass over the base weights.

Noise definition (the ONE definition the forward, the update and the replay all use). For a matrix parameter
W (m x n) and noise draw k, with rank r:

    eps_k(W) = A_k B_k^T / sqrt(r),     A_k (m x r), B_k (n x r) ~ N(0, 1)

A_k and B_k are the first m and the next n rows of an (m+n) x r normal block drawn from the tensor's own
counter-based stream (the `iid` streams of esft/es/noise.py, same seeds), so they are regenerated, never stored.
Each entry of eps has unit variance, so sigma means the same per-coordinate scale as full-rank noise.
Every parameter that is not 2-D (biases, norm weights) gets full-rank iid noise from its stream, or zeros with
`freeze_nonmatrix` (EGGROLL's `freeze_nonlora`).

Forward, for member i = (draw k, sign s) on a linear layer (EGGROLL's equation; W + E is never formed):

    y = x W^T + b + s sigma/sqrt(r) (x B_k) A_k^T  [+ s sigma eps_k(b)]

All members' copies of the prompts are stacked along the batch, member-major, so x W^T is one GEMM with the
shared weights and only the rank-r correction is per member (two small bmm). Forward hooks add the correction
to each module's output; they are installed only inside `perturb_members`, so the model is untouched outside.

Departure from EGGROLL: embedding matrices are perturbed too (the row lookup gets s sigma/sqrt(r) A_k[t] B_k^T).
The tiny model ties its lm_head to the embedding, i.e. one parameter used twice; perturbing both uses with the
same factors keeps the batched forward equal to the dense forward with W + sigma*eps materialised, which is
what the update and the replay assume. (EGGROLL leaves embeddings unperturbed; freezing a tied matrix would
also freeze the LM head.)

The update sum_k c_k eps_k is built from the factors, tensor by tensor: (A_cat diag(c/sqrt r)) B_cat^T, one GEMM
of inner size K*r per matrix, so it is high-rank (rank <= min(K r, m, n)) without materialising any eps_k.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import nn
from torch.func import functional_call

from esft.core.awd import apply_awd
from esft.errors import EsftError
from esft.es import philox
from esft.es.noise import FlatNoise, _tensor_seed

#: per tensor of one draw: (A, B) for a matrix, a flat normal vector for the rest, None when frozen
Factor = Union[tuple[torch.Tensor, torch.Tensor], torch.Tensor, None]
Draw = list[Factor]
#: largest block (elements) of a materialised update; bounds the update's transient memory for big embeddings
_BLOCK = 1 << 22


class LowRankNoise(FlatNoise):
    """Regenerates the low-rank noise of a draw: its factors, or the materialised flat eps (same API as
    NoiseGenerator.flat), for parameters of the given shapes."""

    mode = "lowrank"

    def __init__(self, shapes: Sequence[tuple[int, ...]], rank: int = 1, freeze_nonmatrix: bool = False,
                 factors: str = "iid", device: torch.device | str = "cpu") -> None:
        """`factors`: iid = torch's host sampler per tensor stream (rows without a `factors` field);
        philox = esft/es/philox.py under the low-rank key stream, drawn on `device` (the weights' device), the
        same bits on every device."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise EsftError(f"es.rank must be a positive integer (got {rank!r})")
        if factors not in ("iid", "philox"):
            raise EsftError(f"low-rank factors come from iid or philox noise (got {factors!r})")
        self.factors = factors
        self.device = torch.device(device) if factors == "philox" else torch.device("cpu")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.numel = sum(self.sizes)
        self.rank = rank
        self.freeze_nonmatrix = bool(freeze_nonmatrix)
        self.matrix = [len(s) == 2 for s in self.shapes]

    def describe(self) -> dict[str, Any]:
        """What the replay log records so esft/es/update.py can rebuild this generator."""
        return {"noise": self.mode, "rank": self.rank, "freeze_nonmatrix": self.freeze_nonmatrix,
                **({"factors": self.factors} if self.factors != "iid" else {})}

    def factor(self, seed: int, index: int) -> Factor:
        """The factors of one tensor for one draw, from that tensor's independent stream (CPU, fp32)."""
        if not self.matrix[index] and self.freeze_nonmatrix:
            return None
        if self.factors == "philox":
            rows = sum(self.shapes[index]) if self.matrix[index] else self.sizes[index]
            width = self.rank if self.matrix[index] else 1
            values = philox.normals(seed, index, 0, torch.empty(rows * width, device=self.device),
                                    stream=philox.STREAM_LOWRANK)
            if not self.matrix[index]:
                return values
            block = values.view(rows, width)
            return block[:self.shapes[index][0]], block[self.shapes[index][0]:]
        generator = torch.Generator().manual_seed(_tensor_seed(seed, index))
        if self.matrix[index]:
            m, n = self.shapes[index]
            block = torch.randn(m + n, self.rank, generator=generator)
            return block[:m], block[m:]
        return torch.randn(self.sizes[index], generator=generator)

    def draw(self, seed: int) -> Draw:
        return [self.factor(seed, index) for index in range(len(self.shapes))]

    def tensor(self, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Materialised flat eps of one tensor (tests, diagnostics and the generic forward fallback)."""
        eps = _materialise(self.factor(seed, index), self.sizes[index], self.rank)
        return eps if out is None else out.copy_(eps)

    def row_blocks(self, index: int) -> Iterator[slice]:
        """Row ranges of tensor `index` whose update fits in one block (a single range for non-matrices)."""
        if not self.matrix[index]:
            yield slice(0, self.sizes[index])
            return
        m, n = self.shapes[index]
        step = max(1, _BLOCK // max(n, 1))
        for start in range(0, m, step):
            yield slice(start, min(m, start + step))

    def direction(self, index: int, rows: slice, coefficients: Sequence[float], draws: Sequence[Draw],
                  device: torch.device | str = "cpu") -> torch.Tensor | None:
        """sum_k c_k eps_k restricted to rows `rows` of tensor `index`, flat fp32; None when it is all zero."""
        active = [(float(c), d[index]) for c, d in zip(coefficients, draws) if c != 0.0 and d[index] is not None]
        if not active:
            return None
        if self.matrix[index]:
            scale = 1.0 / math.sqrt(self.rank)
            a = torch.cat([f[0][rows] * (c * scale) for c, f in active], dim=1).to(device)
            b = torch.cat([f[1] for _, f in active], dim=1).to(device)
            return (a @ b.T).reshape(-1)
        total = torch.zeros(self.sizes[index], device=device)
        for c, f in active:  # draw order, as accumulate_update
            total.add_(f.to(device), alpha=c)
        return total


def _materialise(factor: Factor, size: int, rank: int) -> torch.Tensor:
    if factor is None:
        return torch.zeros(size)
    if isinstance(factor, tuple):
        a, b = factor
        return (a * (1.0 / math.sqrt(rank)) @ b.T).reshape(-1)
    return factor


@torch.no_grad()
def apply_lowrank_step(theta: torch.Tensor, anchor: torch.Tensor, noise: LowRankNoise, seeds: Sequence[int],
                       coefficients: Sequence[float], scale: float, awd_kind: str, awd_strength: float,
                       draws: Sequence[Draw] | None = None) -> float:
    """theta += scale * sum_k c_k eps_k, then the AWD pull, block by block; returns |theta_new - theta_old|.

    Why block by block: the update is built from factors, so no D-sized direction (nor a D-sized copy of the
    old weights for the norm) is ever held; the transient memory is one block. Live training and replay both
    call this function, in the same block order, so they agree bit for bit.
    """
    draws = list(draws) if draws is not None else [noise.draw(seed) for seed in seeds]
    squared = torch.zeros((), dtype=torch.float64, device=theta.device)
    offset = 0
    for index, size in enumerate(noise.sizes):
        width = size // noise.shapes[index][0] if noise.matrix[index] else 1
        for rows in noise.row_blocks(index):
            part = slice(offset + rows.start * width, offset + rows.stop * width)
            view, before = theta[part], theta[part].clone()
            delta = noise.direction(index, rows, coefficients, draws, theta.device)
            if delta is not None:
                view.add_(delta, alpha=scale)
            apply_awd(view, anchor[part], awd_kind, awd_strength)
            squared += (view - before).double().square().sum()
        offset += size
    return float(squared.sqrt())


# -- the batched forward -----------------------------------------------------------------------------------
class MemberBatch:
    """Per-member factors of one chunk of members, stacked on the model's device and dtype, transposed for the
    forward and pre-scaled: a[i] = s_i sigma/sqrt(r) A_k(i)^T (r x m), b[i] = B_k(i)^T (r x n), and for
    non-matrix parameters vector[i] = s_i sigma eps_k(i)."""

    def __init__(self, noise: LowRankNoise, draws: Sequence[Draw], members: Sequence[tuple[int, float]],
                 sigma: float, like: Sequence[torch.Tensor]) -> None:
        self.count, self.rank = len(members), noise.rank
        self.a: dict[int, torch.Tensor] = {}  # (N, r, m)
        self.b: dict[int, torch.Tensor] = {}  # (N, r, n)
        self.vector: dict[int, torch.Tensor] = {}  # (N, numel), fp32
        signs = torch.tensor([sign for _, sign in members], dtype=torch.float32)
        for index, param in enumerate(like):
            factors = [draws[draw][index] for draw, _ in members]
            if factors[0] is None:
                continue
            if noise.matrix[index]:
                a = torch.stack([f[0].T for f in factors]) * (signs * sigma / math.sqrt(noise.rank)).view(-1, 1, 1)
                self.a[index] = a.to(param.device, param.dtype)
                self.b[index] = torch.stack([f[1].T for f in factors]).to(param.device, param.dtype)
            else:
                self.vector[index] = (torch.stack(factors) * (signs * sigma).view(-1, 1)).to(param.device)

    def active(self, index: int | None) -> bool:
        return index is not None and (index in self.a or index in self.vector)

    def project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """x B per member: (N, L, n) -> (N, L, r). Rank 1 as multiply-and-sum: a batched GEMV through bmm is
        ~10x slower on CPU."""
        b = self.b[index]
        return (x * b).sum(-1, keepdim=True) if self.rank == 1 else torch.bmm(x, b.transpose(1, 2))

    @staticmethod
    def expand_into(out: torch.Tensor, low: torch.Tensor, factor: torch.Tensor) -> None:
        """out += low @ factor per member, in place: (N, L, r) x (N, r, m); rank 1 is a broadcast multiply-add."""
        if low.shape[-1] == 1:
            out.addcmul_(low, factor)
        else:
            out.baddbmm_(low, factor)


def _linear_hook(batch: MemberBatch, weight: int, bias: int | None):
    def hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        n, m = module.in_features, module.out_features
        x = args[0].reshape(batch.count, -1, n)
        out = output.reshape(batch.count, -1, m)
        batch.expand_into(out, batch.project(x, weight), batch.a[weight])
        if batch.active(bias):
            out.add_(batch.vector[bias].view(batch.count, 1, m).to(out.dtype))
        return out.view(output.shape)
    return hook


def _embedding_hook(batch: MemberBatch, weight: int):
    def hook(module: nn.Embedding, args: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = args[0].reshape(batch.count, -1)
        out = output.reshape(batch.count, ids.shape[1], -1)
        a = batch.a[weight].transpose(1, 2)  # (N, V, r): row t of member i is its A[t] scaled
        rows = torch.gather(a, 1, ids.unsqueeze(-1).expand(-1, -1, a.shape[-1]))
        batch.expand_into(out, rows, batch.b[weight])
        return out.view(output.shape)
    return hook


class _GenericHook:
    """Any other module that owns perturbed parameters (norms, LayerNorm, unusual layers): exact per member.

    A module whose only parameter is a 1-D `weight` (RMSNorm and kin) is assumed affine in that weight along the
    last dimension: y(w + d) = y(w) + (y(1) - y(0)) * d, one or two extra cheap passes for all members at once
    (y(0) is skipped once it has been seen to be exactly zero, i.e. y = w * f(x) as in Qwen2/Llama RMSNorm).
    Anything else runs once per member with its parameters materialised (functional_call): exact, but slow.
    """

    def __init__(self, batch: MemberBatch, noise: LowRankNoise, own: dict[str, int], base: dict[int, torch.Tensor]):
        self.batch, self.noise, self.own, self.base = batch, noise, own, base
        self.inside = False
        self.multiplicative: bool | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self.inside:  # functional_call below re-enters this module's hooks
            return None
        self.inside = True
        try:
            if list(self.own) == ["weight"] and self.noise.sizes[self.own["weight"]] == output.shape[-1]:
                return self._affine(module, args, kwargs, output)
            return self._per_member(module, args, kwargs)
        finally:
            self.inside = False

    def _affine(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        unit = functional_call(module, {"weight": torch.ones_like(weight)}, args, kwargs)
        if not self.multiplicative:
            zero = functional_call(module, {"weight": torch.zeros_like(weight)}, args, kwargs)
            self.multiplicative = not bool(zero.any()) if self.multiplicative is None else False
            unit = unit - zero
        count, width = self.batch.count, output.shape[-1]
        delta = self.batch.vector[self.own["weight"]].to(output.dtype).view(count, 1, width)
        out = output.reshape(count, -1, width).addcmul(unit.reshape(count, -1, width), delta)
        return out.view(output.shape)

    def _per_member(self, module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        count, outputs = self.batch.count, []
        def split(v: Any) -> Any:
            return v.chunk(count) if torch.is_tensor(v) and v.dim() and v.shape[0] % count == 0 else None

        for member in range(count):
            params = {name: self._member_param(index, member) for name, index in self.own.items()}
            member_args = tuple(split(a)[member] if split(a) else a for a in args)
            member_kwargs = {k: (split(v)[member] if split(v) else v) for k, v in kwargs.items()}
            result = functional_call(module, params, member_args, member_kwargs)
            if not torch.is_tensor(result):
                raise EsftError(f"es.evaluator=lowrank cannot perturb {type(module).__name__} (its output is not a "
                                "tensor); set es.freeze_nonmatrix=true or use es.evaluator=inplace")
            outputs.append(result)
        return torch.cat(outputs)

    def _member_param(self, index: int, member: int) -> torch.Tensor:
        base = self.base[index]
        if index in self.batch.a:
            a, b = self.batch.a[index][member].float(), self.batch.b[index][member].float()
            return (base.float() + a.T @ b).to(base.dtype)
        if index in self.batch.vector:
            return (base.float() + self.batch.vector[index][member].view(base.shape)).to(base.dtype)
        return base


def _own_parameters(module: nn.Module, index_of: dict[int, int]) -> dict[str, int]:
    return {name: index_of[id(p)] for name, p in module.named_parameters(recurse=False) if id(p) in index_of}


@contextmanager
def perturb_members(model: nn.Module, parameters: Sequence[nn.Parameter], noise: LowRankNoise,
                    draws: Sequence[Draw], members: Sequence[tuple[int, float]], sigma: float):
    """Inside this block every forward of `model` evaluates `members` (draw, sign) on a batch that stacks
    their rows member-major: batch size = len(members) x rows per member."""
    index_of = {id(p): i for i, p in enumerate(parameters)}
    batch = MemberBatch(noise, draws, members, sigma, parameters)
    handles, covered = [], set()
    try:
        for module in model.modules():
            own = _own_parameters(module, index_of)
            if not any(batch.active(i) for i in own.values()):
                continue
            covered.update(own.values())
            if isinstance(module, nn.Linear) and batch.active(own.get("weight")):
                handles.append(module.register_forward_hook(_linear_hook(batch, own["weight"], own.get("bias"))))
            elif isinstance(module, nn.Embedding) and list(own) == ["weight"]:
                handles.append(module.register_forward_hook(_embedding_hook(batch, own["weight"])))
            else:
                hook = _GenericHook(batch, noise, own, {i: parameters[i].detach() for i in own.values()})
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        missing = [i for i in range(len(parameters)) if batch.active(i) and i not in covered]
        assert not missing, f"parameters {missing} are perturbed but no module owns them"
        yield batch
    finally:
        for handle in handles:
            handle.remove()
