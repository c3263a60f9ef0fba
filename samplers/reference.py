"""An adaptive high-accuracy solution of the probability-flow ODE, the yardstick for the fast solvers.

The ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` is integrated in ``t = log(sigma)``, where it reads
``dx/dt = x - D(x, e^t)``. In ``t`` the right-hand side stays O(|x - D|) at every noise level, and the
interval from ``sigma_max`` to ``sigma_min`` has length ``log(sigma_max / sigma_min)`` instead of
forcing tiny steps near small sigma: the adaptive controller of DOP853 sees a smooth, well-scaled
problem. The final jump from ``sigma_min`` to 0 is ``x = D(x, sigma_min)``, exactly what every solver's
last step (Euler / first-order exponential step to 0) does, so a comparison on the same grid measures
the integration error of ``sigma_max -> sigma_min`` only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ._core import Denoiser, check_finite, check_sigmas


@torch.no_grad()
def reference(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, *, rtol: float = 1e-8,
              atol: float = 1e-8, denoise_final: bool = True, stats: dict | None = None) -> torch.Tensor:
    """Solve the probability-flow ODE with scipy's DOP853 in float64.

    Arguments:
        denoiser:      ``D(x, sigma) -> x0_hat`` in the VE frame, ``sigma`` of shape ``[B]``.
        x:             the state at ``sigma_max``, shape ``[B, ...]``; the batch is integrated jointly.
        sigmas:        either a solver grid (strictly decreasing, ending in 0): ``sigma_max = sigmas[0]`` and
                       ``sigma_min`` its smallest positive entry; or a pair ``(sigma_max, sigma_min)``.
        rtol, atol:    tolerances of the adaptive integrator (on the flattened state).
        denoise_final: if True (default) return ``D(x(sigma_min), sigma_min)``, the state at sigma = 0;
                       if False return ``x(sigma_min)``.
        stats:         a dict that receives ``nfe`` (denoiser calls) and the scipy ``status``.

    Returns a tensor shaped and typed like ``x``.
    """
    from scipy.integrate import solve_ivp

    values = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if values.numel() == 2 and values[1] > 0:
        sigma_max, sigma_min = values.tolist()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got ({sigma_max}, {sigma_min})")
    else:
        grid = check_sigmas(values)
        if grid.numel() < 3:
            raise ValueError("a grid with one step has no positive sigma_min; pass (sigma_max, sigma_min)")
        sigma_max, sigma_min = float(grid[0]), float(grid[-2])
    check_finite(x, "the initial state")
    shape, batch, nfe = x.shape, x.shape[0], 0

    def denoise(y, sigma: float) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        out = denoiser(y, torch.full((batch,), sigma, dtype=y.dtype, device=y.device))
        check_finite(out, f"the denoiser output at sigma={sigma:g}")
        return out.to(torch.float64)

    def rhs(t: float, y):
        state = torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=torch.float64)
        return (state - denoise(state.to(x.dtype), math.exp(t))).reshape(-1).cpu().numpy()

    y0 = x.detach().to(torch.float64).reshape(-1).cpu().numpy()
    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference integration failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=x.device, dtype=x.dtype)
    if denoise_final:
        out = denoise(out, sigma_min).to(x.dtype)
    if stats is not None:
        stats["nfe"] = nfe
        stats["status"] = sol.status
    return out
