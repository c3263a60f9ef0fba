"""ER-SDE solvers (Cui et al., "Elucidating the solution space of extended reverse-time SDE for diffusion models").

Frame: variance exploding, ``x = x0 + sigma * eps``, denoiser ``D(x, sigma) -> x0_hat``. The extended reverse-time
SDE ``dx = -(1 + eta(sigma)^2) sigma score dsigma + eta(sigma) sqrt(2 sigma |dsigma|) dW`` has, for every noise
level function ``eta``, the marginals of the forward process; ``eta = 0`` is the probability-flow ODE and
``eta = 1`` the reverse-time SDE (of the VE and, after the change of frame, the VP process alike). The paper
parameterises ``eta`` by a *noise-scale function* ``phi`` with ``sigma phi'(sigma) / phi(sigma) = 1 + eta^2``.
Its exact solution from ``sigma_s`` to ``sigma_t < sigma_s`` is, with ``r = phi(sigma_t) / phi(sigma_s)``,

    x_t = r x_s + phi(sigma_t) int_{sigma_t}^{sigma_s} phi'(sigma) / phi(sigma)^2 D(x_sigma, sigma) dsigma
          + sqrt(sigma_t^2 - r^2 sigma_s^2) z.

A Taylor expansion of ``D`` in ``sigma`` about ``sigma_s`` and integration by parts give the solver's update

    x_t = r x_s + (1 - r) D + c_1 D' + c_2 D'' + sqrt(sigma_t^2 - r^2 sigma_s^2) z,
    c_1 = (sigma_t - sigma_s) + int_{sigma_t}^{sigma_s} phi(sigma_t) / phi(sigma) dsigma,
    c_2 = (sigma_t - sigma_s)^2 / 2 + int_{sigma_t}^{sigma_s} (sigma - sigma_s) phi(sigma_t) / phi(sigma) dsigma,

with ``D' = dD/dsigma`` and ``D''`` from divided differences of the last denoiser outputs (multistep; one network
evaluation per step). The integrals are computed by Gauss-Legendre quadrature in ``log(sigma)`` (64 nodes, float64),
where the integrands of the paper's functions are smooth and of moderate dynamic range.

A noise-scale function is admissible when ``phi(sigma) / sigma`` does not decrease (``eta^2 >= 0``): then the
noise variance of every step is ``>= 0``. The step to ``sigma = 0`` returns the denoiser output (``r = 0`` for all
the functions below; higher-order terms are dropped there, as in every solver of this package).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._core import Run, Tensor, randn_like, register
from .ode import step_order
from .sde import check_nonnegative

NoiseScale = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------
# noise-scale functions phi(sigma) (the paper's special cases; the names of the authors' code)


def ode(sigma: Tensor) -> Tensor:
    """``phi = sigma``: eta = 0, the probability-flow ODE (deterministic)."""
    return sigma


def sde(sigma: Tensor) -> Tensor:
    """``phi = sigma^2``: eta = 1, the reverse-time SDE of the VE (and VP) process."""
    return sigma**2


def er_sde_1(sigma: Tensor) -> Tensor:
    """``phi = sigma (exp(-1 / sigma) + 10)``."""
    return sigma * (torch.exp(-1.0 / sigma) + 10.0)


def er_sde_2(sigma: Tensor) -> Tensor:
    """``phi = sigma^1.5`` (eta^2 = 1/2)."""
    return sigma**1.5


def er_sde_3(sigma: Tensor) -> Tensor:
    """``phi = sigma^2.5`` (eta^2 = 3/2)."""
    return sigma**2.5


def er_sde_4(sigma: Tensor) -> Tensor:
    """``phi = sigma^0.9 log10(1 + 100 sigma^1.5)`` (admissible for sigma below about 1000)."""
    return sigma**0.9 * torch.log10(1.0 + 100.0 * sigma**1.5)


def er_sde_5(sigma: Tensor) -> Tensor:
    """``phi = sigma (exp(sigma^0.3) + 10)``: the authors' default (near the ODE at small sigma)."""
    return sigma * (torch.exp(sigma**0.3) + 10.0)


NOISE_SCALES: dict[str, NoiseScale] = {
    "ode": ode, "sde": sde, "ve_sde": sde, "vp_sde": sde,
    "er_sde_1": er_sde_1, "er_sde_2": er_sde_2, "er_sde_3": er_sde_3, "er_sde_4": er_sde_4, "er_sde_5": er_sde_5,
}


def _name(phi: NoiseScale) -> str:
    return getattr(phi, "__name__", None) or repr(phi)


def noise_scale_function(noise_scale: str | NoiseScale) -> NoiseScale:
    """Resolve a noise-scale function: a name in ``NOISE_SCALES`` or a callable ``phi(sigma) -> Tensor`` (elementwise
    on a float64 tensor of positive sigmas)."""
    if callable(noise_scale):
        return noise_scale
    if isinstance(noise_scale, str) and noise_scale in NOISE_SCALES:
        return NOISE_SCALES[noise_scale]
    raise ValueError(f"noise_scale must be a callable phi(sigma) or one of {sorted(NOISE_SCALES)}, got {noise_scale!r}")


# ---------------------------------------------------------------------------------------------
# step coefficients


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on [-1, 1] (Golub-Welsch, float64)."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k**2 - 1)
    nodes, vectors = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return nodes, 2 * vectors[0] ** 2


_NODES, _WEIGHTS = gauss_legendre(64)


