"""The one-pass exact-match reward equals the reward of the generated completion (greedy), on random models.

For an exact-answer task, greedy decoding produces `answer` iff the argmax at every answer position is the
answer's token and, when the budget allows more tokens, the next argmax is EOS; so one teacher-forced forward
decides the reward. Checked here against real generation for answers that are right, a token short, a token
long and unrelated, with budgets below, at and above the answer length; the ES step's prepared, stacked
scorer (StepFitness: Policy.encode_exact_match once, Policy.teacher_forced_match per member) against
Policy.exact_match; and both against the two implementations they replaced (kept here verbatim), bit for bit.
"""

from __future__ import annotations

import random

import pytest
import torch

from esft.es.population import StepFitness
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
    rows = [policy.encode_prompt(p) for p in prompts]
    ids, mask = policy.left_pad(rows)
    out = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                                pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=eos)
    results = []
    for row in out[:, ids.shape[1]:].tolist():
        tokens = row[:row.index(eos)] if eos in row else row
        text = policy.tokenizer.decode(tokens, skip_special_tokens=True)
        results.append((text, policy.encode(text) == tokens))
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
        assert any(len(policy.encode(a)) < budget for a, ok in zip(answers, one_pass) if ok), "no early EOS"


def test_prepared_stacked_scorer_equals_policy_exact_match():
    policy = micro_policy(4)
    examples = _cases(policy, 3, random.Random(4))
    task = ExactTask(examples, 3)
    expected = policy.exact_match([e.prompt for e in examples], [e.answer for e in examples], 3)
    prepared = policy.encode_exact_match([e.prompt for e in examples], [e.answer for e in examples], 3)
    assert torch.equal(policy.teacher_forced_match(prepared, 1, rows_per_forward=7), expected)
    assert torch.equal(policy.teacher_forced_match(prepared, 3, rows_per_forward=7), expected.repeat(3))
    fitness = StepFitness(policy, task, examples)
    assert fitness() == pytest.approx(float(expected.float().mean()))
    assert fitness.batched(2) == pytest.approx([float(expected.float().mean())] * 2)


# -- the implementations the public Policy path replaced, verbatim but for the renamed helpers ---------------
def _old_exact_match(policy, prompts, answers, max_new_tokens, batch_size=256) -> torch.Tensor:
    """Policy.exact_match before encode_exact_match / teacher_forced_match: a per-row Python check."""
    results = []
    for start in range(0, len(prompts), batch_size):
        rows, targets = [], []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
            row, target = policy.exact_match_row(prompt, answer, max_new_tokens)
            rows.append(row)
            targets.append(target)
        ids, mask = policy.left_pad(rows)
        keep = max(len(t) for t in targets) + 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        predicted = logits[:, :-1].argmax(-1)
        actual = ids[:, -(keep - 1):] if keep > 1 else ids[:, :0]
        matches = torch.zeros(len(rows), dtype=torch.bool)
        for i, target in enumerate(targets):
            if target:
                matches[i] = bool((predicted[i, -len(target):] == actual[i, -len(target):]).all())
        results.append(matches)
    return torch.cat(results)


def _old_prepared_matches(policy, prompts, answers, budget, members, rows_per_forward) -> torch.Tensor:
    """es/population.py's _PreparedExactMatch.matches before it called Policy.teacher_forced_match."""
    rows, lengths = [], []
    for prompt, answer in zip(prompts, answers):
        row, target = policy.exact_match_row(prompt, answer, budget)
        rows.append(row)
        lengths.append(len(target))
    all_ids, all_mask = policy.left_pad(rows)
    all_positions = (all_mask.cumsum(-1) - 1).clamp(min=0)
    all_lengths, keep = torch.tensor(lengths), max(lengths) + 1

    def forward(part: slice, n: int) -> torch.Tensor:
        ids, mask, positions = (t[part].repeat(n, 1) for t in (all_ids, all_mask, all_positions))
        lengths = all_lengths[part].repeat(n)
        logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        width = keep - 1
        predicted = logits[:, :-1].argmax(-1)
        actual = ids[:, ids.shape[1] - width:]
        scored = torch.arange(width) >= (width - lengths).unsqueeze(1)
        return (((predicted == actual) | ~scored).all(-1) & (lengths > 0)).cpu()

    if members == 1:
        return torch.cat([forward(slice(s, s + rows_per_forward), 1) for s in range(0, len(rows), rows_per_forward)])
    return forward(slice(None), members)


@pytest.mark.parametrize("seed,budget,stops", [(5, 1, False), (6, 3, True), (7, 4, True)])
def test_public_exact_match_path_equals_the_replaced_implementations(seed, budget, stops):
    """exact_match and StepFitness now share encode_exact_match + teacher_forced_match: the same booleans and
    the same forward-token count as the two separate implementations before (ES rewards are unchanged)."""
    policy = micro_policy(seed)
    if stops:
        _stop_sometimes(policy)
    examples = _cases(policy, budget, random.Random(seed))
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    with torch.no_grad():
        old = _old_exact_match(policy, prompts, answers, budget, batch_size=40)
        old_stacked = [_old_prepared_matches(policy, prompts, answers, budget, n, 23) for n in (1, 3)]
    before = policy.counts.forward
    assert torch.equal(policy.exact_match(prompts, answers, budget, batch_size=40), old)
    batch = policy.encode_exact_match(prompts, answers, budget)
    assert batch.rows == len(prompts) and batch.keep == int(batch.lengths.max()) + 1
    for n, expected in zip((1, 3), old_stacked):
        assert torch.equal(policy.teacher_forced_match(batch, n, rows_per_forward=23), expected)
    rows = [policy.exact_match_row(p, a, budget)[0] for p, a in zip(prompts, answers)]
    tokens = sum(map(len, rows))  # exact_match + members 1 (split) + members 3 (stacked)
    assert policy.counts.forward - before == tokens + tokens + 3 * tokens
    fitness = StepFitness(policy, ExactTask(examples, budget), examples, batch_size=23)
    assert fitness.batched(3) == old_stacked[1].double().reshape(3, -1).mean(1).tolist()
    assert 0 < int(old.sum()) < len(old), "the check needs right and wrong answers"
