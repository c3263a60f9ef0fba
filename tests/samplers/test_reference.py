import pytest
import torch

from samplers import schedules
from samplers.analytic import GaussianDenoiser
from samplers.reference import reference


def _gaussian():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    return GaussianDenoiser(torch.randn(2, 3, generator=g, dtype=torch.float64), a @ a.T / 6 + 0.01 * torch.eye(6, dtype=torch.float64))


def test_reference_matches_the_closed_form_flow():
    den = _gaussian()
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 50.0
    stats = {}
    at_min = reference(den, x, (50.0, 0.005), denoise_final=False, stats=stats)
    exact = den.ode_solution(x, 50.0, 0.005)
    assert torch.allclose(at_min, exact, rtol=1e-6, atol=1e-6)
    assert stats["nfe"] > 20 and stats["status"] == 0
    # on a grid: sigma_max = sigmas[0], sigma_min = last positive sigma, then x = D(x, sigma_min)
    final = reference(den, x, schedules.karras(5, 0.005, 50.0))
    assert torch.allclose(final, den(exact, torch.full((3,), 0.005, dtype=torch.float64)), rtol=1e-6, atol=1e-6)
    # a looser tolerance is measurably worse: the comparison can fail
    loose = reference(den, x, (50.0, 0.005), rtol=1e-2, atol=1e-2, denoise_final=False)
    assert (loose - exact).abs().max() > 1e-6


def test_reference_float32_and_errors():
    den = _gaussian()
    x = torch.randn(2, 2, 3, dtype=torch.float64) * 10.0
    out = reference(den, x.float(), (10.0, 0.01))
    assert out.dtype == torch.float32 and out.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        reference(den, x, (0.01, 10.0))
    with pytest.raises(ValueError, match="one step"):
        reference(den, x, [10.0, 0.0])
    with pytest.raises(ValueError, match="end in 0"):
        reference(den, x, [10.0, 5.0, 1.0])
