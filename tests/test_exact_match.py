"""The one-pass exact-match reward equals the reward of the generated completion (greedy), on random models.

For an exact-answer task, greedy decoding produces `answer` iff the argmax at every answer position is the
answer's token and, when the budget allows more tokens, the next argmax is EOS; so one teacher-forced forward
decides the reward. Checked here against real generation for answers that are right, a token short, a token
long and unrelated, with budgets below, at and above the answer length; and the ES step's prepared,
stacked scorer (StepFitness) against Policy.exact_match.
"""

from __future__ import annotations

import random

import pytest
import torch

from esft.es.population import StepFitness, _PreparedExactMatch
from esft.tasks.base import Example, Task
from tests.conftest import micro_policy


class ExactTask(Task):
    name = "exact"
    exact_answer = True

    def __init__(self, examples: list[Example], budget: int) -> None:
        self.examples, self.max_new_tokens = examples, budget

    def train_examples(self):
        return self.examples

    def eval_examples(self):
        return self.examples

    def score(self, completion: str, example: Example) -> float:
        return float(completion == example.answer)


def _greedy(policy, prompts: list[str], budget: int) -> list[tuple[str, bool]]:
    """(completion text, whether its tokens round-trip through the tokenizer) for each prompt."""
    eos = policy.tokenizer.eos_token_id
    rows = [policy._encode_prompt(p) for p in prompts]
    ids, mask = policy._left_pad(rows)
    out = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                                pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=eos)
    results = []
    for row in out[:, ids.shape[1]:].tolist():
        tokens = row[:row.index(eos)] if eos in row else row
        text = policy.tokenizer.decode(tokens, skip_special_tokens=True)
        results.append((text, policy._encode(text) == tokens))
    return results


def _cases(policy, budget: int, rng: random.Random) -> list[Example]:
    prompts = ["".join(rng.choice("0123456789+-=|>ab ") for _ in range(rng.randint(1, 9))) for _ in range(48)]
    examples = []
    for prompt, (text, round_trips) in zip(prompts, _greedy(policy, prompts, budget)):
        answers = [text[:-1], text + "7", "123"] + ([text] if round_trips else [])
        examples += [Example(prompt=prompt, answer=a) for a in answers]
    return examples


def _stop_sometimes(policy) -> None:
    """Make EOS the argmax wherever the last hidden state's first coordinate is positive (a deterministic
    function of the context), so that completions shorter than the budget occur."""
    eos = policy.tokenizer.eos_token_id

    def hook(module, args, logits):
        logits[..., eos] = logits.max(-1).values + 100 * args[0][..., 0]
        return logits
    policy.model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("seed,budget,stops", [(0, 1, False), (1, 3, False), (2, 3, True), (3, 5, True)])
def test_one_pass_reward_equals_generated_reward(seed, budget, stops):
    policy = micro_policy(seed)
    if stops:
        _stop_sometimes(policy)
    examples = _cases(policy, budget, random.Random(seed))
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    with torch.no_grad():
        one_pass = policy.exact_match(prompts, answers, budget).tolist()
    generated = policy.generate(prompts, budget)
    assert one_pass == [g == a for g, a in zip(generated, answers)]
    assert 3 <= sum(one_pass) < len(one_pass), "the check needs right and wrong answers"
    if stops:
        assert any(len(policy._encode(a)) < budget for a, ok in zip(answers, one_pass) if ok), "no early EOS"


def test_prepared_stacked_scorer_equals_policy_exact_match():
    policy = micro_policy(4)
    examples = _cases(policy, 3, random.Random(4))
    task = ExactTask(examples, 3)
    expected = policy.exact_match([e.prompt for e in examples], [e.answer for e in examples], 3)
    prepared = _PreparedExactMatch(policy, task, examples)
    assert torch.equal(prepared.matches(1, rows_per_forward=7), expected)
    assert torch.equal(prepared.matches(3, rows_per_forward=7), expected.repeat(3))
    fitness = StepFitness(policy, task, examples)
    assert fitness() == pytest.approx(float(expected.float().mean()))
    assert fitness.batched(2) == pytest.approx([float(expected.float().mean())] * 2)
