"""Off-task KL: zero at theta0, positive after the weights move, and measured on base-model continuations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esft.es.trainer import ESTrainer
from esft.evaluation.off_task_kl import OffTaskKL


def _trainer(policy):
    es = {"population_size": 2, "sigma": 0.1, "alpha": 0.1, "antithetic": True, "shaping": "zscore",
          "evaluator": "inplace", "prompts_per_step": None, "cache_noise": "auto", "noise": "iid"}
    return ESTrainer(policy, es, {"kind": "l2", "lambda": 0.0, "anchor": "start"}, 0, lambda row: None)


def test_kl_is_zero_at_theta0_and_grows_when_weights_move(policy, digit_task):
    trainer = _trainer(policy)
    kl = OffTaskKL(policy, {"digits": digit_task}, samples=8, max_new_tokens=2, batch_size=4)
    assert kl.measure(trainer.reference_weights)["digits"] == 0.0
    trainer.params.master.add_(0.05 * torch.randn_like(trainer.params.master))
    trainer.params.restore()
    moved = kl.measure(trainer.reference_weights)["digits"]
    assert moved > 0
    # the reference context restored the current weights afterwards
    for (_, param), (_, part) in zip(trainer.params.named, trainer.params.slices()):
        assert torch.equal(param.detach().reshape(-1), trainer.params.master[part])


def test_next_token_log_probs_equal_the_forward_off_task_kl_ran_itself(policy):
    """Policy.next_token_log_probs is the forward OffTaskKL._log_probs ran on the model before it moved into
    the Policy: left-padded rows, positions counted from each row's first token, log-softmax in float32."""
    rows = [policy.encode_prompt("12+34=") + policy.encode("46"), policy.encode_prompt("7-2=") + policy.encode("5")]
    ids, mask = policy.left_pad(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    before = policy.counts.forward
    got = policy.next_token_log_probs(rows)
    assert torch.equal(got, F.log_softmax(logits, dim=-1)) and got.dtype == torch.float32
    assert not got.requires_grad and policy.counts.forward == before, "a diagnostic: no grad, not counted"
