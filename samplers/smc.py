"""Sequential Monte Carlo: the twisted diffusion sampler (TDS, Wu et al. 2023) for posterior sampling.

Target: ``p(x0 | y) ∝ p(x0) exp(log_likelihood(x0))`` where ``p(x0)`` is the distribution of the
unconditional ancestral chain on the grid (VE frame, ``x = x0 + sigma * eps``)::

    p(x_next | x) = N(x0_hat + (sigma_next / sigma)^2 (x - x0_hat), tau^2 I),
    tau^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2,

the exact posterior step of the VE process with ``x0`` replaced by ``x0_hat = D(x, sigma)``; the last
step (to 0) is ``x0 = x0_hat``. The particles carry the twist ``log t(x) = twist_scale *
log_likelihood(x0_hat(x))`` and move with the twisted proposal

    q(x_next | x) = N(mean + (sigma^2 - sigma_next^2) * grad_x log t(x), tau^2 I),

the reverse step with the score replaced by the guided score (equivalently: ``x0_hat`` replaced by
``x0_hat + sigma^2 grad_x log t``, DPS guidance with the posterior weight). The incremental weight
is ``p(x_next | x) t(x_next) / (q(x_next | x) t(x))``; at ``sigma = 0`` the twist is replaced by the
true ``log_likelihood``, so for any ``twist_scale`` the weighted particles are consistent (as the
number of particles ``K -> inf``) for the posterior of the chain. Each step costs one denoiser
evaluation and one vector-Jacobian product (the twist at the new particles serves both the weight
and the next proposal); the last step costs none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._core import Denoiser, Run, Tensor, check_finite, randn_like


@dataclass
class TDSResult:
    """What :func:`tds` returns. ``B`` instances, ``K`` particles each, ``N`` steps."""

    particles: Tensor       # [B, K, *event] samples at sigma = 0
    log_weights: Tensor     # [B, K] unnormalised log-weights since the last resampling
    ess: Tensor             # [N + 1, B] effective sample size before the resampling test of each step, then final
    resampled: Tensor       # [N, B] bool: instance resampled at the start of step n
    log_normalizer: Tensor  # [B] estimate of log E_prior[exp(log_likelihood(x0))] (log evidence)
    nfe: int                # denoiser evaluations (per batch of B * K particles)
    vjp_count: int          # backward passes through the denoiser

    @property
    def weights(self) -> Tensor:
        """Normalised weights ``[B, K]``."""
        return torch.softmax(self.log_weights, dim=1)

    def mean(self) -> Tensor:
        """Weighted posterior mean ``[B, *event]``."""
        w = self.weights.reshape(*self.weights.shape, *(1,) * (self.particles.ndim - 2))
        return (w * self.particles).sum(1)

    def var(self) -> Tensor:
        """Weighted posterior variance per entry ``[B, *event]``."""
        w = self.weights.reshape(*self.weights.shape, *(1,) * (self.particles.ndim - 2))
        return (w * (self.particles - self.mean().unsqueeze(1)) ** 2).sum(1)

    def resample(self, generator: torch.Generator | None = None) -> Tensor:
        """``K`` equally weighted particles per instance ``[B, K, *event]`` (systematic resampling)."""
        idx = systematic_resample(self.log_weights, generator)
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
        return self.particles[rows, idx]


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``(sum w)^2 / sum w^2`` along the last dimension, computed stably from log-weights."""
    return torch.exp(2 * torch.logsumexp(log_weights, -1) - torch.logsumexp(2 * log_weights, -1))


