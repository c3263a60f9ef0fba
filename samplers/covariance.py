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
        prior_var:    per-entry variance of ``x0`` for the isotropic fallback (1 for normalised data).
        max_rms:      trust region (see below); ``None`` (default) leaves corrections unbounded.
        fallback:     ``"network"`` or ``"isotropic"``: the correction where CG breaks down (below).

    A learned denoiser's Jacobian is not exactly symmetric positive semi-definite. Where it has
    negative curvature along the first CG direction (typical at large ``sigma``, where ``dD/dx`` is
    tiny and dominated by network error) the Krylov solve has nothing to stand on; that sample then
    solves the system with the isotropic Tweedie covariance ``V_iso = sigma^2 prior_var / (sigma^2 +
    prior_var) I`` (the Gaussian-prior value, as in PiGDM), which is SPD and costs no network
    evaluation, and applies the correction with
    - ``fallback="network"`` (default): the network's covariance, ``sigma^2 (dD/dx)^T A^T u_iso``
      (the same vector-Jacobian product as the other samples' correction): the direction DPS would take, with the step length of the
      isotropic solve. The Jacobian carries the cross-covariances between fields (how a sparse
      observation of ``u`` moves the coefficient ``a``) even where its curvature along the residual
      is wrong; the isotropic covariance moves only the observed entries. On the tiny Darcy prior
      (inverse task, 14 validation instances, 50 steps) this lowered the relative L2 of ``a`` from
      0.349 to 0.307 and its spread/skill ratio from 1.25 to 1.12.
    - ``fallback="isotropic"``: ``V_iso A^T u_iso`` for the correction too.
    A negative curvature met in a later iteration ends that sample's CG early (a nearly singular
    direction would otherwise produce an unbounded correction). ``fallbacks`` counts the samples
    that fell back. For an exact denoiser neither happens.

    Trust region: with ``max_rms``, a correction whose root-mean-square entry exceeds ``max_rms * sqrt(prior_var)``
    is scaled down to it (a trust region: the posterior mean cannot move further than a few prior
    standard deviations per entry; an imperfect Jacobian otherwise occasionally sends one sample
    hundreds of standard deviations away, and the ODE never recovers). ``clipped`` counts them.
    Counters: ``calls``, ``vjp_count`` (backward passes through the denoiser), ``fallbacks``, ``clipped``.
    """

    def __init__(self, denoiser: Denoiser, forward: Callable[[Tensor], Tensor], observations: Tensor,
                 noise_var: float | Tensor, cg_iters: int = 8, cg_tol: float = 1e-6,
                 prior_var: float = 1.0, max_rms: float | None = None, fallback: str = "network") -> None:
        noise_var = torch.as_tensor(noise_var, dtype=torch.float64)
        if (noise_var <= 0).any() or not torch.isfinite(noise_var).all():
            raise ValueError("covariance guidance needs a positive, finite observation noise variance")
        if cg_iters < 1:
            raise ValueError(f"cg_iters must be >= 1, got {cg_iters}")
        self.denoiser, self.forward = denoiser, forward
        self.observations = observations
        self.noise_var = noise_var
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        if not prior_var > 0:
            raise ValueError(f"prior_var must be > 0, got {prior_var}")
        self.prior_var = float(prior_var)
        if max_rms is not None and not max_rms > 0:
            raise ValueError(f"max_rms must be > 0 or None, got {max_rms}")
        self.max_rms = None if max_rms is None else float(max_rms)
        if fallback not in ("network", "isotropic"):
            raise ValueError(f"fallback must be 'network' or 'isotropic', got {fallback!r}")
        self.fallback = fallback
        self.clipped = 0
        self.calls = 0
        self.vjp_count = 0
        self.fallbacks = 0

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
            solution, broke = _batched_cg(lambda u: noise_var * u + a_apply(cov_at(u)), residual,
                                          self.cg_iters, self.cg_tol, diagonal=noise_var)
            if broke.any():
                self.fallbacks += int(broke.sum())
                iso = var * self.prior_var / (var + self.prior_var)

                def iso_cov_at(u: Tensor) -> Tensor:
                    (w,) = a_transpose(u.reshape(pred.shape))
                    return iso * w

                # SPD by construction, and it costs no network evaluation
                rows = broke.reshape(-1, 1)
                u_iso, _ = _batched_cg(lambda u: noise_var * u + a_apply(iso_cov_at(u)),
                                       torch.where(rows, residual, torch.zeros_like(residual)),
                                       max(self.cg_iters, 8), self.cg_tol)
                if self.fallback == "network":  # one vector-Jacobian product for both kinds of rows
                    correction = cov_at(torch.where(rows, u_iso, solution))
                else:
                    rows = broke.reshape(-1, *(1,) * (x0.ndim - 1))
                    correction = torch.where(rows, iso_cov_at(u_iso), cov_at(solution))
            else:
                correction = cov_at(solution)
            if self.max_rms is not None:
                rms = correction.flatten(1).pow(2).mean(1).sqrt().reshape(-1, *(1,) * (x0.ndim - 1))
                limit = self.max_rms * self.prior_var**0.5
                self.clipped += int((rms > limit).sum())
                correction = correction * (limit / rms.clamp_min(limit))
        return (x0 + correction).detach()


def _batched_cg(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float,
                diagonal: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Solve ``M u = b`` for each row of ``b [B, m]`` (M symmetric positive definite) by CG.

    ``diagonal``: a known lower bound ``M >= diag(diagonal)`` (the noise variance of ``N + A V A^T``).
    A row whose curvature ``p.Mp`` is not positive, or below ``p.diag p`` (so the ``A V A^T`` part
    is not positive semi-definite there, as for an imperfect network's Jacobian), stops at its
    current iterate instead of taking a huge step. Returns the solution and a ``[B]`` mask of the
    rows that broke down at the first iteration (still ``u = 0``).
    """
    tiny = torch.finfo(b.dtype).tiny
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(1, keepdim=True)
    active = rr > tol**2 * rr.clamp_min(tiny)
    stop = tol**2 * rr.clamp_min(tiny)
    broke = torch.zeros_like(active)
    for it in range(iters):
        if not active.any():
            break
        mp = matvec(p)
        curvature = (p * mp).sum(1, keepdim=True)
        positive = (curvature > 0) & torch.isfinite(curvature)
        if diagonal is not None:
            positive = positive & (curvature >= (p * p * diagonal).sum(1, keepdim=True))
        if it == 0:
            broke = active & ~positive
        active = active & positive
        alpha = torch.where(active, rr / curvature.clamp_min(tiny), torch.zeros_like(rr))
        u = u + alpha * p
        r = r - alpha * mp
        rr_new = (r * r).sum(1, keepdim=True)
        p = r + (rr_new / rr.clamp_min(tiny)) * p
        rr = rr_new
        active = active & (rr > stop)
    return u, broke.reshape(-1)


def covariance_guidance(denoiser: Denoiser, forward: Callable[[Tensor], Tensor], observations: Tensor,
                        noise_var: float | Tensor, cg_iters: int = 8) -> CovarianceGuidance:
    """Shorthand for :class:`CovarianceGuidance`."""
    return CovarianceGuidance(denoiser, forward, observations, noise_var, cg_iters=cg_iters)

