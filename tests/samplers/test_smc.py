"""Twisted diffusion sampler against the closed-form linear-Gaussian posterior and evidence."""

import math

import pytest
import torch

from samplers._core import SOLVERS
from samplers.analytic import GaussianDenoiser
from samplers.schedules import karras
from samplers.smc import effective_sample_size, systematic_resample, tds

F64 = torch.float64


class LinearGaussian:
    """Prior N(mu, C) in d = 6, ``B`` instances of y = A x0 + s * noise with A selecting 3 coordinates."""

    def __init__(self, noise_std: float, instances: int = 32, d: int = 6, rows=(0, 2, 4), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        self.cov = q @ torch.diag(torch.logspace(-0.5, 0.5, d, dtype=F64)) @ q.T
        self.den = GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), self.cov)
        self.a = torch.eye(d, dtype=F64)[list(rows)]
        self.s, self.d, self.m = noise_std, d, len(rows)
        x0 = self.den.sample(instances, g)
        self.y = x0 @ self.a.T + noise_std * torch.randn(instances, self.m, generator=g, dtype=F64)
        self.post_cov = torch.linalg.inv(torch.linalg.inv(self.cov) + self.a.T @ self.a / noise_std**2)
        self.post_mean = (torch.linalg.solve(self.cov, self.den.mean) + self.y @ self.a / noise_std**2) @ self.post_cov
        # log E_prior[exp(log_likelihood(x0))] = log N(y; A mu, A C A^T + s^2 I) + (m / 2) log(2 pi s^2)
        y_cov = self.a @ self.cov @ self.a.T + noise_std**2 * torch.eye(self.m, dtype=F64)
        marginal = torch.distributions.MultivariateNormal(self.a @ self.den.mean, y_cov)
        self.log_evidence = marginal.log_prob(self.y) + 0.5 * self.m * math.log(2 * math.pi * noise_std**2)

    def log_likelihood(self, x0):            # [B, K, d] -> [B, K]
        return -((self.y[:, None] - x0 @ self.a.T) ** 2).sum(-1) / (2 * self.s**2)

    def exact_twist(self, x0, sigma):
        """log p(y | x_sigma) up to a sigma-only term.

        Given x_sigma, x0 ~ N(x0_hat, sigma^2 J) with J = C (C + sigma^2 I)^-1, so y ~ N(A x0_hat, s^2 I + sigma^2 A J A^T).
        """
        j = self.cov @ torch.linalg.inv(self.cov + sigma**2 * torch.eye(self.d, dtype=F64))
        precision = torch.linalg.inv(self.s**2 * torch.eye(self.m, dtype=F64) + sigma**2 * self.a @ j @ self.a.T)
        r = self.y[:, None] - x0 @ self.a.T
        return -0.5 * torch.einsum("bki,ij,bkj->bk", r, precision, r) + 0.5 * torch.logdet(precision * self.s**2)

    def run(self, particles, steps, seed, **options):
        sigmas = karras(steps, 0.01, 20.0)
        g = torch.Generator().manual_seed(seed)
        b = self.y.shape[0]
        x = self.den.sample(b * particles, g) + sigmas[0] * torch.randn(b * particles, self.d, generator=g, dtype=F64)
        return tds(self.den, self.log_likelihood, x.reshape(b, particles, self.d), sigmas, generator=g, **options)

    def errors(self, result):
        """RMS over instances and coordinates of the mean error (posterior sds) and the relative variance error."""
        sd = self.post_cov.diag().sqrt()
        mean_err = ((result.mean() - self.post_mean) / sd).pow(2).mean().sqrt().item()
        var_err = (result.var() / sd**2 - 1).pow(2).mean().sqrt().item()
        return mean_err, var_err, (result.log_normalizer - self.log_evidence).abs().mean().item()


def test_tds_with_the_exact_twist_converges_to_the_posterior_and_evidence():
    # the exact twist makes every intermediate target the true p(x_sigma | y): this checks the weights,
    # proposal densities, resampling and evidence book-keeping; the error must fall like 1 / sqrt(K)
    problem = LinearGaussian(noise_std=0.3)
    errors = {k: problem.errors(problem.run(k, 40, seed=1, twist=problem.exact_twist)) for k in (4, 16, 64, 256)}
    mean_err = [errors[k][0] for k in (4, 16, 64, 256)]
    var_err = [errors[k][1] for k in (4, 16, 64, 256)]
    assert mean_err == sorted(mean_err, reverse=True) and var_err == sorted(var_err, reverse=True), errors
    assert mean_err[-1] < 0.15 and mean_err[-1] < 0.25 * mean_err[0]     # measured 0.09-0.10 (K=256), 0.6 (K=4)
    assert var_err[-1] < 0.3                                             # measured 0.17-0.18
    # log-evidence per instance: measured 0.16-0.19, mostly the 40-step chain's own prior (0.04 at 160 steps)
    assert errors[256][2] < 0.3


