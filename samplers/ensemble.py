"""The approximation-free ensemble posterior sampler (AFDPS; Chen, Ren, Min, Ying and Izzo 2025).

Target: ``p(x0 | y) ∝ p(x0) l(x0)`` with ``log l = log_likelihood``. Instead of approximating
``p(y | x_sigma)``, the particles follow a *posterior path*: the noisy prior marginal times a likelihood of
the noisy state itself,

    q_sigma(x) ∝ p_sigma(x) l_sigma(x),     l_0 = l,   so q_0 is the posterior.

The paper takes ``l_sigma = l`` at every level. Any family that ends in ``l`` keeps the path exact (the
change of ``l_sigma`` at fixed particles is an importance weight), and a likelihood whose variance grows
with sigma takes the stiffness out of the guided steps (see :func:`ensemble`). In the VE frame, with
``g^2 ds = -dsigma^2`` along the reverse time ``s``, the path solves (the paper's Eq. 3.6)

    d_s q = -div(q g^2 (grad log p_sigma + grad log l)) + g^2/2 lap(q) + rate q,
    rate  = g^2 (grad log p_sigma . grad log l + |grad log l|^2 / 2 + lap(log l) / 2) - d_s log Z_s:

particles move with the reverse SDE whose score is the prior's plus the likelihood's (the prior score from
the denoiser, ``grad log p_sigma = (D(x, sigma) - x) / sigma^2``; the likelihood's gradient needs no pass
through the network) and carry Feynman-Kac log-weights that grow at ``rate`` (the constant drops out of
normalised weights). The ODE variant moves with the prior's probability-flow ODE, carries the rate
``g^2/2 grad log p_sigma . grad log l`` (no Laplacian) and spreads its particles with Langevin correctors on
``q_sigma``. Resampling (systematic, when the effective sample size falls below a threshold) is the
birth-death of the particles.

Discretisation (``Delta = sigma^2 - sigma_next^2``): the guided reverse SDE is the plain one with the
denoiser ``x0_hat + sigma^2 grad log l``, stepped by DPM-Solver++(2M) SDE (``order=2``) or the ancestral step
(``order=1``) where the paper uses Euler-Maruyama (with ``l = 1`` the particles are exactly those of
``dpmpp_2m_sde`` and ``euler_ancestral``); the ODE variant steps with DPM-Solver++(2M) or DDIM. The
weights are the paper's explicit Euler increment ``Delta * rate`` at the old state (``weights="pde"``), or
the exact importance weight of the discrete chain, the ratio of the unguided and the guided transition
densities times ``l_sigma'(x') / l_sigma(x)`` (``weights="pathwise"``: its continuous-time limit is the same
Feynman-Kac weight; it needs no Laplacian). Langevin correctors (``corrector_steps``) move the particles at
fixed weights, towards ``q_sigma_next``. The step to sigma = 0 returns ``x0_hat``, weighted
by ``l(x0_hat) / l_sigma(x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._core import Denoiser, Run, Tensor, randn_like
from .smc import TDSResult, close_weights, particle_step_end, resampling_step

LogLikelihood = Callable[[Tensor, float], Tensor]


@dataclass
class EnsembleResult(TDSResult):
    """What :func:`ensemble` returns (the fields of :class:`~samplers.smc.TDSResult`); ``vjp_count``
    counts gradients of the log-likelihood, which never pass through the denoiser."""


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def feynman_kac_rate(variant: str, score: Tensor, grad: Tensor, laplacian: Tensor) -> Tensor:
    """The log-weight rate per unit of ``-dsigma^2`` (Eq. 3.6), up to a constant: ``score . grad + |grad|^2 / 2
    + laplacian / 2`` for the guided SDE, ``score . grad / 2`` for the probability-flow ODE; ``score`` the
    prior's and ``grad``, ``laplacian`` the likelihood's at the particles ``[N, ...]``; returns ``[N]`` (float64)."""
    if variant == "ode":
        return 0.5 * _dot(score, grad).to(torch.float64)
    return (_dot(score, grad) + 0.5 * _dot(grad, grad)).to(torch.float64) + 0.5 * laplacian.reshape(-1)


@torch.no_grad()
def ensemble(denoiser: Denoiser, log_likelihood: LogLikelihood, x: Tensor, sigmas: Sequence[float] | Tensor, *,
             variant: str = "sde", weights: str = "pde", order: int = 2, ess_threshold: float = 0.5,
             laplacian_probes: int = 1, corrector_steps: int | None = None, corrector_step: float = 0.1,
             generator: torch.Generator | None = None, callback: Callable[[dict], object] | None = None,
             stats: dict | None = None) -> EnsembleResult:
    """Approximation-free ensemble sampler: ``K`` weighted particles per instance for ``p(x0 | y)``.

    Arguments:
        denoiser:        ``D(x, sigma) -> x0_hat`` (VE frame), called on all ``B * K`` particles at once as
                         ``[B * K, *event]``; never differentiated.
        log_likelihood:  ``log l_sigma(x)`` up to a constant: maps noisy particles ``[B, K, *event]`` and a noise
                         level ``sigma`` to ``[B, K]``, differentiable in ``x``; at ``sigma = 0`` it must be the
                         true ``log p(y | x0)``. The paper's path ignores ``sigma``; a variance that grows with
                         sigma (``noise_std^2 + sigma^2 * |A|^2`` for ``y = A x0 + noise``) keeps the guided steps
                         stable on any grid.
        x:               initial particles ``[B, K, *event]`` at ``sigmas[0]``, independent draws of the noisy
                         prior marginal (e.g. ``sigmas[0] * randn``); they start with weights ``l_sigma0(x)``.
        sigmas:          grid, strictly decreasing, ending in 0.
        variant:         ``"sde"`` (guided reverse SDE) or ``"ode"`` (probability-flow ODE + Langevin correctors).
        weights:         ``"pde"`` (the paper's Euler increment of the Feynman-Kac rate) or ``"pathwise"`` (the
                         exact importance weight of the discrete chain; ``"sde"`` only).
        order:           2 (DPM-Solver++(2M), SDE or ODE) or 1 (ancestral step / DDIM) for the transport.
        ess_threshold:   resample an instance when its ESS falls below ``ess_threshold * K`` (0 never, 1 always).
        laplacian_probes: Rademacher probes of the Hutchinson estimate of ``lap(log l)`` (``"sde"`` with
                         ``"pde"`` weights only); 0 treats it as constant, exact for linear-Gaussian observations.
        corrector_steps, corrector_step: unadjusted Langevin steps on ``q_sigma_next`` after each step to
                         ``sigma_next > 0`` (each one denoiser evaluation) with step size
                         ``corrector_step * sigma_next^2``; default 1 for ``"ode"`` (its particles need them to
                         separate after resampling), 0 for ``"sde"``.
        generator:       source of the noise, the probes and the resampling offsets.
        callback:        ``callback(info)`` after each step with ``step, sigma, sigma_next, x [B, K, ...],
                         denoised, log_weights, ess, nfe``.
        stats:           dict receiving ``nfe``, ``steps`` and ``vjp_count`` (likelihood gradients).
    Returns an :class:`EnsembleResult`; ``result.mean()`` is the weighted posterior mean and
    ``result.log_normalizer`` estimates ``log E_prior[l(x0)]`` (the evidence up to the likelihood's constant).
    NFE: one per step plus ``corrector_steps`` per step to ``sigma > 0``.
    """
    if x.ndim < 2:
        raise ValueError(f"x must hold particles as [B, K, ...], got shape {tuple(x.shape)}")
    if variant not in ("sde", "ode"):
        raise ValueError(f"variant must be 'sde' or 'ode', got {variant!r}")
    if weights not in ("pde", "pathwise"):
        raise ValueError(f"weights must be 'pde' or 'pathwise', got {weights!r}")
    if weights == "pathwise" and variant == "ode":
        raise ValueError("pathwise weights need the stochastic transport: use variant='sde' or weights='pde'")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if corrector_steps is None:
        corrector_steps = 1 if variant == "ode" else 0
    for name, value in (("laplacian_probes", laplacian_probes), ("corrector_steps", corrector_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not (math.isfinite(corrector_step) and corrector_step > 0):
        raise ValueError(f"corrector_step must be a finite number > 0, got {corrector_step!r}")
    b, k, event = x.shape[0], x.shape[1], x.shape[2:]
    x = x.reshape(b * k, *event)
    run = Run(denoiser, x, sigmas, stats=stats)
    probes = laplacian_probes if (variant == "sde" and weights == "pde") else 0
    grads = 0

    def likelihood(x: Tensor, sigma: float) -> Tensor:
        ll = log_likelihood(x.reshape(b, k, *event), sigma)
        if ll.shape != (b, k):
            raise ValueError(f"log_likelihood must return [B, K] = {(b, k)}, got {tuple(ll.shape)}")
        return ll

    def evaluate(x: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
        """log l_sigma(x) [B, K] (float64), its gradient in x and its Laplacian [B, K] (0 without probes)."""
        nonlocal grads
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            ll = likelihood(x_in, sigma)
            lap = torch.zeros(b * k, dtype=torch.float64, device=x.device)
            if not ll.requires_grad:
                return ll.detach().to(torch.float64), torch.zeros_like(x), lap.reshape(b, k)
            grad = torch.autograd.grad(ll.sum(), x_in, create_graph=probes > 0)[0]
            for _ in range(probes):
                device = generator.device if generator is not None else x.device
                v = (2 * torch.randint(0, 2, x.shape, generator=generator, device=device) - 1).to(x)
                if grad.requires_grad:
                    hv = torch.autograd.grad(_dot(grad, v).sum(), x_in, retain_graph=True, allow_unused=True)[0]
                    if hv is not None:
                        lap += _dot(hv, v).to(torch.float64) / probes
        grads += 1
        return ll.detach().to(torch.float64), grad.detach(), lap.reshape(b, k)

    def gather(t: Tensor, idx: Tensor) -> Tensor:
        rows = torch.arange(b, device=idx.device)[:, None]
        return t.reshape(b, k, *t.shape[1:])[rows, idx].reshape(t.shape)

    def per_particle(t: Tensor) -> Tensor:
        return t.to(torch.float64).reshape(b, k)

    sigma0 = float(run.sigmas[0])
    x0 = run.denoise(x, sigma0)
    ll, grad, lap = evaluate(x, sigma0)
    log_w = ll.clone()                                  # the initial target is p l, the proposal p
    log_z = torch.zeros(b, dtype=torch.float64, device=x.device)
    old_x0 = old_guided = h_last = None                 # the previous step's denoiser outputs (order 2)
    ess_hist, resampled_hist = [], []
    for i, sigma, sigma_next in run.steps():
        ess, resample, idx, log_w, log_z = resampling_step(log_w, log_z, ess_threshold, generator)
        ess_hist.append(ess)
        resampled_hist.append(resample)
        if idx is not None:
            x, x0, grad = (gather(t, idx) for t in (x, x0, grad))
            if old_x0 is not None:
                old_x0, old_guided = gather(old_x0, idx), gather(old_guided, idx)
            ll, lap = torch.gather(ll, 1, idx), torch.gather(lap, 1, idx)
        guided = x0 + sigma**2 * grad                   # the denoiser of the guided reverse SDE
        if sigma_next == 0:
            x = x0                                      # the chain's last step; weight by the true likelihood
            log_w = log_w + likelihood(x, 0.0).to(torch.float64) - ll
        else:
            h = math.log(sigma / sigma_next)
            delta = sigma**2 - sigma_next**2
            score = (x0 - x) / sigma**2
            if variant == "sde":
                # DPM-Solver++(2M) SDE (eta 1) with the guided denoiser; order 1 is the ancestral step
                decay = -math.expm1(-2 * h)
                mean_p, mean_q = x0, guided
                if order == 2 and old_x0 is not None:
                    c = 0.5 * h / h_last
                    mean_p, mean_q = x0 + c * (x0 - old_x0), guided + c * (guided - old_guided)
                tau = sigma_next * math.sqrt(decay)
                z = randn_like(x, generator)
                x_p = (1 - decay) * x + decay * mean_p      # the prior chain's mean
                shift = decay * (mean_q - mean_p)
                x = x_p + shift + tau * z
            else:
                # DPM-Solver++(2M) on the prior's probability-flow ODE; order 1 is the DDIM step
                decay = -math.expm1(-h)
                mean_p = x0
                if order == 2 and old_x0 is not None:
                    mean_p = x0 + 0.5 * h / h_last * (x0 - old_x0)
                x = (1 - decay) * x + decay * mean_p
            old_x0, old_guided, h_last = x0, guided, h
            if weights == "pde":
                log_w = log_w + delta * per_particle(feynman_kac_rate(variant, score, grad, lap))
                # the path's likelihood changes from l_sigma to l_sigma_next at the new particles
                log_w = log_w - likelihood(x, sigma).to(torch.float64)
            else:
                log_pq = -(_dot(z, shift) / tau + _dot(shift, shift) / (2 * tau**2))   # log p(x'|x) - log q(x'|x)
                log_w = log_w + per_particle(log_pq) - ll
            x0 = run.denoise(x, sigma_next)
            ll, grad, lap = evaluate(x, sigma_next)
            log_w = log_w + ll
            if corrector_steps:
                eta = corrector_step * sigma_next**2
                for _ in range(corrector_steps):        # Langevin on q_sigma_next: weights unchanged
                    x = x + eta * ((x0 - x) / sigma_next**2 + grad) + math.sqrt(2 * eta) * randn_like(x, generator)
                    x0 = run.denoise(x, sigma_next)
                    ll, grad, lap = evaluate(x, sigma_next)
        particle_step_end(i, sigma, sigma_next, x, x0, log_w, ess, run.nfe, callback)
    log_z = close_weights(log_w, log_z, ess_hist)
    run.finish(x)
    if stats is not None:
        stats["vjp_count"] = grads
    return EnsembleResult(particles=x.reshape(b, k, *event), log_weights=log_w, ess=torch.stack(ess_hist),
                          resampled=torch.stack(resampled_hist), log_normalizer=log_z, nfe=run.nfe, vjp_count=grads)
