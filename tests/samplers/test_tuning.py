"""Optimised sigma grids: valid grids, exact DP, and better than fixed schedules on fresh noise."""

import math

import pytest
import torch

from samplers import schedules
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.ode import dpmpp_2m, euler
from samplers.reference import reference
from samplers.tuning import (_shortest_path, _shortest_path_2m, amplification, calibrate, local_errors, optimized_sigmas,
                             reference_trajectory)

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(4, 8, generator=g, dtype=F64)
    return GaussianMixtureDenoiser(torch.ones(4, dtype=F64), means, torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=F64))


def _noise(batch, seed, d=8):
    return SIGMA_MAX * torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_optimized_euler_grid_beats_karras_and_loglinear_on_fresh_noise(mixture):
    calibration, fresh = _noise(12, 1), _noise(32, 2)
    truth = reference(mixture, fresh, (SIGMA_MAX, SIGMA_MIN * 1e-3), rtol=1e-6, atol=1e-6)

    def error(grid):
        return (euler(mixture, fresh, grid) - truth).norm(dim=1).mean().item()

    calib = calibrate(mixture, calibration, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, fine_steps=32, rtol=1e-6)
    for nfe in (6, 8, 10):
        grid = optimized_sigmas(mixture, calibration, nfe, solver="euler", calibration=calib)
        assert grid.dtype == F64 and grid.numel() == nfe + 1 and grid[0] == SIGMA_MAX and grid[-1] == 0
        assert (grid[1:] < grid[:-1]).all()
        ours = error(grid)
        karras = error(schedules.karras(nfe, SIGMA_MIN, SIGMA_MAX, rho=7.0))
        loglinear = error(schedules.loglinear(nfe, SIGMA_MIN, SIGMA_MAX))
        assert ours < 0.9 * min(karras, loglinear), (nfe, ours, karras, loglinear)


def test_dp_is_exact_on_small_random_costs():
    """Brute force over all subsets of a 7-node graph, for one-step and previous-node-dependent costs."""
    import itertools

    g = torch.Generator().manual_seed(0)
    n1 = 7
    cost = torch.rand(n1, n1, generator=g, dtype=F64).triu(1)
    cost[cost == 0] = math.inf
    cost2 = torch.rand(n1, n1, n1, generator=g, dtype=F64)
    for steps in (1, 2, 3, 5):
        paths = [[0, *inner, n1 - 1] for inner in itertools.combinations(range(1, n1 - 1), steps - 1)]
        best = min(paths, key=lambda p: sum(cost[a, b] for a, b in zip(p, p[1:])))
        assert _shortest_path(cost, steps) == best

        def total2(p):
            return cost2[0, 0, p[1]] + sum(cost2[k, i, j] for k, i, j in zip(p, p[1:], p[2:]))

        best2 = min(paths, key=total2)
        assert _shortest_path_2m(cost2, steps) == best2


def test_local_errors_match_direct_solver_steps(mixture):
    """The vectorised costs equal one real step of our solvers from the reference states."""
    candidates = schedules.loglinear(8, 0.05, SIGMA_MAX)
    x = _noise(3, 5)
    traj = reference_trajectory(mixture, x, candidates, rtol=1e-6, atol=1e-6)
    c = candidates.tolist()
    cost = local_errors(mixture, traj, candidates, "euler").mean(-1)
    cost2 = local_errors(mixture, traj, candidates, "dpmpp_2m").mean(-1)
    i, j, k = 3, 6, 1
    d_i = mixture(traj[i], torch.full((3,), c[i], dtype=F64))
    step = traj[i] + (c[j] - c[i]) * (traj[i] - d_i) / c[i]
    assert math.isclose(cost[i, j].item(), (step - traj[j]).norm(dim=1).mean().item(), rel_tol=1e-10)
    # 2M step from node i to j with history at node k: run our dpmpp_2m on [c_k, c_i, c_j, 0] with the
    # first step replaced by the reference: a hook sets the state at c_i to the reference state.
    states = []

    def to_reference(y, sigma, step, denoised):
        if step == 0:
            return traj[i].clone()
        states.append(y.clone())
        return y

    dpmpp_2m(mixture, traj[k], [c[k], c[i], c[j], 0.0], hooks=[to_reference])
    expected = (states[0] - traj[j]).norm(dim=1).mean().item()
    assert math.isclose(cost2[k, i, j].item(), expected, rel_tol=1e-8)


def test_amplification_is_exact_for_a_gaussian():
    g = torch.Generator().manual_seed(0)
    lam = 0.7
    den = GaussianDenoiser(torch.zeros(6, dtype=F64), lam * torch.eye(6, dtype=F64))
    candidates = schedules.loglinear(60, 0.5, 20.0)  # sigma_min large enough that the tail below it matters
    traj = reference_trajectory(den, 20.0 * torch.randn(2, 6, generator=g, dtype=F64), candidates, rtol=1e-6, atol=1e-6)
    a = amplification(den, traj, candidates)
    exact = torch.sqrt(lam / (lam + candidates**2))
    assert torch.allclose(a, exact[:, None].expand_as(a), rtol=2e-3)


def test_other_solvers_and_errors(mixture):
    x = _noise(4, 3)
    grid = optimized_sigmas(mixture, x, 5, solver="heun", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, fine_steps=12, rtol=1e-4)
    assert grid.numel() == 4 and grid[-1] == 0  # Heun: 3 steps = 5 evaluations
    grid = optimized_sigmas(mixture, x, 4, solver="dpmpp_3m", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, fine_steps=12,
                            rtol=1e-4, propagate=False)
    assert grid.numel() == 5 and set(grid[1:].tolist()) <= set(schedules.loglinear(12, SIGMA_MIN, SIGMA_MAX)[1:].tolist())
    with pytest.raises(KeyError, match="no step error model"):
        optimized_sigmas(mixture, x, 4, solver="nope", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)
    with pytest.raises(ValueError, match="positive candidates"):
        optimized_sigmas(mixture, x, 30, solver="euler", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, fine_steps=16)
