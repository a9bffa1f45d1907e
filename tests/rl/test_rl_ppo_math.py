"""PPO's pieces against hand-computed numbers: GAE, the KL-in-reward rewards, whitening, the clipped losses."""

from __future__ import annotations

import pytest
import torch

from esft.rl.ppo import gae, masked_mean, ppo_losses, token_rewards, whiten


def test_gae_matches_a_hand_computed_example():
    # Row 0: three tokens, terminal reward 1. Row 1: two tokens then padding, terminal reward 0.5.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.1, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # Row 0: delta2 = 1 - .4 = .6; delta1 = 0 + .4 - .2 = .2; delta0 = 0 + .2 - .5 = -.3
    #        A2 = .6; A1 = .2 + .5 * .6 = .5; A0 = -.3 + .5 * .5 = -.05
    # Row 1: the value after the last real token is 0 (episode over): delta1 = .5 - .3 = .2; A1 = .2
    #        delta0 = 0 + .3 - .1 = .2; A0 = .2 + .5 * .2 = .3; the padded position gets 0
    expected = torch.tensor([[-0.05, 0.5, 0.6], [0.3, 0.2, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.allclose(returns, (expected + values) * mask, atol=1e-6)


def test_gae_with_discount():
    rewards, values, mask = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # A1 = 2 - 1 = 1; A0 = (0 + .9 * 1 - 1) + .9 * 1 * 1 = .8  (lam = 1: discounted return minus V0 = 1.8 - 1)
    assert torch.allclose(advantages, torch.tensor([[0.8, 1.0]]), atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_real_token_and_the_kl_everywhere():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0, 0.0]), logp, ref, mask, beta=0.1)
    expected = torch.tensor([[-0.05, 0.0, 0.1 + 1.0], [-0.1, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_whiten_is_zero_mean_unit_variance_on_masked_tokens_only():
    x, mask = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = whiten(x, mask)
    assert float(masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_mean(w ** 2, mask)) == pytest.approx(1.0, abs=1e-5)
    assert float(w[0, 2]) == 0.0


def test_clipped_losses():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    advantages = torch.tensor([[1.0, -1.0]])
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    policy_loss, value_loss, stats = ppo_losses(logp, old, values, old_values, advantages, returns, mask, 0.2, 0.2)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(0.5, 0.8) = 0.8 -> mean -0.2
    assert float(policy_loss) == pytest.approx(-0.2, abs=1e-6)
    # value 1.0 clipped to 0.2 -> max(0, .64) = .64; value 0: max(1, 1) = 1 -> 0.5 * mean = 0.41
    assert float(value_loss) == pytest.approx(0.41, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(1.0)
