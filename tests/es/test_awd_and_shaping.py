"""AWD contracts toward the anchor exactly as the paper defines; shaping refuses signal-free populations."""

import numpy as np
import pytest
import torch

from esft.core.awd import apply_awd, validate_awd
from esft.errors import EsftError
from esft.es.shaping import centered_rank, sanitize, zscore
from esft.es.strategy import ESSettings, tell


def test_l2_contracts_delta_by_one_minus_alpha_lambda():
    anchor = torch.randn(1000, dtype=torch.float64)
    theta = anchor + torch.randn(1000, dtype=torch.float64)
    before = theta - anchor
    apply_awd(theta, anchor, "l2", 0.25)
    assert torch.allclose(theta - anchor, 0.75 * before, rtol=0, atol=1e-12)


def test_l2_fp32_contraction_within_rounding():
    anchor = torch.randn(1000)
    theta = anchor + 0.01 * torch.randn(1000)
    expected = anchor.double() + (1 - 0.01) * (theta.double() - anchor.double())
    apply_awd(theta, anchor, "l2", 0.01)
    assert torch.allclose(theta.double(), expected, rtol=0, atol=1e-6)


def test_l1_is_the_soft_threshold():
    anchor = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    theta = anchor + torch.tensor([0.5, -0.5, 0.05, -0.05, 0.0])
    apply_awd(theta, anchor, "l1", 0.1)
    assert torch.allclose(theta - anchor, torch.tensor([0.4, -0.4, 0.0, 0.0, 0.0]), atol=1e-6)


def test_zero_strength_is_a_no_op():
    theta = torch.randn(10)
    copy = theta.clone()
    apply_awd(theta, torch.zeros(10), "l2", 0.0)
    assert torch.equal(theta, copy)


@pytest.mark.parametrize("kind,lam,alpha,message", [
    ("l2", 100.0, 0.01, "alpha*lambda < 1"), ("l3", 1.0, 0.01, "unknown awd.kind"),
    ("l2", -1.0, 0.01, "must be >= 0"),
])
def test_bad_awd_settings_are_refused(kind, lam, alpha, message):
    with pytest.raises(EsftError, match=message.replace("*", r"\*")):
        validate_awd(kind, lam, alpha)


def test_zscore_matches_reference_and_refuses_equal_rewards():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.allclose(zscore(r), (r - r.mean()) / (r.std() + 1e-8))
    assert zscore(np.array([0.5, 0.5, 0.5])) is None
    assert centered_rank(np.array([2.0, 2.0])) is None


def test_centered_rank_spans_minus_half_to_half_with_tied_means():
    ranks = centered_rank(np.array([10.0, -3.0, 7.0, 7.0]))
    assert ranks.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_equal_rewards_make_no_step_and_nonfinite_are_worst():
    settings = ESSettings(4, 0.1, 0.1, antithetic=True)
    assert tell([0.3, 0.3, 0.3, 0.3], settings).coefficients is None
    clean, count = sanitize(np.array([0.2, np.nan, 0.9, np.inf]))
    assert count == 2 and clean.tolist() == [0.2, 0.2, 0.9, 0.2]


def test_antithetic_coefficient_is_difference_of_pair_scores():
    settings = ESSettings(4, 0.1, 0.1, antithetic=True)
    told = tell([1.0, 0.0, 0.0, 0.0], settings)
    z = zscore(np.array([1.0, 0.0, 0.0, 0.0]))
    assert told.coefficients == pytest.approx([z[0] - z[1], z[2] - z[3]])
    # equal fitness within every pair cancels: the update is exactly zero
    told = tell([1.0, 1.0, 0.0, 0.0], settings)
    assert told.coefficients == [0.0, 0.0]


@pytest.mark.parametrize("n,antithetic,sigma,message", [
    (1, False, 0.1, ">= 2"), (5, True, 0.1, "even"), (4, True, 0.0, "sigma must be > 0"),
])
def test_bad_es_settings_are_refused(n, antithetic, sigma, message):
    with pytest.raises(EsftError, match=message):
        ESSettings(n, sigma, 0.1, antithetic).validate()
