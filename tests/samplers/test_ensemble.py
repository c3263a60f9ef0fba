"""The approximation-free ensemble sampler against closed-form posteriors: linear-Gaussian, a Gaussian
mixture, and a nonlinear observation integrated on a grid."""

import math

import pytest
import torch

import samplers.ensemble as ensemble_module
from samplers._core import SOLVERS
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.ensemble import ensemble
from samplers.schedules import karras

F64 = torch.float64
NORMAL = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))


class LinearGaussian:
    """Prior N(mu, C) in d = 6; ``B`` instances of y = A x0 + s * noise with A selecting 3 coordinates."""

    def __init__(self, noise_std: float, instances: int = 32, d: int = 6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        self.cov = q @ torch.diag(torch.logspace(-0.5, 0.5, d, dtype=F64)) @ q.T
        self.den = GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), self.cov)
        self.a = torch.eye(d, dtype=F64)[[0, 2, 4]]
        self.s, self.d = noise_std, d
        x0 = self.den.sample(instances, g)
        self.y = x0 @ self.a.T + noise_std * torch.randn(instances, 3, generator=g, dtype=F64)
        self.post_cov = torch.linalg.inv(torch.linalg.inv(self.cov) + self.a.T @ self.a / noise_std**2)
        self.post_mean = (torch.linalg.solve(self.cov, self.den.mean) + self.y @ self.a / noise_std**2) @ self.post_cov
        y_cov = self.a @ self.cov @ self.a.T + noise_std**2 * torch.eye(3, dtype=F64)
        marginal = torch.distributions.MultivariateNormal(self.a @ self.den.mean, y_cov)
        self.log_evidence = marginal.log_prob(self.y) + 1.5 * math.log(2 * math.pi * noise_std**2)

    def log_likelihood(self, gamma: float = 1.0):
        """The likelihood of the noisy state with variance s^2 + (gamma sigma)^2 (gamma 0: the paper's path)."""
        def ll(x, sigma):                                   # [B, K, d] -> [B, K]
            return -((self.y[:, None] - x @ self.a.T) ** 2).sum(-1) / (2 * (self.s**2 + (gamma * sigma) ** 2))
        return ll

    def run(self, particles, steps, seed, gamma=1.0, sigma_max=20.0, **options):
        sigmas = karras(steps, 0.01, sigma_max)
        g = torch.Generator().manual_seed(seed)
        b = self.y.shape[0]
        x = self.den.sample(b * particles, g) + sigmas[0] * torch.randn(b * particles, self.d, generator=g, dtype=F64)
        return ensemble(self.den, self.log_likelihood(gamma), x.reshape(b, particles, self.d), sigmas, generator=g,
                        **options)

    def scores(self, result, particles=None):
        """RMS mean error (posterior sds), mean variance ratio, and the exact posterior mass of the
        samplers' central 90 % intervals (after resampling), averaged over instances and coordinates."""
        sd = self.post_cov.diag().sqrt()
        mean_err = ((result.mean() - self.post_mean) / sd).pow(2).mean().sqrt().item()
        var_ratio = (result.var() / sd**2).mean().item()
        p = result.resample(torch.Generator().manual_seed(0)) if particles is None else particles
        lo, hi = p.quantile(0.05, dim=1), p.quantile(0.95, dim=1)
        mass = (NORMAL.cdf((hi - self.post_mean) / sd) - NORMAL.cdf((lo - self.post_mean) / sd)).mean().item()
        return mean_err, var_ratio, mass


def posterior_ok(scores, mean_tol=0.15, var_tol=0.1, coverage=(0.86, 0.93)):
    """The tolerances of the tests below, for K = 1024 particles and 16 instances (Monte Carlo error of the
    mean ~0.05 sd, of the 90 % mass ~0.01); they fail when the weights are wrong (tests below)."""
    mean_err, var_ratio, mass = scores
    return mean_err < mean_tol and abs(var_ratio - 1) < var_tol and coverage[0] <= mass <= coverage[1]


@pytest.fixture(scope="module")
def problem():
    return LinearGaussian(noise_std=0.3, instances=16)


@pytest.mark.parametrize("options", [
    {},                                                 # the paper's guided SDE with Feynman-Kac weights
    {"corrector_steps": 1},                             # + a Langevin corrector per step
    {"variant": "ode"},                                 # probability-flow ODE + corrector (the paper's second variant)
    {"weights": "pathwise"},                            # the discrete chain's exact importance weights
])
def test_the_ensemble_samples_the_exact_gaussian_posterior(problem, options):
    # measured (mean error, variance ratio, 90 % mass) at 40 steps: sde (0.08, 0.94, 0.88), sde + corrector
    # (0.09, 1.01, 0.90), ode (0.10, 1.05, 0.90), pathwise (0.12, 0.99, 0.89); the variance deficit of the
    # sde is the particles' (0.91, 0.95, 0.96 for K = 64, 256, 1024 at 100 steps)
    scores = problem.scores(problem.run(1024, 40, seed=1, **options))
    assert posterior_ok(scores), scores


