"""One run on many processes (torchrun): the few collective operations ES needs, and nothing else.

ES is embarrassingly parallel: a member is named by a seed, so the only things that must cross processes are
the seeds (every rank computes them itself, from the run seed) and the rewards (one float per member). This
module holds the process-group plumbing around that: start the group from torchrun's environment (gloo on CPU,
NCCL when CUDA is there), gather a float vector, broadcast a string, and compare a weight checksum so that a
rank that silently drifted apart fails the run loudly instead of corrupting it.

Everything here is a no-op for a single process, so code paths stay identical when torchrun is not used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from esft.errors import EsftError


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not started by torchrun); readable before the group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 alone writes the run dir and talks to the user; outside torchrun every process is main."""
    return rank() == 0


def backend() -> str:
    """NCCL moves CUDA tensors between GPUs; gloo is the CPU backend (and the only one that works without GPUs)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> bool:
    """Join the process group torchrun describes (env://), once. Returns True when running distributed.

    torch's thread count is left alone: under torchrun it follows OMP_NUM_THREADS as the user set it."""
    if env_world_size() <= 1:
        return False
    if not dist.is_initialized():
        if backend() == "nccl":  # "cuda" then means this rank's own GPU, for the model and the collectives
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend(), init_method="env://")
    return True


def shutdown(sync: bool = False) -> None:
    """Leave the process group. `sync` waits for every rank first (on success: a follower that finishes early
    must not tear its connections down while rank 0 still works); never after an error, where the other ranks
    may be stuck in a collective and only torchrun can end them."""
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def _device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_owned(values: Sequence[float], owners: Sequence[int]) -> list[float]:
    """Every rank's copy of a vector whose slot i only rank owners[i] knows (the others pass anything there).

    The full vectors are all-gathered and slot i is taken from its owner, so each float arrives bit for bit
    (float64 on the wire, and no arithmetic such as a sum that could touch -0.0 or a NaN payload)."""
    if not is_distributed():
        return [float(v) for v in values]
    mine = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    table = torch.stack(parts).cpu()
    return [float(table[owner, i]) for i, owner in enumerate(owners)]


def broadcast_string(value: str | None) -> str:
    """Rank 0's string on every rank (e.g. the run dir that rank 0 chose)."""
    if not is_distributed():
        return str(value)
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_device() if dist.get_backend() == "nccl" else None)
    return str(box[0])


def checksum(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's bytes: equal only if every bit of every weight is equal."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def check_identical(tensor: torch.Tensor, what: str) -> None:
    """Raise EsftError on every rank if the ranks' copies of `tensor` differ (they must update identically)."""
    if not is_distributed():
        return
    digests: list[str | None] = [None] * world_size()
    dist.all_gather_object(digests, checksum(tensor))
    if len(set(digests)) > 1:
        listing = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise EsftError(f"{what} diverged across ranks ({listing}); the ranks no longer compute the same run "
                        "(different library versions, hardware or nondeterministic kernels?)")
