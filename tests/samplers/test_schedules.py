import math

import pytest
import torch

from samplers import schedules
from samplers.denoisers import LinearVPTimestep

from _kdiffusion import load_sampling  # tests/samplers is on sys.path


@pytest.mark.parametrize("name, kwargs", [("karras", {"rho": 7.0}), ("loglinear", {}), ("polyexponential", {"rho": 2.0})])
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_grids_are_float64_decreasing_with_endpoints(name, kwargs, steps):
    s = schedules.get_schedule(name, steps, sigma_min=0.002, sigma_max=80.0, **kwargs)
    assert s.dtype == torch.float64 and s.shape == (steps + 1,)
    assert s[-1] == 0 and (s[1:] < s[:-1]).all()
    assert s[0].item() == pytest.approx(80.0, rel=1e-12)
    if steps > 1:
        assert s[-2].item() == pytest.approx(0.002, rel=1e-12)


def test_karras_and_loglinear_formulas():
    # rho = 1 is uniform in sigma; loglinear is geometric; polyexponential(rho=1) is loglinear
    assert torch.allclose(schedules.karras(4, 1.0, 5.0, rho=1.0), torch.tensor([5.0, 11 / 3, 7 / 3, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(schedules.loglinear(3, 0.01, 1.0), torch.tensor([1.0, 0.1, 0.01, 0.0], dtype=torch.float64))
    assert torch.allclose(schedules.polyexponential(7, 0.01, 3.0), schedules.loglinear(7, 0.01, 3.0))
    mid = schedules.karras(3, 0.002, 80.0)[1].item()  # the midpoint of sigma^(1/7)
    assert mid == pytest.approx(((0.002 ** (1 / 7) + 80.0 ** (1 / 7)) / 2) ** 7, rel=1e-12)


def test_vp_grid_is_uniform_in_time():
    s = schedules.vp(5, beta_min=0.1, beta_max=20.0, eps_s=1e-3)
    t = LinearVPTimestep(0.1, 20.0)(s[:-1])
    assert torch.allclose(t, torch.linspace(1.0, 1e-3, 5, dtype=torch.float64), atol=1e-12)
    assert s[0].item() == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel=1e-12)


def test_vp_sigma_and_time_formulas():
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) and its closed-form inverse, written once."""
    for t, bd, b0 in [(1.0, 19.9, 0.1), (0.3, 19.9, 0.1), (1e-5, 19.9, 0.1), (0.7, 10.0, 0.5)]:
        sigma = schedules.vp_sigma(t, bd, b0)
        assert sigma.dtype == torch.float64
        assert sigma.item() == pytest.approx(math.sqrt(math.exp(0.5 * bd * t * t + b0 * t) - 1), rel=1e-12)
        assert schedules.vp_time(sigma, bd, b0).item() == pytest.approx(t, rel=1e-10)
    assert schedules.vp_sigma(1.0).item() == pytest.approx(152.16697028394637, rel=1e-12)   # the defaults' sigma_max
    # constant beta: sigma^2 = exp(beta_min t) - 1
    assert schedules.vp_sigma(0.5, 0.0, 2.0).item() == pytest.approx(math.sqrt(math.e - 1), rel=1e-12)
    assert schedules.vp_time(math.sqrt(math.e - 1), 0.0, 2.0).item() == pytest.approx(0.5, rel=1e-12)
    t = torch.linspace(1e-3, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(LinearVPTimestep(0.1, 20.0)(schedules.vp_sigma(t)), t, rtol=1e-12, atol=0)


def test_flow_frame_formulas():
    """t = sigma / (1 + sigma), x_t = x / (1 + sigma), and sigma = t / (1 - t) back, written once."""
    scale, t = schedules.flow_frame(torch.tensor([0.0, 1.0, 3.0, 1e6], dtype=torch.float64))
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.5, 0.25, 1 / (1 + 1e6)], dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([0.0, 0.5, 0.75, 1e6 / (1 + 1e6)], dtype=torch.float64))
    assert schedules.flow_sigma(0.75).item() == pytest.approx(3.0, rel=1e-12)
    sigma = torch.logspace(-3, 3, 9, dtype=torch.float64)
    torch.testing.assert_close(schedules.flow_sigma(schedules.flow_frame(sigma)[1]), sigma, rtol=1e-9, atol=0)
    # the flow state x_t = (1 - t) x0 + t eps is the VE state x0 + sigma eps scaled by 1 / (1 + sigma)
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    scale, t = schedules.flow_frame(2.5)
    torch.testing.assert_close(scale * (x0 + 2.5 * eps), (1 - t) * x0 + t * eps)


def test_grids_match_kdiffusion():
    k = load_sampling()
    pairs = [(schedules.karras(9, 0.03, 14.0, rho=5.0), k.get_sigmas_karras(9, 0.03, 14.0, rho=5.0)),
             (schedules.loglinear(9, 0.03, 14.0), k.get_sigmas_exponential(9, 0.03, 14.0)),
             (schedules.polyexponential(9, 0.03, 14.0, rho=3.0), k.get_sigmas_polyexponential(9, 0.03, 14.0, rho=3.0)),
             (schedules.vp(9, beta_min=0.2, beta_max=15.0, eps_s=1e-2), k.get_sigmas_vp(9, beta_d=14.8, beta_min=0.2, eps_s=1e-2))]
    for ours, theirs in pairs:
        assert torch.allclose(ours, theirs.to(torch.float64), rtol=1e-5, atol=0)


def test_custom_and_errors():
    assert torch.equal(schedules.custom([3.0, 1.0, 0.0]), torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="end in 0"):
        schedules.custom([3.0, 1.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedules.custom([1.0, 3.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.karras(5, 2.0, 1.0)
    with pytest.raises(ValueError, match="positive integer"):
        schedules.loglinear(0, 0.1, 1.0)
    with pytest.raises(KeyError, match="unknown schedule 'cosine'.*karras"):
        schedules.get_schedule("cosine", 5)