def systematic_resample(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Systematic resampling per row: indices ``[B, K]`` of the chosen particles, ancestors in order."""
    b, k = log_weights.shape
    cdf = torch.softmax(log_weights.to(torch.float64), dim=1).cumsum(1)
    cdf[:, -1] = 1.0
    device = generator.device if generator is not None else log_weights.device
    u = torch.rand(b, 1, generator=generator, dtype=torch.float64, device=device).to(log_weights.device)
    points = (u + torch.arange(k, dtype=torch.float64, device=log_weights.device)) / k
    return torch.searchsorted(cdf, points).clamp_max(k - 1)


@torch.no_grad()
def resampling_step(log_weights: Tensor, log_z: Tensor, ess_threshold: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """ESS-triggered systematic resampling of the rows of ``log_weights [B, K]`` (shared by the particle samplers).

    Rows whose effective sample size is below ``ess_threshold * K`` are resampled: their weights reset to 0 and
    the mean weight goes into the evidence ``log_z [B]``. Returns ``(ess, resampled [B], idx [B, K] or None,
    log_weights, log_z)``; ``idx`` (the identity on rows not resampled) is ``None`` when no row is resampled.
    """
    b, k = log_weights.shape
    ess = effective_sample_size(log_weights)
    resample = ess < ess_threshold * k
    if not resample.any():
        return ess, resample, None, log_weights, log_z
    idx = torch.where(resample[:, None], systematic_resample(log_weights, generator),
                      torch.arange(k, device=log_weights.device).expand(b, k))
    log_z = log_z + torch.where(resample, torch.logsumexp(log_weights, 1) - math.log(k), 0.0)
    log_weights = torch.where(resample[:, None], torch.zeros_like(log_weights), log_weights)
    return ess, resample, idx, log_weights, log_z


def particle_step_end(i: int, sigma: float, sigma_next: float, x: Tensor, denoised: Tensor, log_weights: Tensor,
                      ess: Tensor, nfe: int, callback=None) -> None:
    """The end of a particle sampler's step (``x``, ``denoised`` of shape ``[B * K, ...]``, ``log_weights [B, K]``):
    non-finite particles or weights are an error naming the step; the callback sees ``[B, K, ...]`` views."""
    check_finite(x, f"the particles after step {i} (sigma={sigma_next:g})")
    check_finite(torch.logsumexp(log_weights, 1), f"the log-weights after step {i} (sigma={sigma_next:g})")
    if callback is not None:
        b, k = log_weights.shape
        callback({"step": i, "sigma": sigma, "sigma_next": sigma_next, "x": x.reshape(b, k, *x.shape[1:]),
                  "denoised": denoised.reshape(b, k, *x.shape[1:]), "log_weights": log_weights, "ess": ess, "nfe": nfe})


def close_weights(log_weights: Tensor, log_z: Tensor, ess_history: list) -> Tensor:
    """After the last step: the final ESS appended to ``ess_history``; returns the evidence ``log_z`` with the
    final mean weight included."""
    ess_history.append(effective_sample_size(log_weights))
    return log_z + torch.logsumexp(log_weights, 1) - math.log(log_weights.shape[1])


def tds(denoiser: Denoiser, log_likelihood: Callable[[Tensor], Tensor], x: Tensor, sigmas: Sequence[float] | Tensor,
        *, ess_threshold: float = 0.5, twist_scale: float = 1.0,
        twist: Callable[[Tensor, float], Tensor] | None = None, generator: torch.Generator | None = None,
        callback: Callable[[dict], object] | None = None, stats: dict | None = None) -> TDSResult:
    """Twisted diffusion sampler: ``K`` weighted particles per instance for ``p(x0 | y)``.

    Arguments:
        denoiser:        ``D(x, sigma) -> x0_hat`` (VE frame), differentiable in ``x``; called on all
                         ``B * K`` particles at once as ``[B * K, *event]``.
        log_likelihood:  ``log p(y | x0)`` up to a constant, differentiable: maps ``x0_hat [B, K, *event]``
                         to ``[B, K]`` (instance ``b`` carries its own observations ``y_b``).
        x:               initial particles ``[B, K, *event]`` at ``sigmas[0]``, independent draws of the
                         noisy marginal (e.g. ``sigmas[0] * randn``); ``K = x.shape[1]``.
        sigmas:          grid, strictly decreasing, ending in 0.
        ess_threshold:   resample an instance when its ESS falls below ``ess_threshold * K``
                         (systematic resampling; 0 never, 1 at every step).
        twist_scale:     multiplies the log-likelihood in the intermediate twists (not at sigma = 0).
        twist:           optional ``twist(x0_hat [B, K, *event], sigma) -> [B, K]``: the log twist at noise
                         level ``sigma > 0`` (e.g. a likelihood whose variance grows with sigma, which is
                         much better than the plain DPS twist when ``y`` is precise); replaces
                         ``twist_scale * log_likelihood(x0_hat)``. Terms that depend only on sigma
                         (and the instance) cancel, also in ``log_normalizer``.
        generator:       source of the proposal noise and of the resampling offsets.
        callback:        ``callback(info)`` after each step with ``step, sigma, sigma_next, x [B, K, ...],
                         denoised, log_weights, ess, nfe``.
        stats:           dict receiving ``nfe``, ``steps`` and ``vjp_count``.
    Returns a :class:`TDSResult`; ``result.mean()`` is the weighted posterior mean.
    """
    if x.ndim < 2:
        raise ValueError(f"x must hold particles as [B, K, ...], got shape {tuple(x.shape)}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    b, k, event = x.shape[0], x.shape[1], x.shape[2:]
    x = x.reshape(b * k, *event)
    run = Run(denoiser, x, sigmas, stats=stats)
    vjp_count = 0

    def likelihood(x0: Tensor) -> Tensor:
        ll = log_likelihood(x0.reshape(b, k, *event))
        if ll.shape != (b, k):
            raise ValueError(f"log_likelihood must return [B, K] = {(b, k)}, got {tuple(ll.shape)}")
        return ll

    def log_twist(x0: Tensor, sigma: float) -> Tensor:
        if twist is None:
            return twist_scale * likelihood(x0)
        lt = twist(x0.reshape(b, k, *event), sigma)
        if lt.shape != (b, k):
            raise ValueError(f"twist must return [B, K] = {(b, k)}, got {tuple(lt.shape)}")
        return lt

    def evaluate(x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
        """x0_hat, log twist [B, K] and its gradient in x, from one forward and one backward pass."""
        nonlocal vjp_count
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = run.denoise(x_in, sigma)
            log_t = log_twist(x0, sigma)
            grad = torch.zeros_like(x) if not log_t.requires_grad else torch.autograd.grad(log_t.sum(), x_in)[0]
        vjp_count += 1
        return x0.detach(), log_t.detach(), grad

    def gather(t: Tensor, idx: Tensor) -> Tensor:
        rows = torch.arange(b, device=idx.device)[:, None]
        return t.reshape(b, k, *event)[rows, idx].reshape(b * k, *event)

    sigma0 = float(run.sigmas[0])
    x0, log_t, grad = evaluate(x, sigma0)
    log_w = log_t.clone()                               # the initial target is p(x) t(x), proposal p(x)
    log_z = torch.zeros(b, dtype=log_w.dtype, device=log_w.device)
    ess_hist, resampled_hist = [], []
    for i, sigma, sigma_next in run.steps():
        ess, resample, idx, log_w, log_z = resampling_step(log_w, log_z, ess_threshold, generator)
        ess_hist.append(ess)
        resampled_hist.append(resample)
        if idx is not None:
            x, x0, grad = (gather(t, idx) for t in (x, x0, grad))
            log_t = torch.gather(log_t, 1, idx)
        if sigma_next == 0:
            x = x0                                      # the chain's last step; weight by the true likelihood
            log_w = log_w + likelihood(x) - log_t
        else:
            ratio = (sigma_next / sigma) ** 2
            tau = sigma_next * math.sqrt(1 - ratio)
            shift = (sigma**2 - sigma_next**2) * grad   # proposal mean minus transition mean
            z = randn_like(x, generator)
            x = x0 + ratio * (x - x0) + shift + tau * z
            # log p(x_next | x) - log q(x_next | x) for equal covariances tau^2 I
            z_dot_shift = (z * shift).reshape(b * k, -1).sum(1)
            log_pq = -(z_dot_shift / tau + shift.reshape(b * k, -1).pow(2).sum(1) / (2 * tau**2))
            x0, log_t_next, grad = evaluate(x, sigma_next)
            log_w = log_w + log_pq.reshape(b, k) + log_t_next - log_t
            log_t = log_t_next
        particle_step_end(i, sigma, sigma_next, x, x0, log_w, ess, run.nfe, callback)
    log_z = close_weights(log_w, log_z, ess_hist)
    run.finish(x)
    if stats is not None:
        stats["vjp_count"] = vjp_count
    return TDSResult(particles=x.reshape(b, k, *event), log_weights=log_w, ess=torch.stack(ess_hist),
                     resampled=torch.stack(resampled_hist), log_normalizer=log_z, nfe=run.nfe, vjp_count=vjp_count)
