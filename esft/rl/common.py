"""What the gradient baselines (GRPO, PPO) share: the anchor theta0 and AWD, sampled rollouts on the shared
Policy, compute accounting and memory peaks, and the metrics row of one step.

AWD for RL is the same decoupled pull as for ES (esft/es/awd.py), applied right after every optimizer step,
with strength c = lr * awd.lambda (lr: the optimizer's *current* learning rate), exactly as AdamW scales its
decoupled weight decay -- except that it decays toward the anchor theta0, not toward zero. No anchor codebase
offers AWD for RL; it is here so drift-report can put ES+AWD beside RL+AWD. Note the scale: with Adam each
coordinate moves about lr per step, so an L2 pull of lr*lambda caps a steadily pushed coordinate near 1/lambda;
useful RL lambdas are therefore larger than ES's (where c = alpha*lambda acts on alpha/sqrt(N)-sized steps).

Compute is counted the same way for every method, per step: `forward_tokens` = non-padding token positions
through any forward pass of the policy (and of the reference model), rollouts included (KV-cached decoding
feeds each token once); `backward_tokens` = positions of forward passes run with autograd on (each gets a
backward); `generated_tokens` = sampled completion tokens. One forward ~ 2*D FLOPs per token, one backward
~ 4*D, so FLOPs ~ 2*D*(forward_tokens + 2*backward_tokens).
"""

from __future__ import annotations

import inspect
import resource
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from esft.es.awd import apply_awd
from esft.es.params import layer_of
from esft.policy import Policy, _cut_at_stop, tokens_through_stop

# -- anchor and AWD ------------------------------------------------------------------------------------------