def _rate_without(term):
    def rate(variant, score, grad, laplacian):
        dot = ensemble_module._dot
        kept = {"score.grad": 0.5 * dot(grad, grad), "|grad|^2": dot(score, grad)}[term]
        return kept.to(F64) + 0.5 * laplacian.reshape(-1)
    return rate


@pytest.mark.parametrize("term", ["score.grad", "|grad|^2"])
def test_a_broken_weight_rate_is_detected(problem, monkeypatch, term):
    # the Feynman-Kac rate of the SDE without one of its terms: measured (0.23, 0.98, 0.88) without
    # score . grad log l, (0.08, 0.82, 0.85) without |grad log l|^2 / 2
    monkeypatch.setattr(ensemble_module, "feynman_kac_rate", _rate_without(term))
    scores = problem.scores(problem.run(1024, 40, seed=1))
    assert not posterior_ok(scores), scores


def test_without_the_weights_the_guided_particles_are_wrong(problem):
    # the guided SDE alone (no resampling, every particle counted once): measured (0.29, 1.03, 0.89)
    result = problem.run(1024, 40, seed=1, ess_threshold=0.0)
    result.log_weights = torch.zeros_like(result.log_weights)
    scores = problem.scores(result, particles=result.particles)
    assert not posterior_ok(scores), scores


def test_the_papers_untempered_path_is_exact_too():
    # l_sigma = l at every level (gamma 0) from a small sigma_max, where the guided steps are not stiff;
    # measured (0.11, 1.02, 0.90) with a corrector; without one the start's degenerate weights (ESS 109 of
    # 1024) leave a variance deficit (0.85 at 60 steps, 0.87 at 240)
    problem = LinearGaussian(noise_std=1.0, instances=16)
    scores = problem.scores(problem.run(1024, 60, seed=1, gamma=0.0, sigma_max=2.0, corrector_steps=1))
    assert posterior_ok(scores), scores


def test_the_weights_estimate_the_evidence():
    problem = LinearGaussian(noise_std=0.7, instances=16)
    result = problem.run(256, 100, seed=3, variant="ode")
    # measured 0.06 (the sde's Euler weights: 0.6)
    assert (result.log_normalizer - problem.log_evidence).abs().mean() < 0.15


@pytest.mark.parametrize("options, solver", [
    ({}, "dpmpp_2m_sde"), ({"order": 1}, "euler_ancestral"),
    ({"variant": "ode", "corrector_steps": 0}, "dpmpp_2m"),
    ({"variant": "ode", "corrector_steps": 0, "order": 1}, "euler"),
])
def test_with_the_likelihood_off_the_particles_are_the_prior_solvers(problem, options, solver):
    sigmas = karras(16, 0.01, 20.0)
    x = 20.0 * torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    stats = {}
    result = ensemble(problem.den, lambda x, sigma: torch.zeros(x.shape[:2], dtype=F64), x, sigmas,
                      generator=torch.Generator().manual_seed(1), stats=stats, **options)
    prior = SOLVERS[solver](problem.den, x.reshape(15, 6), sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.particles, prior.reshape(3, 5, 6), rtol=1e-10, atol=1e-10)
    assert (result.log_weights == 0).all() and not result.resampled.any()
    assert result.nfe == stats["nfe"] == 16


def test_a_gaussian_mixture_prior_gives_the_closed_form_mixture_posterior():
    # prior 0.6 N((-1.5, -1.5), diag(0.5, 0.8)^2) + 0.4 N((1.5, 1.5), diag(0.7, 0.6)^2); y = x_0 + 0.5 noise
    means = torch.tensor([[-1.5, -1.5], [1.5, 1.5]], dtype=F64)
    stds = torch.tensor([[0.5, 0.8], [0.7, 0.6]], dtype=F64)
    weights = torch.tensor([0.6, 0.4], dtype=F64)
    den = GaussianMixtureDenoiser(weights, means, stds)
    s, y = 0.5, torch.tensor([0.3, -0.8, 1.2], dtype=F64)
    b, k = y.shape[0], 1024
    # exact: component weights w_k N(y; m_k0, v_k0 + s^2); component posteriors Gaussian per coordinate
    v0 = stds[:, 0] ** 2
    log_pi = weights.log() + torch.distributions.Normal(means[:, 0], (v0 + s**2).sqrt()).log_prob(y[:, None])
    pi = torch.softmax(log_pi, 1)                                                       # [B, 2]
    post_v0 = 1 / (1 / v0 + 1 / s**2)
    post_m0 = post_v0 * (means[:, 0] / v0 + y[:, None] / s**2)
    comp_mean = torch.stack([post_m0, means[:, 1].expand(b, 2)], -1)                  # [B, 2, d]
    comp_var = torch.stack([post_v0.expand(b, 2), (stds[:, 1] ** 2).expand(b, 2)], -1)
    mean = (pi[..., None] * comp_mean).sum(1)
    var = (pi[..., None] * (comp_var + comp_mean**2)).sum(1) - mean**2

    def ll(x, sigma):
        return -((y[:, None] - x[..., 0]) ** 2) / (2 * (s**2 + sigma**2))

    g = torch.Generator().manual_seed(4)
    sigmas = karras(60, 0.01, 20.0)
    x = den.sample(b * k, g) + sigmas[0] * torch.randn(b * k, 2, generator=g, dtype=F64)
    result = ensemble(den, ll, x.reshape(b, k, 2), sigmas, variant="ode", generator=g)
    # measured: mean error <= 0.05, variance ratio 0.93-1.04, mode mass within 0.02
    assert ((result.mean() - mean) / var.sqrt()).abs().max() < 0.15
    assert ((result.var() / var) - 1).abs().max() < 0.15
    upper = (result.weights * (result.particles[..., 1] > 0)).sum(1)                 # mass of the second mode
    assert (upper - pi[:, 1]).abs().max() < 0.06, (upper, pi[:, 1])


