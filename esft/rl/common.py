"""What the gradient baselines (GRPO, PPO) share beyond esft/core: sampled rollouts on the shared Policy and
the trainer-seam methods of a trainer that keeps theta0 in an `Anchor`.

AWD for RL is the same decoupled pull as for ES (esft/core/awd.py), applied right after every optimizer step,
with strength c = lr * awd.lambda (lr: the optimizer's *current* learning rate), exactly as AdamW scales its
decoupled weight decay -- except that it decays toward the anchor theta0, not toward zero. No anchor codebase
offers AWD for RL; it is here so drift-report can put ES+AWD beside RL+AWD. Note the scale: with Adam each
coordinate moves about lr per step, so an L2 pull of lr*lambda caps a steadily pushed coordinate near 1/lambda;
useful RL lambdas are therefore larger than ES's (where c = alpha*lambda acts on alpha/sqrt(N)-sized steps).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from esft.core.accounting import StepTokens, metrics_row, peak_memory, reset_peak_memory
from esft.core.anchor import Anchor
from esft.policy import Policy, _cut_at_stop, tokens_through_stop

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


def rollout_metrics(step: int, stage: int, task: str, rewards: Sequence[float], anchor: Anchor, update_norm: float,
                    seconds: float, tokens: StepTokens, device: torch.device, **extra: Any) -> dict[str, Any]:
    """The metrics row of one RL step: reward statistics over the finite rollout rewards (a non-finite reward
    is counted, not averaged in; RL never skips a step)."""
    r = np.asarray(rewards, dtype=np.float64)
    finite = r[np.isfinite(r)]
    return metrics_row(step, stage, task, finite, nonfinite=int(r.size - finite.size), theta_dist=anchor.distance(),
                       update_norm=update_norm, seconds=seconds, tokens=tokens, device=device, rollouts=int(r.size),
                       **extra)


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
        return self.anchor.numel

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

