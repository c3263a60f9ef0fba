import pytest
import torch

from samplers._core import Run, check_sigmas, get_solver
from samplers.analytic import GaussianDenoiser


@pytest.mark.parametrize(
    "grid, message",
    [([1.0], "at least 2"), ([2.0, 1.0], "end in 0"), ([1.0, 2.0, 0.0], "strictly decreasing"),
     ([1.0, float("nan"), 0.0], "non-finite"), ([1.0, 1.0, 0.0], "strictly decreasing")],
)
def test_bad_sigma_grids_are_named(grid, message):
    with pytest.raises(ValueError, match=message):
        check_sigmas(grid)


def test_unknown_solver_lists_known_ones():
    with pytest.raises(KeyError, match="unknown solver 'nope'"):
        get_solver("nope")


def test_run_checks_denoiser_shape_and_nan():
    x = torch.zeros(2, 3)
    run = Run(lambda x, s: x[:, :2], x, [1.0, 0.0])
    with pytest.raises(ValueError, match="denoiser returned shape"):
        run.denoise(x, 1.0)
    run = Run(lambda x, s: x * float("nan"), x, [1.0, 0.0])
    with pytest.raises(FloatingPointError, match="step"):
        for i, s, _ in run.steps():
            run.denoise(x, s)


def test_gaussian_denoiser_closed_form_ode_matches_fine_euler():
    torch.manual_seed(0)
    a = torch.randn(4, 4, dtype=torch.float64)
    den = GaussianDenoiser(torch.randn(4, dtype=torch.float64), a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64) * 5.0
    sig = torch.linspace(5.0, 0.5, 20001, dtype=torch.float64)
    y = x.clone()
    for s, t in zip(sig[:-1].tolist(), sig[1:].tolist()):
        y = y + (t - s) * (y - den(y, torch.full((3,), s, dtype=torch.float64))) / s
    exact = den.ode_solution(x, 5.0, 0.5)
    assert torch.allclose(y, exact, rtol=1e-3, atol=1e-3)
