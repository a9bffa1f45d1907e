"""Log-likelihood scoring of multiple-choice tasks (Policy.option_logprobs, esft/evaluation/evaluator.py): the numbers
are the teacher-forced sums lm-evaluation-harness defines, the option the model is made to prefer wins, and
acc_norm (per byte) parts from acc where option lengths differ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import micro_policy

from esft.errors import EsftError
from esft.evaluation.evaluator import Evaluator, correct_bits, loglik_metrics, resolve_scoring, score_examples
from esft.policy import Policy, eos_ids, has_unique_tokenization
from esft.tasks.base import Example, Task
from esft.tasks.registry import build_task


class ChoiceTask(Task):
    """Hand-built multiple-choice items: the options are given verbatim (no letters)."""

    name = "hand_choice"
    max_new_tokens = 2

    def __init__(self, items: list[tuple[str, list[str], int]], scoring: str | None = None) -> None:
        self.items = items
        self.scoring = scoring
        self._examples = [Example(prompt=q, answer="ABCDEFGHIJ"[gold], meta={"options": opts, "labels": list("AB")})
                          for q, opts, gold in items]

    def train_examples(self):
        return self._examples

    def eval_examples(self):
        return self._examples

    def loglik_request(self, example: Example) -> tuple[str, list[str], int]:
        return example.prompt, list(example.meta["options"]), "ABCDEFGHIJ".index(example.answer)

    def score(self, completion: str, example: Example) -> float:
        return float(completion.strip() == example.answer)


class PlainTask(ChoiceTask):
    """The same items without a log-likelihood request: a task that can only be generated."""

    name = "plain"
    loglik_request = None  # type: ignore[assignment]


def _boost(policy: Policy, text: str, amount: float) -> None:
    """Make the model prefer the bytes of `text`: add `amount` to their logits at every position."""
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    bias = torch.zeros(policy.model.config.vocab_size)
    bias[ids] = amount
    policy.model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_option_logprobs_are_the_teacher_forced_sums(batch_size):
    """Whatever the batching (one item per forward, or prompts of different lengths left-padded together with
    a ragged number of options sharing their prompt's cache), each score is the plain unbatched sum."""
    policy = micro_policy()
    prompts, options = ["12+3=", "7-2=", "100+20="], [["15", "x"], ["5", "55 ", "a"], ["120"]]
    got = policy.option_logprobs(prompts, options, batch_size=batch_size)
    for prompt, opts, scores in zip(prompts, options, got):
        for option, score in zip(opts, scores):
            context = policy.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            continuation = policy.tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), -1)
            expected = sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
            assert score == pytest.approx(expected, abs=1e-4)


def test_the_preferred_option_wins_and_acc_norm_differs_from_acc_on_lengths():
    policy = micro_policy()
    _boost(policy, "Z", 12.0)
    # Item 1: "ZZ" is what the model is made to say. Item 2: one costly byte "q" (sum ~ -13) against the same
    # byte after ten cheap "Z"s: a lower sum (acc picks the short option) but a far higher mean per byte.
    items = [("pick", ["ab", "ZZ"], 1), ("long", ["q", "ZZZZZZZZZZq"], 1)]
    metrics = loglik_metrics(policy, ChoiceTask(items), ChoiceTask(items).eval_examples())
    assert metrics["acc"].tolist() == [1.0, 0.0]
    assert metrics["acc_norm"].tolist() == [1.0, 1.0]


def test_evaluator_records_the_scoring_and_both_metrics():
    policy = micro_policy()
    _boost(policy, "Z", 12.0)
    task = ChoiceTask([("long", ["q", "ZZZZZZZZZZq"], 1)], scoring="loglik")
    rows = Evaluator(policy, {"hand": task, "plain": PlainTask([("x", ["a", "b"], 0)])}, {"hand": "eval_only"},
                     scoring="generate").evaluate()
    hand, plain = rows
    assert (hand["scoring"], hand["acc"], hand["acc_norm"], hand["accuracy"]) == ("loglik_acc_norm", 0.0, 1.0, 1.0)
    assert plain["scoring"] == "generate" and "acc_norm" not in plain
    rows = Evaluator(policy, {"hand": task}, {}, loglik_metric="acc").evaluate()
    assert (rows[0]["scoring"], rows[0]["accuracy"]) == ("loglik_acc", 0.0)
    assert rows[0]["correct"] == "0" and hand["correct"] == "1"  # each item's outcome, for paired drops


