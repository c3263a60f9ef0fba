import pytest
import torch

from diffpde.inference import metrics


@pytest.mark.parametrize("k", [4, 8, 32])
def test_coverage_of_a_calibrated_ensemble_is_nominal_at_any_size(k):
    g = torch.Generator().manual_seed(k)
    samples = torch.randn(50, k, 400, generator=g, dtype=torch.float64)
    truth = torch.randn(50, 400, generator=g, dtype=torch.float64)   # exchangeable with the members
    for level in (0.5, 0.9):
        assert abs(metrics.coverage(samples, truth, level).mean() - level) < 0.01


def test_coverage_flags_over_and_under_confidence():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(20, 500, generator=g, dtype=torch.float64)
    narrow = 0.3 * torch.randn(20, 32, 500, generator=g, dtype=torch.float64)
    wide = 3.0 * torch.randn(20, 32, 500, generator=g, dtype=torch.float64)
    assert metrics.coverage(narrow, truth, 0.9).mean() < 0.45  # nominal interval +-0.49: P = 0.38
    assert metrics.coverage(wide, truth, 0.9).mean() > 0.99


def test_coverage_with_ties_of_a_two_phase_field():
    # members and truth drawn from the same two-point distribution: calibrated despite the ties
    g = torch.Generator().manual_seed(1)
    samples = torch.where(torch.rand(40, 8, 300, generator=g) < 0.4, 12.0, 3.0).double()
    truth = torch.where(torch.rand(40, 300, generator=g) < 0.4, 12.0, 3.0).double()
    assert abs(metrics.coverage(samples, truth, 0.9).mean() - 0.9) < 0.02


def test_crps_fair_estimator_matches_the_gaussian_closed_form():
    # CRPS of N(0, 1) at y: y (2 Phi(y) - 1) + 2 phi(y) - 1/sqrt(pi)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(1, 2000, generator=g, dtype=torch.float64)
    samples = torch.randn(1, 16, 2000, generator=g, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = y * (2 * normal.cdf(y) - 1) + 2 * normal.log_prob(y).exp() - 1 / torch.pi**0.5
    assert abs(metrics.crps(samples, y) - exact.mean()) < 0.02


def test_spread_skill_is_one_for_a_calibrated_ensemble_and_errors_are_relative():
    g = torch.Generator().manual_seed(3)
    center = torch.randn(200, 1, 50, generator=g, dtype=torch.float64)
    samples = center + torch.randn(200, 8, 50, generator=g, dtype=torch.float64)
    truth = center[:, 0] + torch.randn(200, 50, generator=g, dtype=torch.float64)
    assert abs(metrics.spread_skill(samples, truth).mean() - 1) < 0.05
    assert torch.allclose(metrics.relative_l2(truth * 1.1, truth), torch.full((200,), 0.1, dtype=torch.float64))
    assert metrics.threshold_error_rate(torch.tensor([[3.0, 12.0, 8.0, 7.0]]), torch.tensor([[3.0, 3.0, 12.0, 12.0]]), 3.0, 12.0).item() == 0.5