def test_tds_with_the_default_twist_converges_to_the_posterior():
    # the DPS twist (log_likelihood at x0_hat) is over-confident at intermediate noise levels;
    # the weights still correct it, more slowly
    problem = LinearGaussian(noise_std=0.7)
    errors = {k: problem.errors(problem.run(k, 40, seed=2)) for k in (4, 16, 64, 256)}
    mean_err = [errors[k][0] for k in (4, 16, 64, 256)]
    assert mean_err == sorted(mean_err, reverse=True), errors
    assert mean_err[-1] < 0.35 and mean_err[-1] < 0.5 * mean_err[0], errors    # measured 0.24-0.28 vs 0.6-0.65
    assert errors[256][1] < 0.4, errors


def test_without_twist_or_resampling_tds_is_the_ancestral_sampler_with_likelihood_weights():
    problem = LinearGaussian(noise_std=0.7, instances=3)
    sigmas = karras(12, 0.01, 20.0)
    x = 20.0 * torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    stats = {}
    result = tds(problem.den, problem.log_likelihood, x, sigmas, twist_scale=0.0, ess_threshold=0.0,
                 generator=torch.Generator().manual_seed(1), stats=stats)
    ancestral = SOLVERS["euler_ancestral"](problem.den, x.reshape(15, 6), sigmas,
                                           generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.particles, ancestral.reshape(3, 5, 6), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.weights, torch.softmax(problem.log_likelihood(result.particles), 1))
    assert not result.resampled.any()
    assert result.nfe == stats["nfe"] == 12 and result.vjp_count == stats["vjp_count"] == 12


def test_tds_is_reproducible_and_reports_its_diagnostics():
    problem = LinearGaussian(noise_std=0.3, instances=4)
    seen = []
    a = problem.run(8, 10, seed=3, callback=lambda info: seen.append(info["step"]))
    b = problem.run(8, 10, seed=3)
    assert torch.equal(a.particles, b.particles) and torch.equal(a.log_weights, b.log_weights)
    assert seen == list(range(10))
    assert a.particles.shape == (4, 8, 6) and a.weights.shape == (4, 8) and a.ess.shape == (11, 4)
    assert a.resampled.shape == (10, 4) and a.resampled.any()
    torch.testing.assert_close(a.weights.sum(1), torch.ones(4, dtype=F64))
    assert ((a.ess >= 1 - 1e-9) & (a.ess <= 8 + 1e-9)).all()
    assert not problem.run(8, 10, seed=4).particles.equal(a.particles)
    equal = a.resample(torch.Generator().manual_seed(0))
    assert equal.shape == a.particles.shape
    assert all(any(torch.equal(p, q) for q in a.particles[i]) for i in range(4) for p in equal[i])


def test_systematic_resampling_keeps_each_particle_floor_or_ceil_of_k_times_its_weight():
    g = torch.Generator().manual_seed(0)
    log_w = 2.0 * torch.randn(50, 16, generator=g, dtype=F64)
    idx = systematic_resample(log_w, g)
    counts = torch.zeros(50, 16, dtype=F64).scatter_add_(1, idx, torch.ones(50, 16, dtype=F64))
    expected = 16 * torch.softmax(log_w, 1)
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
    assert (idx[:, 1:] >= idx[:, :-1]).all()


def test_effective_sample_size_limits():
    assert effective_sample_size(torch.zeros(2, 10, dtype=F64)).tolist() == pytest.approx([10.0, 10.0])
    one_hot = torch.full((1, 10), -1e4, dtype=F64)
    one_hot[0, 3] = 0.0
    assert effective_sample_size(one_hot).item() == pytest.approx(1.0)


def test_bad_inputs_are_named():
    problem = LinearGaussian(noise_std=0.3, instances=2)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        tds(problem.den, lambda x0: x0.sum((1, 2)), torch.randn(2, 3, 6, dtype=F64), karras(3, 0.1, 5.0))
    with pytest.raises(ValueError, match="ess_threshold"):
        tds(problem.den, problem.log_likelihood, torch.randn(2, 3, 6, dtype=F64), karras(3, 0.1, 5.0), ess_threshold=2)
