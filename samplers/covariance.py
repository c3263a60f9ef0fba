"""Covariance-aware guidance (the SDA / MMPS family): the observation noise enters, not a tuned weight.

For observations ``y = A(x0) + noise``, ``noise ~ N(0, diag(noise_var))``, the posterior denoiser is
approximated by conditioning the Gaussian ``x0 | x ~ N(D(x), V)`` with Tweedie's covariance
``V = sigma^2 dD/dx`` on ``y``::

    E[x0 | x, y] ~ D + V A^T (A V A^T + diag(noise_var))^{-1} (y - A(D)),

with ``A`` the Jacobian of the forward map at ``D``. The linear system is solved per sample with
conjugate gradients; every CG iteration costs one vector-Jacobian product through the denoiser
(``dD/dx`` is applied as ``(dD/dx)^T``, which is the same for a denoiser that is the gradient of a
log-density, i.e. an exact or well-trained one). For Gaussian data and linear ``A`` the formula is
exact, so with enough CG iterations any solver driven by this denoiser samples the exact posterior.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._core import Denoiser, Tensor


class CovarianceGuidance:
    """Wrap a denoiser into the covariance-aware posterior denoiser ``E[x0 | x, y]``.

    Arguments:
        denoiser:     ``D(x, sigma) -> x0_hat`` (VE frame), differentiable in ``x``.
        forward:      ``A(x0_hat [B, ...]) -> [B, m]`` predictions of the observations; linear or
                      differentiable (it is linearised at ``x0_hat``).
        observations: ``y`` ``[B, m]`` (or ``[m]``, shared by the batch).
        noise_var:    observation noise variance, a float or ``[m]``; must be > 0 where ``sigma`` is
                      small (a zero variance makes the system singular as ``sigma -> 0``).
        cg_iters:     conjugate-gradient iterations (each one vector-Jacobian product).
        cg_tol:       relative residual at which CG stops early (per batch: when all samples reach it).
    Counters: ``calls``, ``vjp_count`` (backward passes through the denoiser).
    """

    def __init__(self, denoiser: Denoiser, forward: Callable[[Tensor], Tensor], observations: Tensor,
                 noise_var: float | Tensor, cg_iters: int = 8, cg_tol: float = 1e-6) -> None:
        noise_var = torch.as_tensor(noise_var, dtype=torch.float64)
        if (noise_var <= 0).any() or not torch.isfinite(noise_var).all():
            raise ValueError("covariance guidance needs a positive, finite observation noise variance")
        if cg_iters < 1:
            raise ValueError(f"cg_iters must be >= 1, got {cg_iters}")
        self.denoiser, self.forward = denoiser, forward
        self.observations = observations
        self.noise_var = noise_var
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        self.calls = 0
        self.vjp_count = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            denoised = self.denoiser(x_in, sigma)
            x0 = denoised.detach()
            pred, a_transpose = torch.func.vjp(self.forward, x0)
            y = self.observations.to(pred)
            residual = (y.expand_as(pred) - pred).reshape(pred.shape[0], -1)
            var = sigma.to(x0).reshape(-1, *(1,) * (x.ndim - 1)) ** 2

            def cov_at(u: Tensor) -> Tensor:
                """``V A^T u = sigma^2 (dD/dx)^T A^T u`` for ``u [B, m]``."""
                (w,) = a_transpose(u.reshape(pred.shape))
                (g,) = torch.autograd.grad(denoised, x_in, w, retain_graph=True)
                self.vjp_count += 1
                return var * g

            def a_apply(v: Tensor) -> Tensor:
                return torch.func.jvp(self.forward, (x0,), (v,))[1].reshape(pred.shape[0], -1)

            noise_var = self.noise_var.to(residual)
            solution = _batched_cg(lambda u: noise_var * u + a_apply(cov_at(u)), residual, self.cg_iters, self.cg_tol)
            correction = cov_at(solution)
        return (x0 + correction).detach()


def _batched_cg(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float) -> Tensor:
    """Solve ``M u = b`` for each row of ``b [B, m]`` (M symmetric positive definite) by CG.

    A row whose curvature ``p.Mp`` is not positive (M is not SPD there, e.g. the Jacobian of an
    imperfect network is not) stops at its current iterate instead of diverging.
    """
    tiny = torch.finfo(b.dtype).tiny
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(1, keepdim=True)
    active = rr > tol**2 * rr.clamp_min(tiny)
    stop = tol**2 * rr.clamp_min(tiny)
    for _ in range(iters):
        if not active.any():
            break
        mp = matvec(p)
        curvature = (p * mp).sum(1, keepdim=True)
        active = active & (curvature > 0) & torch.isfinite(curvature)
        alpha = torch.where(active, rr / curvature.clamp_min(tiny), torch.zeros_like(rr))
        u = u + alpha * p
        r = r - alpha * mp
        rr_new = (r * r).sum(1, keepdim=True)
        p = r + (rr_new / rr.clamp_min(tiny)) * p
        rr = rr_new
        active = active & (rr > stop)
    return u


def covariance_guidance(denoiser: Denoiser, forward: Callable[[Tensor], Tensor], observations: Tensor,
                        noise_var: float | Tensor, cg_iters: int = 8) -> CovarianceGuidance:
    """Shorthand for :class:`CovarianceGuidance`."""
    return CovarianceGuidance(denoiser, forward, observations, noise_var, cg_iters=cg_iters)

