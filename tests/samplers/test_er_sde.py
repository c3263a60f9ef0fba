"""ER-SDE solvers: step coefficients against closed forms and quadrature, Gaussian and mixture moments, the
order of the deterministic member against exact and reference flows, special members, hooks, seeds, NFE."""

import math

import pytest
import torch

import samplers
from samplers import schedules
from samplers._core import SOLVERS
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.er_sde import NOISE_SCALES, step_coefficients
from samplers.reference import reference

F64 = torch.float64


def gaussian(d: int = 5, seed: int = 0, low: float = 0.1, high: float = 3.0) -> GaussianDenoiser:
    """N(mu, C) with a random rotation and eigenvalues from ``low`` to ``high``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(math.log10(low), math.log10(high), d, dtype=F64)
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), q @ torch.diag(lam) @ q.T)


def mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(1)
    return GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), 2.0 * torch.randn(2, 2, 3, generator=g, dtype=F64),
                                   torch.tensor([0.4, 0.9], dtype=F64))


def draw(den, steps: int, n: int = 4000, seed: int = 1, **options) -> torch.Tensor:
    """Samples of ``er_sde`` from exact draws of p_sigma_max (Karras grid 80 -> 0.002), flattened to [n, d]."""
    sigmas = schedules.karras(steps, 0.002, 80.0)
    g = torch.Generator().manual_seed(seed)
    x = den.sample(n, g)
    x = x + sigmas[0] * torch.randn(x.shape, generator=g, dtype=F64)
    return SOLVERS["er_sde"](den, x, sigmas, generator=g, **options).reshape(n, -1)


def gaussian_zscores(samples: torch.Tensor, den: GaussianDenoiser) -> torch.Tensor:
    """Errors of the sample mean and covariance entries in units of their standard errors under the true law."""
    n, c = samples.shape[0], den.cov
    var = c.diag()
    z_mean = (samples.mean(0) - den.mean) / (var / n).sqrt()
    z_cov = (torch.cov(samples.T) - c) / ((torch.outer(var, var) + c**2) / n).sqrt()
    iu = torch.triu_indices(c.shape[0], c.shape[0])
    return torch.cat([z_mean, z_cov[iu[0], iu[1]]])


def mixture_zscores(samples: torch.Tensor, den: GaussianMixtureDenoiser) -> torch.Tensor:
    """Errors of the per-dimension sample mean and variance in standard errors (exact mixture moments)."""
    n, w = samples.shape[0], den.log_weights.exp()[:, None]
    mean = (w * den.means).sum(0)
    delta = den.means - mean
    var = (w * (den.vars + delta**2)).sum(0)
    m4 = (w * (delta**4 + 6 * delta**2 * den.vars + 3 * den.vars**2)).sum(0)   # central fourth moment
    z_mean = (samples.mean(0) - mean) / (var / n).sqrt()
    z_var = (samples.var(0) - var) / ((m4 - var**2) / n).sqrt()
    return torch.cat([z_mean, z_var])


# ---------------------------------------------------------------------------------------------
# step coefficients


def closed_form(p: float, sigma: float, sigma_next: float) -> tuple[float, float]:
    """c_1, c_2 for phi = sigma^p in closed form."""
    a, b = sigma, sigma_next
    if p == 1:
        i1, i2 = b * math.log(a / b), b * ((a - b) - a * math.log(a / b))
    else:
        i1 = b**p * (a ** (1 - p) - b ** (1 - p)) / (1 - p)
        i2 = b**p * ((a ** (2 - p) - b ** (2 - p)) / (2 - p) - a * (a ** (1 - p) - b ** (1 - p)) / (1 - p))
    return (b - a) + i1, 0.5 * (b - a) ** 2 + i2


@pytest.mark.parametrize("p", [1.0, 1.5, 2.5])
@pytest.mark.parametrize("sigma, sigma_next", [(80.0, 40.0), (0.3, 0.002), (80.0, 0.002), (2.0, 1.5)])
def test_coefficients_match_closed_forms_for_power_laws(p, sigma, sigma_next):
    c = step_coefficients(lambda s: s**p, sigma, sigma_next)
    first, second = closed_form(p, sigma, sigma_next)
    assert c.ratio == pytest.approx((sigma_next / sigma) ** p, rel=1e-14)
    assert c.first == pytest.approx(first, rel=1e-12)
    assert c.second == pytest.approx(second, rel=1e-12)
    assert c.noise == pytest.approx(math.sqrt(max(sigma_next**2 - (c.ratio * sigma) ** 2, 0.0)), rel=1e-12, abs=0)


@pytest.mark.parametrize("name", ["er_sde_1", "er_sde_4", "er_sde_5"])
def test_coefficients_match_adaptive_quadrature(name):
    quad = pytest.importorskip("scipy.integrate").quad
    phi = NOISE_SCALES[name]
    f = lambda s: float(phi(torch.tensor(s, dtype=F64)))  # noqa: E731
    for sigma, sigma_next in [(80.0, 30.0), (1.0, 0.002), (80.0, 0.002)]:
        c = step_coefficients(phi, sigma, sigma_next)
        kw = {"epsabs": 0, "epsrel": 1e-13, "limit": 200, "points": [sigma_next * 10, sigma_next * 100]}
        i1 = quad(lambda s: f(sigma_next) / f(s), sigma_next, sigma, **kw)[0]
        i2 = quad(lambda s: (s - sigma) * f(sigma_next) / f(s), sigma_next, sigma, **kw)[0]
        assert c.first == pytest.approx((sigma_next - sigma) + i1, rel=1e-11)
        assert c.second == pytest.approx(0.5 * (sigma_next - sigma) ** 2 + i2, rel=1e-11)


# ---------------------------------------------------------------------------------------------
# moments within sampling error (4000 samples; the bias at these steps is well below that)


@pytest.mark.parametrize("order, steps, noise_scale", [
    (1, 400, "er_sde_5"), (2, 100, "er_sde_5"), (3, 50, "er_sde_5"), (3, 50, "sde"), (3, 50, "ode"),
    (3, 50, "er_sde_1"), (3, 50, "er_sde_2"), (3, 50, "er_sde_3"), (3, 50, "er_sde_4"), (2, 100, "sde"),
])
def test_gaussian_moments(order, steps, noise_scale):
    den = gaussian()
    z = gaussian_zscores(draw(den, steps, order=order, noise_scale=noise_scale), den)
    assert z.abs().max() < 5.0, f"order {order}, {noise_scale}: worst moment error {z.abs().max():.2f} standard errors"


def test_gaussian_moments_with_a_callable_noise_scale():
    den = gaussian()
    z = gaussian_zscores(draw(den, 50, noise_scale=lambda s: s**1.75), den)
    assert z.abs().max() < 5.0


@pytest.mark.parametrize("order, steps", [(2, 100), (3, 50)])
def test_mixture_moments(order, steps):
    den = mixture()
    z = mixture_zscores(draw(den, steps, order=order), den)
    assert z.abs().max() < 5.0, f"order {order}: worst moment error {z.abs().max():.2f} standard errors"


def test_moment_check_detects_misscaled_noise():
    # the same check fails for noise 10% too strong, so the tolerance above is not vacuous
    den = gaussian()
    z = gaussian_zscores(draw(den, 50, s_noise=1.1), den)
    assert z.abs().max() > 7.0


# ---------------------------------------------------------------------------------------------
# the deterministic member converges at its order


def slope(steps, errors) -> float:
    logn, loge = torch.tensor(steps, dtype=F64).log(), torch.tensor(errors, dtype=F64).log()
    return -(((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()).item()


def loglinear(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    grid = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps, dtype=F64)
    return torch.cat([grid, grid.new_zeros(1)])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ode_member_order_on_the_exact_gaussian_flow(order):
    # sigma_max -> sigma_min against the closed-form flow (the last jump to 0 excluded); log-linear grid:
    # the first-order warm-up step caps order 3 at 2 asymptotically, far below these errors
    den = gaussian(d=8, low=0.01, high=10.0)
    x = 80.0 * torch.randn(4, den.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = den.ode_solution(x, 80.0, 0.002)
    steps, errors = (32, 64, 128), []
    for n in steps:
        seen = {}
        samplers.sample(den, x, loglinear(n, 0.002, 80.0), solver="er_sde", order=order, noise_scale="ode",
                        callback=lambda info: seen.update(x=info["x"]) if info["step"] == n - 2 else None)
        errors.append(((seen["x"] - exact).norm() / exact.norm()).item())
    assert abs(slope(steps, errors) - order) < 0.3, f"order {order}: errors {errors}"


@pytest.fixture(scope="module")
def mixture_flow():
    g = torch.Generator().manual_seed(0)
    den = GaussianMixtureDenoiser(torch.tensor([0.2, 0.3, 0.5], dtype=F64), 1.5 * torch.randn(3, 8, generator=g,
                                  dtype=F64), torch.tensor([0.4, 0.7, 1.0], dtype=F64))
    x = 20.0 * torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    return den, x, reference(den, x, (20.0, 0.02), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ode_member_order_against_the_reference_on_a_mixture(mixture_flow, order):
    den, x, truth = mixture_flow
    steps, errors = (32, 64, 128), []
    for n in steps:
        out = samplers.sample(den, x, schedules.karras(n, 0.02, 20.0), solver="er_sde", order=order,
                              noise_scale="ode")
        errors.append(((out - truth).norm() / truth.norm()).item())
    assert abs(slope(steps, errors) - order) < 0.3, f"order {order}: errors {errors}"


# ---------------------------------------------------------------------------------------------
# special members


def test_first_order_ode_member_is_euler_and_draws_no_noise():
    den = mixture()
    sigmas = schedules.karras(12, 0.01, 20.0)
    x = 20.0 * torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    out = SOLVERS["er_sde"](den, x, sigmas, order=1, noise_scale="ode", generator=g)
    torch.testing.assert_close(out, SOLVERS["euler"](den, x, sigmas), rtol=1e-12, atol=1e-12)
    assert torch.equal(g.get_state(), state)
    for order in (2, 3):  # the higher orders are deterministic too
        a = SOLVERS["er_sde"](den, x, sigmas, order=order, noise_scale="ode")
        assert torch.equal(a, SOLVERS["er_sde"](den, x, sigmas, order=order, noise_scale="ode"))


@pytest.mark.parametrize("noise_scale", ["sde", "ve_sde", "vp_sde"])
def test_first_order_sde_member_is_ancestral_sampling(noise_scale):
    # phi = sigma^2 (eta = 1): r = sigma_next^2 / sigma^2 and the noise of the exact VE posterior
    den = mixture()
    sigmas = schedules.karras(12, 0.01, 20.0)
    x = 20.0 * torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ours = SOLVERS["er_sde"](den, x, sigmas, order=1, noise_scale=noise_scale,
                             generator=torch.Generator().manual_seed(3))
    ref = SOLVERS["euler_ancestral"](den, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# contracts: hooks, seeds, NFE, shapes, errors


@pytest.mark.parametrize("order, noise_scale", [(3, "er_sde_5"), (3, "ode"), (2, "sde"), (1, "er_sde_2")])
def test_hooked_state_is_where_the_next_step_starts(order, noise_scale):
    den = mixture()
    sigmas = schedules.karras(7, 0.01, 20.0)
    x = 20.0 * torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    events, seen = [], []

    def recording(x, sigma):
        events.append(("denoise", x.clone()))
        return den(x, sigma)

    def hook(x, sigma, step, denoised):
        x = x + 0.37 * (step + 1)      # a state no solver would produce by itself
        events.append(("hook", x.clone()))
        return x

    out = SOLVERS["er_sde"](recording, x, sigmas, hooks=[hook], order=order, noise_scale=noise_scale,
                            generator=torch.Generator().manual_seed(1), callback=lambda info: seen.append(info["x"]))
    hooked = [i for i, (kind, _) in enumerate(events) if kind == "hook"]
    assert len(hooked) == len(sigmas) - 1
    for i in hooked[:-1]:
        assert events[i + 1][0] == "denoise" and torch.equal(events[i + 1][1], events[i][1])
    assert torch.equal(out, events[hooked[-1]][1])
    assert all(torch.equal(a, events[i][1]) for a, i in zip(seen, hooked))


@pytest.mark.parametrize("shape", [(4, 6), (4, 2, 3), (2, 1, 2, 3, 2)])
def test_seeded_runs_are_reproducible_on_any_rank_and_dtype(shape):
    den = GaussianMixtureDenoiser(torch.tensor([0.5, 0.5]), torch.randn(2, *shape[1:], dtype=F64),
                                  torch.tensor([0.3, 0.6], dtype=F64))
    sigmas = schedules.karras(8, 0.01, 20.0)
    x = 20.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    run = lambda seed: SOLVERS["er_sde"](den, x, sigmas, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert a.dtype == x.dtype and a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_nfe_is_reported(order):
    stats = {}
    draw(gaussian(), 7, n=3, order=order, stats=stats)
    assert stats == {"nfe": 7, "steps": 7}
    assert SOLVERS["er_sde"].nfe_per_step == 1 and "er_sde" in samplers.SOLVERS


@pytest.mark.parametrize("options, message", [
    ({"order": 4}, "order must be 1, 2 or 3"),
    ({"noise_scale": "langevin"}, "noise_scale must be a callable"),
    ({"noise_scale": lambda s: s**0.5}, "not admissible"),
    ({"noise_scale": lambda s: -s}, "positive finite"),
    ({"noise_scale": lambda s: s[:1]}, "elementwise"),
    ({"s_noise": -1.0}, "s_noise must be a finite number >= 0"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        SOLVERS["er_sde"](lambda x, s: 0 * x, torch.randn(2, 3), schedules.karras(4, 0.1, 10.0), **options)
