"""Sigma grids for the VE frame ``x = x0 + sigma * eps``.

Every function returns a float64 CPU tensor of length ``steps + 1``: ``steps`` strictly decreasing
positive noise levels from the largest to the smallest, then a final 0.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ._core import check_sigmas

Tensor = torch.Tensor


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
    """Song et al. VP-SDE sigmas on a time grid uniform from t=1 to t=eps_s, then 0.

    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` with ``beta_d = beta_max - beta_min``.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < eps_s < 1:
        raise ValueError(f"eps_s must lie in (0, 1), got {eps_s}")
    t = 1.0 + _ramp(steps) * (eps_s - 1.0)
    return _append_zero(torch.sqrt(torch.expm1(0.5 * (beta_max - beta_min) * t**2 + beta_min * t)))


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
