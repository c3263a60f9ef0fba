import pytest
import torch

import samplers
from samplers.analytic import GaussianDenoiser
from samplers.covariance import CovarianceGuidance


def _setup(d=6, m=3, noise=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    return GaussianDenoiser(mean, cov), mean, cov, A, noise


def _exact_posterior_denoiser(mean, cov, A, noise, x, sigma, y):
    """E[x0 | x, y] for x0 ~ N(mean, cov), x = x0 + sigma e, y = A x0 + noise n (closed form)."""
    d = mean.numel()
    H = torch.cat([torch.eye(d, dtype=torch.float64), A])
    R = torch.block_diag(sigma**2 * torch.eye(d, dtype=torch.float64), noise**2 * torch.eye(A.shape[0], dtype=torch.float64))
    gain = cov @ H.T @ torch.linalg.inv(H @ cov @ H.T + R)
    obs = torch.cat([x, y.expand(x.shape[0], -1)], 1)
    return mean + (obs - H @ mean) @ gain.T


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_covariance_guidance_is_the_exact_posterior_denoiser_for_gaussian_data(sigma):
    den, mean, cov, A, noise = _setup()
    x = torch.randn(4, 6, dtype=torch.float64) * (1 + sigma)
    y = torch.randn(1, 3, dtype=torch.float64)
    guided = CovarianceGuidance(den, lambda x0: x0 @ A.T, y, noise**2, cg_iters=3, cg_tol=0)
    got = guided(x, torch.full((4,), sigma, dtype=torch.float64))
    want = _exact_posterior_denoiser(mean, cov, A, noise, x, sigma, y)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    assert guided.vjp_count == 3 + 1  # m CG iterations + the final correction


def test_too_few_cg_iterations_are_not_exact():
    den, mean, cov, A, noise = _setup(m=5)
    x = torch.randn(2, 6, dtype=torch.float64)
    y = torch.randn(1, 5, dtype=torch.float64)
    got = CovarianceGuidance(den, lambda x0: x0 @ A.T, y, noise**2, cg_iters=1)(x, torch.full((2,), 1.0, dtype=torch.float64))
    want = _exact_posterior_denoiser(mean, cov, A, noise, x, 1.0, y)
    assert (got - want).abs().max() > 1e-4


def test_zero_noise_is_refused():
    den, mean, cov, A, _ = _setup()
    with pytest.raises(ValueError, match="noise variance"):
        CovarianceGuidance(den, lambda x0: x0 @ A.T, torch.zeros(3), 0.0)


def test_sampling_with_covariance_guidance_matches_the_closed_form_posterior():
    den, mean, cov, A, noise = _setup(d=4, m=2, noise=0.3, seed=1)
    y = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    post_cov = torch.linalg.inv(torch.linalg.inv(cov) + A.T @ A / noise**2)
    post_mean = post_cov @ (torch.linalg.solve(cov, mean) + A.T @ y[0] / noise**2)
    guided = CovarianceGuidance(den, lambda x0: x0 @ A.T, y, noise**2, cg_iters=2, cg_tol=0)
    g = torch.Generator().manual_seed(0)
    n = 4000
    sig = samplers.schedules.karras(40, 0.002, 80.0)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * sig[0]
    out = samplers.sample(guided, x, sig, solver="heun")
    emp_mean, emp_cov = out.mean(0), torch.cov(out.T)
    se = (post_cov.diagonal() / n).sqrt()
    assert ((emp_mean - post_mean).abs() < 5 * se).all()
    torch.testing.assert_close(emp_cov, post_cov, atol=0.1 * post_cov.diagonal().max(), rtol=0.1)


def test_cg_stops_rows_where_the_system_is_not_positive_definite():
    from samplers.covariance import _batched_cg

    m = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    bad = -m
    b = torch.ones(2, 2, dtype=torch.float64)
    # row 0 sees an SPD matrix, row 1 a negative definite one
    matvec = lambda u: torch.stack([u[0] @ m, u[1] @ bad])
    u, broke = _batched_cg(matvec, b, iters=5, tol=0.0)
    torch.testing.assert_close(u[0], torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert torch.equal(u[1], torch.zeros(2, dtype=torch.float64))
    assert broke.tolist() == [False, True]


def test_cg_stops_where_the_covariance_part_has_negative_curvature():
    """M = N + C with C slightly negative definite is still SPD, but CG on it would divide by a
    curvature far below the noise part and take a huge step; the lower bound stops it."""
    from samplers.covariance import _batched_cg

    noise = torch.full((2,), 1.0, dtype=torch.float64)
    c = torch.tensor([[-0.999, 0.0], [0.0, -0.5]], dtype=torch.float64)
    b = torch.ones(1, 2, dtype=torch.float64)
    matvec = lambda u: noise * u + u @ c
    u_plain, _ = _batched_cg(matvec, b, iters=2, tol=0.0)
    u, broke = _batched_cg(matvec, b, iters=2, tol=0.0, diagonal=noise)
    assert u_plain.abs().max() > 100  # what the guard prevents
    assert torch.equal(u, torch.zeros_like(u)) and broke.tolist() == [True]


@pytest.mark.parametrize("fallback", ["isotropic", "network"])
def test_fallback_where_the_jacobian_has_negative_curvature(fallback):
    """A "network" D(x) = -x has a negative definite Jacobian: every sample falls back to solving
    with the Gaussian-prior covariance V = sigma^2 v / (sigma^2 + v) I; the correction applies that
    solution with V ("isotropic") or with the network's sigma^2 (dD/dx)^T = -sigma^2 I ("network")."""
    sigma, v, noise = 3.0, 2.0, 0.5
    A = torch.eye(5, dtype=torch.float64)[:2]
    y = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    guided = CovarianceGuidance(lambda x, s: -x, lambda x0: x0 @ A.T, y, noise**2, cg_iters=3, prior_var=v,
                                fallback=fallback)
    got = guided(x, torch.full((3,), sigma, dtype=torch.float64))
    iso = sigma**2 * v / (sigma**2 + v)
    u = (y - (-x) @ A.T) / (iso + noise**2)
    want = -x + (iso if fallback == "isotropic" else -sigma**2) * u @ A
    torch.testing.assert_close(got, want)
    assert guided.fallbacks == 3
    with pytest.raises(ValueError, match="fallback"):
        CovarianceGuidance(lambda x, s: -x, lambda x0: x0 @ A.T, y, noise**2, fallback="prior")


def test_max_rms_bounds_the_correction_and_leaves_small_ones_alone():
    den, mean, cov, A, noise = _setup()
    x = torch.randn(4, 6, dtype=torch.float64)
    sig = torch.full((4,), 1.0, dtype=torch.float64)
    y_far = torch.full((1, 3), 1e4, dtype=torch.float64)
    free = CovarianceGuidance(den, lambda x0: x0 @ A.T, y_far, noise**2, cg_iters=3, cg_tol=0)
    capped = CovarianceGuidance(den, lambda x0: x0 @ A.T, y_far, noise**2, cg_iters=3, cg_tol=0, max_rms=2.0, prior_var=4.0)
    base = den(x, sig)
    rms = (capped(x, sig) - base).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full((4,), 4.0, dtype=torch.float64))  # 2 * sqrt(4)
    assert capped.clipped == 4 and ((free(x, sig) - base).pow(2).mean(1).sqrt() > 100).all()
    y = torch.randn(1, 3, dtype=torch.float64)
    loose = CovarianceGuidance(den, lambda x0: x0 @ A.T, y, noise**2, cg_iters=3, cg_tol=0, max_rms=1e3)
    torch.testing.assert_close(loose(x, sig), _exact_posterior_denoiser(mean, cov, A, noise, x, 1.0, y))
    assert loose.clipped == 0


def test_guidance_stays_finite_with_a_non_symmetric_denoiser():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=g, dtype=torch.float64) * 50  # a wildly non-symmetric "network"
    den = lambda x, s: x @ w
    A = torch.eye(6, dtype=torch.float64)[:3]
    guided = CovarianceGuidance(den, lambda x0: x0 @ A.T, torch.zeros(1, 3, dtype=torch.float64), 1e-4)
    out = guided(torch.randn(4, 6, generator=g, dtype=torch.float64), torch.full((4,), 80.0, dtype=torch.float64))
    assert torch.isfinite(out).all()