def test_correct_bits_only_for_zero_one_outcomes():
    assert correct_bits(np.array([1.0, 0.0, 1.0])) == "101"
    assert correct_bits(np.array([1.0, 0.5])) is None  # a partial score cannot be paired as an outcome
    assert correct_bits(np.array([])) is None


def test_scoring_resolution():
    assert resolve_scoring(ChoiceTask([]), "loglik") == "loglik"
    assert resolve_scoring(PlainTask([]), "loglik") == "generate"  # global loglik leaves generative tasks alone
    assert resolve_scoring(ChoiceTask([], scoring="generate"), "loglik") == "generate"  # the task's key wins
    with pytest.raises(EsftError, match="not multiple choice"):
        resolve_scoring(PlainTask([], scoring="loglik"), "generate")
    with pytest.raises(EsftError, match="eval.scoring"):
        resolve_scoring(ChoiceTask([]), "logits")
    with pytest.raises(EsftError, match="loglik_metric"):
        Evaluator(micro_policy(), {}, {}, loglik_metric="f1")


def test_builtin_and_jsonl_tasks_take_a_scoring_key(tmp_path):
    assert build_task({"name": "arc_challenge", "scoring": "loglik"}).scoring == "loglik"
    with pytest.raises(EsftError, match="scoring"):
        build_task({"name": "piqa", "scoring": "probability"})
    data = tmp_path / "items.jsonl"
    data.write_text('{"prompt": "Capital of France?", "answer": 0, "choices": ["Paris", "Rome"]}\n')
    task = build_task({"name": "capitals", "jsonl": str(data), "reward_kind": "choice", "scoring": "loglik"})
    assert resolve_scoring(task, "generate") == "loglik"
    with pytest.raises(EsftError, match="reward_kind=choice"):
        build_task({"name": "qa", "jsonl": str(data), "reward_kind": "exact", "scoring": "loglik"})


def test_jsonl_choice_task_scores_its_letters():
    """A `choice` jsonl task offers letters as continuations (the harness's MMLU form); the boosted one wins."""
    policy = micro_policy()
    _boost(policy, "B", 12.0)
    example = Example(prompt="Q?\nA. x\nB. y\nAnswer with the letter of the correct option.", answer="B",
                      meta={"labels": ["A", "B"]})

    class Letters(PlainTask):
        reward_kind = "choice"

    task = Letters([])
    scored = score_examples(policy, task, [example], scoring="loglik")
    assert scored.accuracy.tolist() == [1.0] and scored.completions is None


def test_hellaswag_context_is_cleaned_like_the_harness():
    from esft.tasks.multiple_choice import HellaSwag

    task = HellaSwag()
    example = Example(prompt="", answer="B", meta={"options": ["a [step] b", "c"], "question": "Ctx [title] more",
                                                   "activity": "Cooking"})
    context, options, gold = task.loglik_request(example)
    assert (context, options, gold) == ("Cooking: Ctx. more", ["a b", "c"], 1)


def test_eos_ids_join_the_generation_config_and_the_tokenizer():
    policy = micro_policy()
    policy.model.generation_config.eos_token_id = [5, 7]
    assert eos_ids(policy.model, policy.tokenizer) == [5, 7, policy.tokenizer.eos_token_id]
    policy.model.generation_config.eos_token_id = policy.tokenizer.eos_token_id
    assert eos_ids(policy.model, policy.tokenizer) == [policy.tokenizer.eos_token_id]


def test_exact_match_shortcut_only_where_it_is_greedy_decoding():
    policy = micro_policy()
    assert has_unique_tokenization(policy.tokenizer) and policy.exact_match_is_greedy  # bytes, no merges
    two_eos = micro_policy()
    two_eos.model.generation_config.eos_token_id = [two_eos.tokenizer.eos_token_id, 5]
    two_eos.eos_ids = eos_ids(two_eos.model, two_eos.tokenizer)
    assert not two_eos.exact_match_is_greedy  # the check appends one EOS; greedy would stop at either
    assert math.isfinite(float(np.mean(score_examples(two_eos, build_task("add"),
                                                      build_task("add").eval_examples()[:4]).accuracy)))