class Anchor:
    """Copies of theta0 (drift is measured from it) and of the AWD anchor (theta0, or the stage start), each
    in its parameter's dtype: exact, since they are those weights, and half the memory of fp32 copies for a
    bf16 model. AWD and the distances compute in fp32.

    Parameters are those FlatParams sees (trainable, tied weights once, same order), so `flat()` has the layout
    of the ES trainer's `master` vector and every method's checkpoints hold weights the same way.
    """

    def __init__(self, model: nn.Module) -> None:
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.theta0 = [p.detach().clone() for _, p in self.named]
        self.anchor = self.theta0

    def reset_anchor(self) -> None:
        """Make the current weights the AWD anchor (awd.anchor=stage)."""
        self.anchor = [p.detach().clone() for _, p in self.named]

    @torch.no_grad()
    def pull(self, kind: str, strength: float) -> None:
        """theta <- AWD(theta; anchor, c=strength), computed in fp32 (cast back for low-precision weights)."""
        if strength <= 0:
            return
        for (_, param), anchor in zip(self.named, self.anchor):
            if param.dtype == torch.float32:
                apply_awd(param.data, anchor.to(param.device), kind, strength)
            else:
                work = param.data.float()
                apply_awd(work, anchor.to(param.device), kind, strength)
                param.data.copy_(work)

    @torch.no_grad()
    def distance(self) -> float:
        """|theta - theta0| (L2 over all parameters)."""
        total = sum(float((p.detach().float() - t.to(p.device)).square().sum()) for (_, p), t in
                    zip(self.named, self.theta0))
        return total ** 0.5

    @torch.no_grad()
    def layer_distances(self) -> dict[str, float]:
        squared: OrderedDict[str, float] = OrderedDict()
        for (name, p), t in zip(self.named, self.theta0):
            label = layer_of(name)
            squared[label] = squared.get(label, 0.0) + float((p.detach().float() - t.to(p.device)).square().sum())
        return {label: value ** 0.5 for label, value in squared.items()}

    @torch.no_grad()
    def flat(self, tensors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The weights (or `tensors`, e.g. the anchor) as one fp32 CPU vector in FlatParams order."""
        tensors = [p.detach() for _, p in self.named] if tensors is None else tensors
        return torch.cat([t.float().reshape(-1).cpu() for t in tensors])

    def unflat(self, vector: torch.Tensor) -> list[torch.Tensor]:
        expected = sum(p.numel() for _, p in self.named)
        if vector.numel() != expected:
            raise ValueError(f"checkpoint has {vector.numel()} parameters, the model {expected}")
        parts, offset = [], 0
        for _, p in self.named:
            parts.append(vector[offset:offset + p.numel()].view(p.shape).float().clone())
            offset += p.numel()
        return parts

    @torch.no_grad()
    def load_flat(self, vector: torch.Tensor) -> None:
        for (_, param), part in zip(self.named, self.unflat(vector)):
            param.data.copy_(part.to(param.device, param.dtype))

    @contextmanager
    def theta0_loaded(self) -> Iterator[None]:
        """The model computes with theta0 inside the block and with its own weights, exactly, after it (the
        trainers' `reference_weights()`, used by the off-task KL diagnostic)."""
        saved = self.snapshot()
        with torch.no_grad():
            for (_, param), value in zip(self.named, self.theta0):
                param.data.copy_(value.to(param.device, param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, param), value in zip(self.named, saved):
                    param.data.copy_(value)

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for _, p in self.named]

    @torch.no_grad()
    def moved_since(self, snapshot: Sequence[torch.Tensor]) -> float:
        """|theta - snapshot|: the norm of one step's update (optimizer step and AWD together)."""
        total = sum(float((p.detach().float() - s.float()).square().sum()) for (_, p), s in zip(self.named, snapshot))
        return total ** 0.5


# -- compute and memory --------------------------------------------------------------------------------------


class TokenMeter:
    """Counts token positions through the forward passes of some models while `active`.

    A forward pre-hook sees every call, generation included (HF generate calls the model once per new token
    with the KV cache). A call counts the non-padding positions it *feeds* (the last `input_ids.shape[1]`
    columns of the attention mask); calls made with autograd on also count as backward positions.
    Evaluations run outside the active window, so they never count as training compute.
    """

    def __init__(self, *models: nn.Module | None) -> None:
        self.active = False
        self.forward = self.backward = 0
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in models if m is not None]

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.active:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            count = int(embeds.shape[0] * embeds.shape[1]) if embeds is not None else 0
        else:
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                count = int(mask[:, -ids.shape[1]:].sum())
            else:
                count = int(ids.numel())
        self.forward += count
        if torch.is_grad_enabled():
            self.backward += count

    def start(self) -> None:
        self.forward = self.backward = 0
        self.active = True

    def stop(self) -> tuple[int, int]:
        self.active = False
        return self.forward, self.backward

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak (called at each stage's start, so peaks are per stage).

    Linux lets a process reset its own RSS high-water mark (VmHWM) through /proc/self/clear_refs; elsewhere the
    peak stays process-wide (getrusage), which is then an upper bound of the stage's peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_rss_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_memory(device: torch.device | str = "cpu") -> dict[str, float]:
    """{"peak_rss_mb"} and, on a CUDA device, {"peak_cuda_mb"}: peaks since the last reset_peak_memory."""
    row = {"peak_rss_mb": round(_peak_rss_kb() / 1024, 1)}
    device = torch.device(device)
    if device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return row


# -- sampled rollouts ----------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Sampled completions of a batch: prompt ids (left-padded), completion ids (right-padded after EOS)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 for sampled tokens up to and including EOS
    texts: list[str]

    @property
    def generated(self) -> int:
        return int(self.completion_mask.sum())


@torch.no_grad()
def sample_completions(policy: Policy, prompts: Sequence[str], max_new_tokens: int, temperature: float,
                       generator: torch.Generator, stop: Sequence[str] = ()) -> Rollout:
    """Ancestral sampling at `temperature` with the KV cache, drawing from `generator` (seeded per step, so a
    resumed run samples what an uninterrupted one would; HF `generate` only uses the global RNG). A row ends at
    EOS or at the token that completes one of the task's stop strings (as vLLM's `stop` ends it): later
    positions are padding and outside `completion_mask`, so the loss trains exactly the tokens whose text the
    reward scored."""
    model, pad, eos = policy.model, policy.tokenizer.pad_token_id, policy.tokenizer.eos_token_id
    ids, mask = policy._left_pad([policy._encode_prompt(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
    tokens: list[torch.Tensor] = []
    full_mask, next_position = mask, positions[:, -1:] + 1
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(ids.device)
        else:
            token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens.append(token)
        done = done | (token == eos)
        if stop:
            done = done | _ends_in_stop(policy.tokenizer, tokens, done, stop)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        full_mask = torch.cat([full_mask, (~done).long()[:, None]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=full_mask, position_ids=next_position,
                    use_cache=True, **_cache_argument(model, out))
        next_position = next_position + 1
    completion = torch.stack(tokens, dim=1)
    completion_mask = _completion_mask(completion, eos)
    if stop:
        completion, completion_mask = _cut_rows_at_stop(policy.tokenizer, completion, completion_mask, stop, pad)
    policy.counts.generated += int(completion_mask.sum())
    policy.counts.forward += int(mask.sum()) + int(completion_mask[:, :-1].sum())
    texts = [_cut_at_stop(t, stop) for t in policy.tokenizer.batch_decode(completion, skip_special_tokens=True)]
    return Rollout(ids, mask, completion, completion_mask, texts)


def _cache_argument(model: nn.Module, out: Any) -> dict[str, Any]:
    """The KV cache of `out` as the next call's keyword: `cache` since transformers 5.2x, `past_key_values` before."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _ends_in_stop(tokenizer: Any, tokens: list[torch.Tensor], done: torch.Tensor,
                  stop: Sequence[str]) -> torch.Tensor:
    """Rows still running whose newest token completes a stop string: a cheap check on the last few tokens
    (a stop string of L characters ends within the last L + 2 tokens); `_cut_rows_at_stop` makes it exact."""
    window = max(len(marker) for marker in stop) + 2
    recent = torch.stack(tokens[-window:], dim=1).cpu()
    ended = torch.zeros_like(done)
    for row in (~done).nonzero().flatten().tolist():
        text = tokenizer.decode(recent[row].tolist(), skip_special_tokens=True)
        ended[row] = any(marker in text for marker in stop)
    return ended


def _cut_rows_at_stop(tokenizer: Any, completion: torch.Tensor, mask: torch.Tensor, stop: Sequence[str],
                      pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad and unmask every token after the one that completes a row's first stop string."""
    completion, mask = completion.clone(), mask.clone()
    for row in range(completion.shape[0]):
        length = int(mask[row].sum())
        keep = tokens_through_stop(tokenizer, completion[row, :length].tolist(), stop)
        completion[row, keep:] = pad
        mask[row, keep:] = 0
    return completion, mask


def _completion_mask(completion: torch.Tensor, eos: int | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    if eos is None:
        return torch.ones_like(completion)
    is_eos = (completion == eos).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).long()


# -- the metrics row -----------------------------------------------------------------------------------------


def step_metrics(step: int, stage: int, task: str, rewards: Sequence[float] | np.ndarray, anchor: Anchor,
                 update_norm: float, seconds: float, counts: tuple[int, int, int], device: torch.device,
                 **extra: Any) -> dict[str, Any]:
    """One metrics.jsonl row in the ES contract's keys; counts = (forward, backward, generated) tokens."""
    r = np.asarray(rewards, dtype=np.float64)
    finite = r[np.isfinite(r)]
    stats = (float(finite.mean()), float(finite.std()), float(finite.min()), float(finite.max())) if finite.size \
        else (float("nan"),) * 4
    return {
        "step": step, "stage": stage, "task": task,
        "reward_mean": stats[0], "reward_std": stats[1], "reward_min": stats[2], "reward_max": stats[3],
        "theta_dist": anchor.distance(), "update_norm": update_norm,
        "skipped": False, "skip_reason": None, "nonfinite_rewards": int(r.size - finite.size),
        "rollouts": int(r.size),
        "forward_tokens": counts[0], "backward_tokens": counts[1], "generated_tokens": counts[2],
        "seconds": round(seconds, 4), **peak_memory(device), **extra,
    }


class AnchoredTrainerMixin:
    """Trainer-seam methods shared by the gradient baselines, which keep theta0 and the AWD anchor in
    `self.anchor` (an `Anchor`) and run on `self.policy`."""

    anchor: Anchor
    policy: Policy
    awd_anchor: str
    stage: int
    task: Any

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.anchor.named)

    def set_stage(self, stage: int, task: Any) -> None:
        """Train `task` from now on; with awd.anchor=stage the current weights become the anchor."""
        if stage != self.stage and self.awd_anchor == "stage":
            self.anchor.reset_anchor()
        self.stage, self.task = stage, task
        reset_peak_memory(self.policy.device)  # peak memory in the metrics rows is per stage

    def reference_weights(self):
        """Context manager: the model computes with theta0 inside the block (for the off-task KL)."""
        return self.anchor.theta0_loaded()

    def diagnostics(self, layer_distances: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"theta_dist": self.anchor.distance(), **peak_memory(self.policy.device)}
        if layer_distances:
            row["layers"] = self.anchor.layer_distances()
        return row

