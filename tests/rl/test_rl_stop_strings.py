"""The RL baselines train exactly the tokens the reward scored: a rollout ends at the token that completes the
task's first stop string, as it ends at EOS (and as vLLM's `stop` would end it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esft.models.tiny import build_tokenizer
from esft.policy import Policy, Rollout, cut_at_stop, tokens_through_stop
from esft.run.curriculum import Stage
from tests.conftest import DigitTask, micro_policy
from tests.rl.test_rl_trainers import GRPO, NO_AWD, Hooks


def test_tokens_through_stop_keeps_the_stop_string_and_nothing_after():
    tokenizer = build_tokenizer()
    ids = tokenizer("<a>12</a> junk </b>", add_special_tokens=False)["input_ids"]
    assert tokens_through_stop(tokenizer, ids, ["</a>"]) == len("<a>12</a>")
    assert tokens_through_stop(tokenizer, ids, ["</b>", "</a>"]) == len("<a>12</a>"), "the earliest stop wins"
    assert tokens_through_stop(tokenizer, ids, ["</c>"]) == len(ids)
    assert tokens_through_stop(tokenizer, ids, []) == len(ids)
    assert tokens_through_stop(tokenizer, [], ["</a>"]) == 0
    kept = tokenizer.decode(ids[:tokens_through_stop(tokenizer, ids, ["</a>"])])
    assert kept == cut_at_stop(tokenizer.decode(ids), ["</a>"]), "same cut as the reward's text"


def _rollout(stop: tuple[str, ...]):
    policy = micro_policy()
    prompts = [f"{i:02d}+{i:02d}=" for i in range(16)]
    return policy.tokenizer, policy.sample(prompts, 12, 1.0, torch.Generator().manual_seed(3), stop)


def test_ppo_rollouts_end_at_the_first_stop_string():
    stop = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")  # a random byte model emits digits now and then
    tokenizer, free = _rollout(())
    _, stopped = _rollout(stop)
    pad = tokenizer.pad_token_id
    cut_rows = 0
    for row in range(free.completion_ids.shape[0]):
        length = int(stopped.completion_mask[row].sum())
        text = tokenizer.decode(stopped.completion_ids[row, :length].tolist(), skip_special_tokens=True)
        free_text = tokenizer.decode(free.completion_ids[row].tolist(), skip_special_tokens=True)
        # the same samples up to the stop (one generator, drawn for every row at every step) ...
        assert torch.equal(stopped.completion_ids[row, :length], free.completion_ids[row, :length])
        # ... ending right after the stop string's token, with padding and no mask after it
        assert text == cut_at_stop(free_text, stop) or length == int(free.completion_mask[row].sum())
        assert stopped.texts[row] == text
        assert bool((stopped.completion_ids[row, length:] == pad).all())
        cut_rows += length < int(free.completion_mask[row].sum())
    assert cut_rows >= 4, "the check needs rows that a stop string actually cut"


@torch.no_grad()
def _old_sample_completions(policy: Policy, prompts, max_new_tokens, temperature, generator, stop=()) -> Rollout:
    """rl/common.py's sample_completions before it moved into Policy.sample (verbatim but for the public names
    and the inlined helpers), the reference Policy.sample must reproduce token for token."""
    import inspect

    model, pad, eos = policy.model, policy.tokenizer.pad_token_id, policy.tokenizer.eos_token_id
    ids, mask = policy.left_pad([policy.encode_prompt(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    tokens: list[torch.Tensor] = []
    full_mask, next_position = mask, positions[:, -1:] + 1
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(1)
        else:
            token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens.append(token)
        done = done | (token == eos)
        if stop:
            window = max(len(marker) for marker in stop) + 2
            recent = torch.stack(tokens[-window:], dim=1)
            for row in (~done).nonzero().flatten().tolist():
                text = policy.tokenizer.decode(recent[row].tolist(), skip_special_tokens=True)
                done[row] = any(marker in text for marker in stop)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        full_mask = torch.cat([full_mask, (~done).long()[:, None]], dim=1)
        cache = ({"cache": out.cache} if "cache" in inspect.signature(model.forward).parameters
                 else {"past_key_values": out.past_key_values})
        out = model(input_ids=token[:, None], attention_mask=full_mask, position_ids=next_position, use_cache=True,
                    **cache)
        next_position = next_position + 1
    completion = torch.stack(tokens, dim=1)
    is_eos = (completion == eos).long()
    completion_mask = (~((is_eos.cumsum(1) - is_eos) > 0)).long()
    if stop:
        for row in range(completion.shape[0]):
            keep = tokens_through_stop(policy.tokenizer, completion[row, :int(completion_mask[row].sum())].tolist(),
                                       stop)
            completion[row, keep:] = pad
            completion_mask[row, keep:] = 0
    policy.counts.generated += int(completion_mask.sum())
    policy.counts.forward += int(mask.sum()) + int(completion_mask[:, :-1].sum())
    texts = [cut_at_stop(t, stop) for t in policy.tokenizer.batch_decode(completion, skip_special_tokens=True)]
    return Rollout(ids, mask, completion, completion_mask, texts)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("stop", [(), ("3", "7")])
def test_policy_sample_equals_the_replaced_sampler(temperature, stop):
    """Policy.sample draws exactly what rl/common.py's sample_completions drew for a seed: same ids, masks,
    texts and token counts (a resumed PPO run samples what the uninterrupted one did)."""
    prompts = [f"{i:02d}+{i:02d}=" for i in range(12)]
    old_policy, new_policy = micro_policy(5), micro_policy(5)
    old = _old_sample_completions(old_policy, prompts, 10, temperature, torch.Generator().manual_seed(11), stop)
    new = new_policy.sample(prompts, 10, temperature, torch.Generator().manual_seed(11), stop)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        assert torch.equal(getattr(new, name), getattr(old, name)), name
    assert new.texts == old.texts and new.generated == old.generated
    assert new_policy.counts == old_policy.counts


class StopTask(DigitTask):
    """DigitTask whose completions end at the first '5'."""

    stop = ("5",)
    max_new_tokens = 6


def test_grpo_trains_only_the_tokens_through_the_stop_string(tmp_path: Path):
    pytest.importorskip("trl")
    from esft.rl.grpo import GRPOTrainer

    trainer = GRPOTrainer(micro_policy(), dict(GRPO), NO_AWD, seed=0)
    stage = Stage(0, StopTask(), 2, 1)
    trainer.set_stage(0, stage.task)
    seen: list[list[int]] = []
    original = trainer._build

    def build_and_watch(*args, **kwargs):
        trl_trainer = original(*args, **kwargs)
        generate = trl_trainer._generate_single_turn

        def watched(*a, **k):
            ids, logprobs = generate(*a, **k)
            seen.extend(ids)
            return ids, logprobs

        trl_trainer._generate_single_turn = watched
        return trl_trainer

    trainer._build = build_and_watch
    hooks = Hooks(stage, tmp_path)
    trainer.run_stage(stage, hooks)
    tokenizer = trainer.policy.tokenizer
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in seen]
    assert len(texts) == 2 * GRPO["prompts_per_step"] * GRPO["num_generations"]
    assert all("5" not in text[:-1] for text in texts), "nothing is trained after the stop string"
    assert any(text.endswith("5") for text in texts), "the check needs completions that a stop string cut"
    assert [row["step"] for row in hooks.rows] == [1, 2]