@dataclass(frozen=True)
class StepCoefficients:
    """Coefficients of one ER-SDE step ``sigma -> sigma_next > 0`` (see the module docstring)."""

    ratio: float    # r = phi(sigma_next) / phi(sigma), the weight of x
    first: float    # c_1, the weight of dD/dsigma
    second: float   # c_2, the weight of d^2D/dsigma^2
    noise: float    # std of the injected noise, sqrt(sigma_next^2 - r^2 sigma^2)


def step_coefficients(phi: NoiseScale, sigma: float, sigma_next: float) -> StepCoefficients:
    """The ER-SDE step coefficients from ``sigma`` to ``0 < sigma_next < sigma`` in float64.

    Raises a ValueError when ``phi`` is not positive and finite there, or breaks admissibility
    (``phi(sigma) / sigma`` decreasing), which would make the noise variance negative.
    """
    if not 0 < sigma_next < sigma:
        raise ValueError(f"an ER-SDE step needs 0 < sigma_next < sigma, got {sigma_next!r} and {sigma!r}")
    lo, hi = math.log(sigma_next), math.log(sigma)
    s = torch.exp(0.5 * (hi - lo) * _NODES + 0.5 * (hi + lo))               # nodes in sigma
    ends = torch.tensor([sigma_next, sigma], dtype=torch.float64)
    values = torch.as_tensor(phi(torch.cat([ends, s])), dtype=torch.float64)
    if values.shape != (s.numel() + 2,) or not (torch.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"noise_scale {_name(phi)} must return positive finite values elementwise on "
                         f"sigma in [{sigma_next:g}, {sigma:g}]")
    phi_next, phi_here, phi_s = values[0].item(), values[1].item(), values[2:]
    # int_{sigma_next}^{sigma} g(u) du = int g(e^v) e^v dv
    w = 0.5 * (hi - lo) * _WEIGHTS * s * (phi_next / phi_s)
    ratio = phi_next / phi_here
    first = (sigma_next - sigma) + float(w.sum())
    second = 0.5 * (sigma_next - sigma) ** 2 + float((w * (s - sigma)).sum())
    variance = sigma_next**2 - (ratio * sigma) ** 2
    if variance < -1e-9 * sigma_next**2:
        raise ValueError(f"noise_scale {_name(phi)} is not admissible: phi(sigma) / sigma decreases between "
                         f"sigma={sigma_next:g} and sigma={sigma:g} (the noise variance would be negative)")
    noise = math.sqrt(variance) if variance > 1e-12 * sigma_next**2 else 0.0   # roundoff of the ODE member is 0
    return StepCoefficients(ratio, first, second, noise)


def sigma_derivatives(history: Sequence[tuple[float, Tensor]], sigma: float, denoised: Tensor,
                      order: int) -> tuple[Tensor, Tensor | None]:
    """``dD/dsigma`` and (order 3) ``d^2D/dsigma^2`` at ``sigma`` from the interpolant of the last denoiser outputs.

    ``history`` holds ``(sigma_k, D_k)`` of previous grid points, most recent last. Order 2 uses the backward
    difference; order 3 the derivatives of the quadratic through three points (exact for quadratics on any grid).
    """
    sigma_1, denoised_1 = history[-1]
    f01 = (denoised - denoised_1) / (sigma - sigma_1)
    if order == 2:
        return f01, None
    sigma_2, denoised_2 = history[-2]
    f012 = (f01 - (denoised_1 - denoised_2) / (sigma_1 - sigma_2)) / (sigma - sigma_2)
    return f01 + (sigma - sigma_1) * f012, 2 * f012


# ---------------------------------------------------------------------------------------------
# solver


@register("er_sde", order=3, nfe_per_step=1, stochastic=True)
@torch.no_grad()
def er_sde(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, order: int = 3,
           noise_scale: str | NoiseScale = "er_sde_5", s_noise: float = 1.0, lower_order_final: bool = False) -> Tensor:
    """ER-SDE-Solver-``order`` (Cui et al.): Taylor steps in sigma of the extended reverse-time SDE, 1 NFE per step.

    Options:
        order:             1, 2 or 3; the first steps warm up with lower orders (multistep history of D).
        noise_scale:       a name in ``NOISE_SCALES`` ("ode", "sde", "er_sde_1".."er_sde_5"; default "er_sde_5",
                           the authors') or a callable ``phi(sigma)``; "ode" is deterministic and draws no noise.
        s_noise:           multiplier of the injected noise.
        lower_order_final: with fewer than 15 steps, step ``i`` uses order at most ``num_steps - i``.
    For ``noise_scale="ode"`` the solver converges at ``order`` (the third order uses the derivatives of the
    quadratic interpolant; the authors' code takes the backward difference for ``D'`` there, second order).
    History holds denoiser outputs only, each evaluated at the state the hooks returned.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    check_nonnegative(s_noise=s_noise)
    phi = noise_scale_function(noise_scale)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    history: list[tuple[float, Tensor]] = []  # (sigma, D) of previous grid points, most recent last
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            c = step_coefficients(phi, sigma, sigma_next)
            x = c.ratio * x + (1 - c.ratio) * denoised
            p = step_order(i, run.num_steps, order, len(history), sigma_next, lower_order_final)
            if p >= 2:
                d1, d2 = sigma_derivatives(history, sigma, denoised, p)
                x = x + c.first * d1 + (c.second * d2 if d2 is not None else 0)
            if c.noise > 0 and s_noise > 0:
                x = x + (s_noise * c.noise) * randn_like(x, generator)
        history = (history + [(sigma, denoised)])[-2:]
        x = run.end_step(i, x, denoised)
    return run.finish(x)
