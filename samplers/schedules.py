"""Sigma grids for the VE frame ``x = x0 + sigma * eps``, and the noise processes' times as sigmas.

Every grid function returns a float64 CPU tensor of length ``steps + 1``: ``steps`` strictly
decreasing positive noise levels from the largest to the smallest, then a final 0.

The maps between the VE noise level ``sigma`` and the time of the other noise processes are written
here once and used by the adapters (:mod:`samplers.denoisers`), the preconditioners and the losses:

* VP-SDE with linear ``beta(t) = beta_min + beta_d t`` (Song et al.): :func:`vp_sigma`, :func:`vp_time`;
* flow matching / rectified flow ``x_t = (1 - t) x0 + t eps``: :func:`flow_frame` (``t = sigma / (1 + sigma)``,
  ``x_t = x / (1 + sigma)`` for the VE state ``x = x0 + sigma eps``) and its inverse :func:`flow_sigma`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ._core import check_sigmas

Tensor = torch.Tensor


def vp_sigma(t: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """VP-SDE noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (float64 for a float ``t``)."""
    t = t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_time(sigma: Tensor | float, beta_d: float = 19.9, beta_min: float = 0.1) -> Tensor:
    """Inverse of :func:`vp_sigma`: ``t = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d``.

    ``beta_d = 0`` (constant beta) gives ``t = ln(1 + sigma^2) / beta_min``.
    """
    sigma = sigma if isinstance(sigma, Tensor) else torch.tensor(sigma, dtype=torch.float64)
    gap = torch.log1p(sigma**2)  # = beta_d t^2 / 2 + beta_min t
    if beta_d == 0:
        return gap / beta_min
    return (torch.sqrt(beta_min**2 + 2 * beta_d * gap) - beta_min) / beta_d


def flow_frame(sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """The flow-matching frame of the VE noise level ``sigma``: ``(scale, t)``.

    ``scale = 1 / (1 + sigma)`` turns the VE state into the flow state, ``x_t = scale * x``, and
    ``t = sigma / (1 + sigma)`` is the flow time (so ``scale = 1 - t``, computed without cancellation).
    """
    sigma = sigma if isinstance(sigma, Tensor) else torch.tensor(sigma, dtype=torch.float64)
    scale = 1 / (1 + sigma)
    return scale, sigma * scale


def flow_sigma(t: Tensor | float) -> Tensor:
    """Inverse of the flow time of :func:`flow_frame`: ``sigma = t / (1 - t)``."""
    t = t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)
    return t / (1 - t)


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(sigmas: Tensor) -> Tensor:
    return check_sigmas(torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)]))


def _ramp(steps: int) -> Tensor:
    """``steps`` points from 0 to 1 (just ``[0]`` for one step)."""
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): uniform in ``sigma ** (1 / rho)`` from sigma_max to sigma_min, then 0."""
    _check_range(steps, sigma_min, sigma_max)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + _ramp(steps) * (lo - hi)) ** rho)


def loglinear(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in ``log sigma`` (uniform log-SNR) from sigma_max to sigma_min, then 0."""
    _check_range(steps, sigma_min, sigma_max)
    return _append_zero(torch.exp(math.log(sigma_max) + _ramp(steps) * math.log(sigma_min / sigma_max)))


def polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """``log sigma`` follows ``(1 - u) ** rho`` for uniform ``u``; ``rho = 1`` is :func:`loglinear`."""
    _check_range(steps, sigma_min, sigma_max)
    ramp = (1.0 - _ramp(steps)) ** rho
    return _append_zero(torch.exp(math.log(sigma_min) + ramp * math.log(sigma_max / sigma_min)))


def vp(steps: int, beta_min: float = 0.1, beta_max: float = 20.0, eps_s: float = 1e-3) -> Tensor:
    """Song et al. VP-SDE sigmas (:func:`vp_sigma`, ``beta_d = beta_max - beta_min``) on a time grid
    uniform from t=1 to t=eps_s, then 0."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < eps_s < 1:
        raise ValueError(f"eps_s must lie in (0, 1), got {eps_s}")
    t = 1.0 + _ramp(steps) * (eps_s - 1.0)
    return _append_zero(vp_sigma(t, beta_max - beta_min, beta_min))


def custom(sigmas: Sequence[float] | Tensor) -> Tensor:
    """A user-supplied grid, validated (strictly decreasing, non-negative, ending in 0) as float64."""
    return check_sigmas(sigmas)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "loglinear": loglinear,
    "polyexponential": polyexponential,
    "vp": vp,
}


def get_schedule(name: str, steps: int, **kwargs) -> Tensor:
    """Build the grid ``name`` (one of :data:`SCHEDULES`) with ``steps`` steps."""
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown schedule {name!r}; known schedules: {', '.join(sorted(SCHEDULES))}") from None
    return fn(steps, **kwargs)
