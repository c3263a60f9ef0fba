"""Exact denoisers of Gaussian and Gaussian-mixture data: the ground truth for tests and benchmarks.

For data ``x0 ~ N(mu, C)`` and ``x = x0 + sigma * eps`` the ideal denoiser is
``E[x0 | x] = mu + C (C + sigma^2 I)^{-1} (x - mu)``, and the probability-flow ODE
``dx/dsigma = (x - D(x, sigma)) / sigma`` has the closed-form solution
``x(s) = mu + V diag(sqrt((lam + s^2) / (lam + s0^2))) V^T (x(s0) - mu)`` with ``C = V diag(lam) V^T``.

For a mixture ``sum_k w_k N(mu_k, C_k)`` the ideal denoiser is the responsibility-weighted sum of
the per-component denoisers, responsibilities from ``N(x; mu_k, C_k + sigma^2 I)``.

Fields of any shape ``[...]`` are handled by flattening to ``d = prod(shape)`` dimensions.
All linear algebra is done in float64 and the result cast back to the input dtype.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Tensor = torch.Tensor


class GaussianDenoiser:
    """Exact denoiser of ``N(mean, cov)`` data of event shape ``shape``.

    Arguments:
        mean:  tensor of the event shape (or flat ``[d]``).
        cov:   ``[d, d]`` symmetric positive semi-definite covariance.
        shape: event shape of one sample; defaults to ``mean.shape``.
    """

    def __init__(self, mean: Tensor, cov: Tensor, shape: Sequence[int] | None = None) -> None:
        self.shape = tuple(shape) if shape is not None else tuple(mean.shape)
        self.mean = mean.reshape(-1).to(torch.float64)
        self.cov = cov.to(torch.float64)
        d = self.mean.numel()
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must be [{d}, {d}], got {tuple(self.cov.shape)}")
        lam, vec = torch.linalg.eigh(0.5 * (self.cov + self.cov.T))
        self.eigvals = lam.clamp_min(0.0)
        self.eigvecs = vec

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def _filter(self, x: Tensor, gains: Tensor) -> Tensor:
        """Return ``mean + V diag(gains_b) V^T (x - mean)`` for gains of shape ``[B, d]``."""
        z = (self._flat(x) - self.mean) @ self.eigvecs
        return self.mean + (z * gains) @ self.eigvecs.T

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1) ** 2
        lam = self.eigvals.to(x.device)
        gains = lam / (lam + s2)
        gains = torch.where(lam + s2 > 0, gains, torch.ones_like(gains))
        return self._filter(x, gains).to(x.dtype).reshape(x.shape)

    def ode_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE map from noise level ``sigma_from`` to ``sigma_to``."""
        lam = self.eigvals.to(x.device)
        gains = torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2)).expand(x.shape[0], -1)
        return self._filter(x, gains).to(x.dtype).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` exact samples of the data distribution (float64)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.mean + (z * self.eigvals.sqrt()) @ self.eigvecs.T
        return x.reshape(n, *self.shape)


class GaussianMixtureDenoiser:
    """Exact denoiser of a Gaussian mixture with isotropic-plus-diagonal components.

    Arguments:
        weights: ``[K]`` mixture weights (normalised here).
        means:   ``[K, *shape]`` component means.
        stds:    ``[K]`` or ``[K, *shape]`` per-coordinate standard deviations (diagonal covariance).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        self.shape = tuple(means.shape[1:])
        k = means.shape[0]
        self.log_weights = torch.log(weights.to(torch.float64) / weights.sum())
        self.means = means.reshape(k, -1).to(torch.float64)
        stds = stds.to(torch.float64)
        self.vars = (stds.reshape(k, 1) if stds.ndim == 1 else stds.reshape(k, -1)) ** 2
        self.vars = self.vars.expand_as(self.means)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def responsibilities(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Posterior component probabilities ``[B, K]`` given noisy ``x`` at ``sigma``."""
        xf = x.reshape(x.shape[0], 1, -1).to(torch.float64)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1) ** 2
        var = self.vars + s2                                   # [B, K, d]
        logp = -0.5 * (((xf - self.means) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.softmax(logp + self.log_weights, dim=-1)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        xf = x.reshape(x.shape[0], 1, -1).to(torch.float64)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1) ** 2
        comp = self.means + self.vars / (self.vars + s2) * (xf - self.means)  # [B, K, d]
        r = self.responsibilities(x, sigma)
        return (r.unsqueeze(-1) * comp).sum(1).to(x.dtype).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` exact samples of the mixture (float64)."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + z * self.vars[k].sqrt()).reshape(n, *self.shape)
