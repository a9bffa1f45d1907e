"""The RL baselines train exactly the tokens the reward scored: a rollout ends at the token that completes the
task's first stop string, as it ends at EOS (and as vLLM's `stop` would end it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esft.models.tiny import build_tokenizer
from esft.policy import _cut_at_stop, tokens_through_stop
from esft.rl.common import sample_completions
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
    assert kept == _cut_at_stop(tokenizer.decode(ids), ["</a>"]), "same cut as the reward's text"


def _rollout(stop: tuple[str, ...]):
    policy = micro_policy()
    prompts = [f"{i:02d}+{i:02d}=" for i in range(16)]
    return policy.tokenizer, sample_completions(policy, prompts, 12, 1.0, torch.Generator().manual_seed(3), stop)


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
        assert text == _cut_at_stop(free_text, stop) or length == int(free.completion_mask[row].sum())
        assert stopped.texts[row] == text
        assert bool((stopped.completion_ids[row, length:] == pad).all())
        cut_rows += length < int(free.completion_mask[row].sum())
    assert cut_rows >= 4, "the check needs rows that a stop string actually cut"


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
