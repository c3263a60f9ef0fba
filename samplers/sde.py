"""Stochastic solvers: ancestral Euler, EDM churn, DPM-Solver++(2M) SDE, Euler–Maruyama, predictor–corrector.

Frame: variance exploding, ``x = x0 + sigma * eps``; the forward process is ``dx = sqrt(d sigma^2 / dt) dW``
and the score is ``(D(x, sigma) - x) / sigma^2``. Every solver has the signature of
:mod:`samplers._core`, draws all its noise from ``generator`` through ``randn_like`` (so a seeded
``torch.Generator`` reproduces a run bitwise) and ends exactly in the denoiser output at the last
step to ``sigma = 0`` (no noise is ever added at ``sigma = 0``).

The one-step updates (``euler_step``, ``heun_step``, ``ancestral_step``, ``euler_maruyama_step``)
are shared by the solvers and by the predictor–corrector sampler ``pc``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._core import Run, Tensor, append_dims, randn_like, register

Step = Callable[..., tuple]


def check_nonnegative(**values: float) -> None:
    """Raise a ValueError naming the first of ``values`` (noise amounts: ``eta``, ``s_noise``, ...) that is
    not a finite number >= 0."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step ``sigma -> sigma_next`` into a deterministic part to ``sigma_down`` and noise ``sigma_up``.

    ``sigma_down^2 + sigma_up^2 = sigma_next^2``. With ``eta = 1`` the pair is the exact VE posterior
    ``q(x_next | x, x0)``: ``sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``; ``eta = 0``
    gives ``(sigma_next, 0)`` (a deterministic step); ``sigma_up`` is capped at ``sigma_next``.
    """
    check_nonnegative(eta=eta)
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def euler_to(x: Tensor, denoised: Tensor, sigma: float, sigma_to: float) -> Tensor:
    """Euler step of the probability-flow ODE from ``sigma`` to ``sigma_to``; exactly ``denoised`` at 0."""
    if sigma_to == 0:
        return denoised
    return denoised + (sigma_to / sigma) * (x - denoised)


# one-step updates: (run, x, sigma, sigma_next, generator, **options) -> (x_next, the last denoiser output used)


def euler_step(run: Run, x: Tensor, sigma: float, sigma_next: float, generator=None) -> tuple[Tensor, Tensor]:
    """Euler step of the probability-flow ODE (1 NFE)."""
    denoised = run.denoise(x, sigma)
    return euler_to(x, denoised, sigma, sigma_next), denoised


def heun_step(run: Run, x: Tensor, sigma: float, sigma_next: float, generator=None) -> tuple[Tensor, Tensor]:
    """Heun (trapezoidal) step of the probability-flow ODE (2 NFE; Euler, 1 NFE, to sigma = 0)."""
    denoised = run.denoise(x, sigma)
    x_euler = euler_to(x, denoised, sigma, sigma_next)
    if sigma_next == 0:
        return x_euler, denoised
    denoised_next = run.denoise(x_euler, sigma_next)
    # trapezoid on dx/dsigma = (x - D) / sigma
    d = (x - denoised) / sigma + (x_euler - denoised_next) / sigma_next
    return x + (0.5 * (sigma_next - sigma)) * d, denoised_next


def ancestral_step(run: Run, x: Tensor, sigma: float, sigma_next: float, generator=None, *,
                   eta: float = 1.0, s_noise: float = 1.0) -> tuple[Tensor, Tensor]:
    """Euler step to ``sigma_down``, then fresh noise of std ``s_noise * sigma_up`` (see :func:`ancestral_split`)."""
    denoised = run.denoise(x, sigma)
    sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
    x = euler_to(x, denoised, sigma, sigma_down)
    if sigma_up > 0:
        x = x + (s_noise * sigma_up) * randn_like(x, generator)
    return x, denoised


def euler_maruyama_step(run: Run, x: Tensor, sigma: float, sigma_next: float, generator=None) -> tuple[Tensor, Tensor]:
    """Euler–Maruyama step of the reverse VE SDE ``dx = -2 sigma score dsigma + sqrt(2 sigma |dsigma|) dW``.

    ``score = (D - x) / sigma^2``; the step to ``sigma = 0`` returns ``D(x, sigma)``.
    """
    denoised = run.denoise(x, sigma)
    if sigma_next == 0:
        return denoised, denoised
    ds = sigma - sigma_next
    x = x + (2 * ds / sigma) * (denoised - x) + math.sqrt(2 * sigma * ds) * randn_like(x, generator)
    return x, denoised


# ---------------------------------------------------------------------------------------------
# solvers


@register("euler_ancestral", order=1, nfe_per_step=1, stochastic=True)
@torch.no_grad()
def euler_ancestral(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None,
                    eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with Euler steps.

    Options:
        eta:      0 gives Euler on the probability-flow ODE, 1 the exact VE posterior noise level.
        s_noise:  multiplier of the injected noise.
    """
    check_nonnegative(eta=eta, s_noise=s_noise)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        x, denoised = ancestral_step(run, x, sigma, sigma_next, generator, eta=eta, s_noise=s_noise)
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("edm", order=1, nfe_per_step=2, stochastic=True)
@torch.no_grad()
def edm(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None,
        S_churn: float = 40.0, S_min: float = 0.05, S_max: float = 50.0, S_noise: float = 1.0) -> Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2): churn noise, Euler step, Heun correction.

    Options (the paper's names; the defaults are the EDM repository's ImageNet-64 setting, except
    ``S_noise = 1``: their 1.003 compensates a trained network's bias and is wrong for exact denoisers):
        S_churn:  total churn; each step uses ``gamma = min(S_churn / N, sqrt(2) - 1)`` for ``N`` steps,
        S_min, S_max: churn only where ``S_min <= sigma <= S_max``,
        S_noise:  multiplier of the churn noise.
    ``S_churn = 0`` is the deterministic Heun sampler (Algorithm 1). The last step (to 0) has no
    Heun correction.
    """
    check_nonnegative(S_churn=S_churn, S_noise=S_noise)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    gamma_max = min(S_churn / run.num_steps, math.sqrt(2) - 1)
    for i, sigma, sigma_next in run.steps():
        gamma = gamma_max if S_min <= sigma <= S_max else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + (S_noise * math.sqrt(sigma_hat**2 - sigma**2)) * randn_like(x, generator)
        x, denoised = heun_step(run, x, sigma_hat, sigma_next)
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("dpmpp_2m_sde", order=1, nfe_per_step=1, stochastic=True)
@torch.no_grad()
def dpmpp_2m_sde(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None,
                 eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (data prediction, ``lambda = -log sigma``).

    Options:
        eta:          0 gives DPM-Solver++(2M), 1 the SDE of Lu et al.
        s_noise:      multiplier of the injected noise.
        solver_type:  ``"midpoint"`` or ``"heun"``: the second-order term's coefficient.
    The Brownian increments are independent normal draws per step (exact for non-overlapping steps).
    The last step (to 0) returns the denoiser output.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    check_nonnegative(eta=eta, s_noise=s_noise)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    old_denoised, h_last = None, None
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            k = (1 + eta) * h                                   # decay rate of the data term
            decay = -math.expm1(-k)                             # 1 - exp(-(1 + eta) h)
            x = (sigma_next / sigma * math.exp(-eta * h)) * x + decay * denoised
            if old_denoised is not None:
                # linear extrapolation of D in lambda with slope (D - D_old) / h_last
                coeff = 0.5 * decay if solver_type == "midpoint" else 1 - decay / k
                x = x + (coeff * h / h_last) * (denoised - old_denoised)
            if eta:
                x = x + (s_noise * sigma_next * math.sqrt(-math.expm1(-2 * eta * h))) * randn_like(x, generator)
            h_last = h
        old_denoised = denoised
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("euler_maruyama", order=1, nfe_per_step=1, stochastic=True)
@torch.no_grad()
def euler_maruyama(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None) -> Tensor:
    """Euler–Maruyama on the reverse-time VE SDE, with sigma as time.

    ``x_next = x + 2 (sigma - sigma_next) / sigma * (D - x) + sqrt(2 sigma (sigma - sigma_next)) z``: twice
    the probability-flow drift plus noise. An Euler–Maruyama step to ``sigma = 0`` would overshoot
    (``2 D - x``), so the last step returns the denoiser output ``D(x, sigma_last)``, which is also
    the Euler step of the probability-flow ODE to 0. First order (weak): needs many steps.
    """
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        x, denoised = euler_maruyama_step(run, x, sigma, sigma_next, generator)
        x = run.end_step(i, x, denoised)
    return run.finish(x)


PREDICTORS: dict[str, Step] = {
    "euler": euler_step,
    "heun": heun_step,
    "euler_ancestral": ancestral_step,
    "euler_maruyama": euler_maruyama_step,
}


def langevin_step(run: Run, x: Tensor, sigma: float, generator=None, *, snr: float = 0.16,
                  step_size: str = "batch") -> tuple[Tensor, Tensor]:
    """One Langevin corrector step at noise level ``sigma`` (Song et al. 2021, Algorithm 5).

    ``x <- x + eps * score + sqrt(2 eps) z`` with ``eps = 2 (snr * ||z|| / ||score||)^2``, the norms taken
    per sample (``step_size="sample"``, the paper's formula) or averaged over the batch
    (``step_size="batch"``, the paper's released code).
    """
    denoised = run.denoise(x, sigma)
    score = (denoised - x) / sigma**2
    z = randn_like(x, generator)
    z_norm = z.reshape(x.shape[0], -1).norm(dim=1)
    score_norm = score.reshape(x.shape[0], -1).norm(dim=1)
    if step_size == "batch":
        z_norm, score_norm = z_norm.mean(), score_norm.mean()
    eps = 2 * (snr * z_norm / score_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    eps = append_dims(eps.expand(x.shape[0]), x.ndim)
    return x + eps * score + (2 * eps).sqrt() * z, denoised


@register("pc", order=1, nfe_per_step=2, stochastic=True)
@torch.no_grad()
def pc(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None,
       predictor: str = "euler", corrector_steps: int = 1, snr: float = 0.16, step_size: str = "batch") -> Tensor:
    """Predictor–corrector sampler: one predictor step to ``sigma_next``, then Langevin corrector steps there.

    Options:
        predictor:        a single-step method from ``PREDICTORS`` ("euler", "heun",
                          "euler_ancestral" (eta = 1), "euler_maruyama"). Multistep solvers are refused:
                          run on one step at a time they would fall back to their first-order start.
        corrector_steps:  Langevin steps at each ``sigma_next > 0`` (none at ``sigma = 0``).
        snr:              signal-to-noise ratio of the corrector (0.16 is Song et al.'s VE setting).
        step_size:        ``"batch"`` (default): the step-size norms are batch means (one step size per
                          step, which couples the samples of a batch weakly); ``"sample"``: per-sample
                          norms (the paper's formula), sound only in high dimension: the step then depends
                          on the state and on the ``z`` it multiplies. Measured with exact scores (Gaussian
                          data, Heun predictor, 50 steps, snr = 0.16): per-sample norms inflate the
                          eigen-variances by 76-240% in d = 5 and up to 26% in d = 64; batch norms by at
                          most 10% / 12%, the Langevin bias below.
    Even with exact scores the corrector is unadjusted Langevin: it biases a variance ``v`` by about
    ``eps / (2 v)``, i.e. O(snr^2), whatever the number of steps (3% at snr = 0.05 in the case above).
    NFE per step: the predictor's (1, or 2 for Heun) plus ``corrector_steps``. Hooks run once per
    step, after the corrector.
    """
    if step_size not in ("batch", "sample"):
        raise ValueError(f"step_size must be 'batch' or 'sample', got {step_size!r}")
    if predictor not in PREDICTORS:
        raise ValueError(f"pc predictor must be a single-step method, one of {sorted(PREDICTORS)}; got {predictor!r}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    step = PREDICTORS[predictor]
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        x, denoised = step(run, x, sigma, sigma_next, generator)
        for _ in range(corrector_steps if sigma_next > 0 else 0):
            x, denoised = langevin_step(run, x, sigma_next, generator, snr=snr, step_size=step_size)
        x = run.end_step(i, x, denoised)
    return run.finish(x)