def test_a_nonlinear_observation_gives_the_posterior_by_quadrature():
    # prior N(0, I_2), y = x_1 + x_2^2 / 2 + 0.5 noise: the log-likelihood's Laplacian varies with x_2, so
    # the SDE's Feynman-Kac weights need it (Hutchinson probes); pathwise weights and the ODE do not
    s, y = 0.5, 1.0
    grid = torch.linspace(-6, 6, 801, dtype=F64)
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    log_post = -(x1**2 + x2**2) / 2 - (y - x1 - x2**2 / 2) ** 2 / (2 * s**2)
    w = torch.softmax(log_post.flatten(), 0).reshape(log_post.shape)
    truth = torch.stack([(w * x1).sum(), (w * x2**2).sum()])                          # E[x_1], E[x_2^2]
    den = GaussianDenoiser(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))

    def ll(x, sigma):   # the state's noise propagated through the observation: |grad f|^2 = 1 + x_2^2
        return -((y - x[..., 0] - x[..., 1] ** 2 / 2) ** 2) / (2 * (s**2 + sigma**2 * (1 + x[..., 1] ** 2)))

    def error(**options):
        g = torch.Generator().manual_seed(5)
        sigmas = karras(100, 0.01, 10.0)
        x = torch.randn(2048, 2, generator=g, dtype=F64) + sigmas[0] * torch.randn(2048, 2, generator=g, dtype=F64)
        r = ensemble(den, ll, x.reshape(4, 512, 2), sigmas, generator=g, **options)
        m = torch.stack([r.mean()[:, 0], (r.weights * r.particles[..., 1] ** 2).sum(1)], -1).mean(0)  # 4 runs
        return (m - truth).abs().max().item()

    # measured: 0.03 pathwise, 0.03 ode, 0.03 sde + corrector with one probe, 0.51 without the Laplacian
    assert error(weights="pathwise") < 0.06
    assert error(variant="ode") < 0.06
    assert error(corrector_steps=1, laplacian_probes=1) < 0.08
    assert error(corrector_steps=1, laplacian_probes=0) > 0.15


def test_the_ensemble_is_reproducible_and_reports_its_diagnostics(problem):
    seen = []
    a = problem.run(8, 10, seed=3, callback=lambda info: seen.append(info["step"]))
    b = problem.run(8, 10, seed=3)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_weights, b.log_weights)
    assert seen == list(range(10))
    assert a.particles.shape == (16, 8, 6) and a.ess.shape == (11, 16) and a.resampled.shape == (10, 16)
    assert a.nfe == 10 and a.vjp_count == 10                      # no likelihood gradient at the last step
    stats = {}
    c = problem.run(8, 10, seed=3, variant="ode", corrector_steps=2, stats=stats)
    assert c.nfe == stats["nfe"] == 10 + 2 * 9 and stats["vjp_count"] == c.vjp_count == 28
    assert not problem.run(8, 10, seed=4).particles.equal(a.particles)


def test_bad_inputs_are_named(problem):
    x, sigmas, ll = torch.randn(2, 3, 6, dtype=F64), karras(3, 0.1, 5.0), problem.log_likelihood()
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        ensemble(problem.den, lambda x, sigma: x.sum((1, 2)), x, sigmas)
    for options, message in [({"variant": "euler"}, "variant"), ({"weights": "exact"}, "weights"),
                             ({"variant": "ode", "weights": "pathwise"}, "pathwise weights need"),
                             ({"order": 3}, "order"), ({"ess_threshold": 2}, "ess_threshold"),
                             ({"laplacian_probes": -1}, "laplacian_probes"),
                             ({"corrector_step": 0.0}, "corrector_step")]:
        with pytest.raises(ValueError, match=message):
            ensemble(problem.den, ll, x, sigmas, **options)
