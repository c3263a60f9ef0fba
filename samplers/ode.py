"""Deterministic solvers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``.

All solvers share the signature ``solver(denoiser, x, sigmas, *, hooks=(), generator=None,
callback=None, stats=None, **options) -> x`` (``generator`` is ignored: nothing here draws noise).
``x`` is the state at ``sigmas[0]`` in the VE frame ``x = x0 + sigma * eps``; the grid ends in 0.

Exponential integrators (DPM-Solver++, UniPC) work in ``lambda = -log(sigma)`` with step
``h = lambda_next - lambda``; in the VE frame the exact solution over one step is
``x_next = (sigma_next / sigma) x + sum_n h^(n+1) phi_(n+1)(-h) D^(n)(lambda)`` with the
derivatives ``D^(n)`` of the denoiser along the trajectory. The step to ``sigma = 0`` is always
first order there (``x_next = D``): higher-order terms have ``h = inf``.

Hooks: every solver calls ``run.end_step`` once per step, on the state at ``sigmas[i + 1]``, and the
next step starts from what the hooks return (Heun's intermediate Euler point is not hooked; UniPC
adds its corrector to the hooked state, see :func:`unipc`). Multistep solvers keep a history of
denoised values (or derivatives) only, never of states.
"""

from __future__ import annotations

import math

import torch

from ._core import Run, register, to_d

# ---------------------------------------------------------------------------------------------
# shared helpers


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_j z^j / (j + k)!`` (``phi_0 = exp``, ``phi_(k+1)(z) = (phi_k(z) - 1/k!) / z``)."""
    if abs(z) < 0.5:
        return sum(z**j / math.factorial(j + k) for j in range(25))
    value = math.exp(z)
    for m in range(k):
        value = (value - 1.0 / math.factorial(m)) / z
    return value


def log_step(sigma: float, sigma_next: float) -> float:
    """The step ``h = lambda_next - lambda`` in ``lambda = -log(sigma)`` (needs ``sigma_next > 0``)."""
    return math.log(sigma / sigma_next)


def step_order(i: int, num_steps: int, order: int, history: int, sigma_next: float, lower_order_final: bool,
               below: float = 15) -> int:
    """Order of multistep step ``i``: warm-up from the history, lower at the end of short runs.

    The step to ``sigma = 0`` is first order. With ``lower_order_final`` and fewer than ``below``
    steps, step ``i`` uses order at most ``num_steps - i`` (diffusers: 15 for DPM-Solver, always for UniPC).
    """
    if sigma_next == 0:
        return 1
    p = min(order, history + 1)
    if lower_order_final and num_steps < below:
        p = min(p, num_steps - i)
    return p


def exp_first_order(x, denoised, sigma: float, sigma_next: float):
    """DPM-Solver++(1) = DDIM step in the VE frame: ``(sigma_next/sigma) x + (1 - sigma_next/sigma) D``."""
    ratio = sigma_next / sigma
    return ratio * x + (1.0 - ratio) * denoised


def _check_order(order: int, max_order: int) -> None:
    if order not in range(1, max_order + 1):
        raise ValueError(f"order must be an integer in 1..{max_order}, got {order!r}")


# ---------------------------------------------------------------------------------------------
# solvers


@register("euler", order=1, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def euler(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None):
    """Euler's method in sigma."""
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        x = x + (sigma_next - sigma) * to_d(x, sigma, denoised)
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("heun", order=2, nfe_per_step=2, stochastic=False)
@torch.no_grad()
def heun(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None):
    """Heun's method in sigma (EDM Algorithm 1/2 without churn); the step to 0 is an Euler step."""
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        d = to_d(x, sigma, denoised)
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:
            x = x_euler
        else:
            denoised = run.denoise(x_euler, sigma_next)
            x = x + (sigma_next - sigma) * 0.5 * (d + to_d(x_euler, sigma_next, denoised))
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("dpmpp_2m", order=2, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def dpmpp_2m(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, lower_order_final=True):
    """DPM-Solver++(2M), data prediction, midpoint form (Lu et al. 2022, Algorithm 2)."""
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    previous = None  # (denoised, lambda) of the previous grid point
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        p = step_order(i, run.num_steps, 2, previous is not None, sigma_next, lower_order_final)
        d = denoised
        if p == 2:
            r = (-math.log(sigma) - previous[1]) / log_step(sigma, sigma_next)
            d = (1 + 0.5 / r) * denoised - (0.5 / r) * previous[0]
        x = exp_first_order(x, d, sigma, sigma_next)
        previous = (denoised, -math.log(sigma))
        x = run.end_step(i, x, denoised)
    return run.finish(x)


@register("dpmpp_3m", order=3, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def dpmpp_3m(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, lower_order_final=True,
             legacy_weights=False):
    """DPM-Solver++(3M), data prediction, with divided differences in lambda.

    Uses ``D' h ~ d1`` and ``D'' h^2 / 2 ~ d2`` from the last three denoised values, so the
    update is ``x1 + h phi_2(-h) d1 + 2 h phi_3(-h) d2`` (the Taylor weights: third order).
    ``legacy_weights=True`` uses ``h phi_3(-h) d2`` as the DPM-Solver reference code, diffusers and
    k-diffusion do: only second order, though often a smaller error at 20 steps or fewer.
    """
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    history = []  # (denoised, lambda) of previous grid points, most recent last
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        p = step_order(i, run.num_steps, 3, len(history), sigma_next, lower_order_final)
        x_next = exp_first_order(x, denoised, sigma, sigma_next)
        if p >= 2:
            lam, h = -math.log(sigma), log_step(sigma, sigma_next)
            r0 = (lam - history[-1][1]) / h
            d1_0 = (denoised - history[-1][0]) / r0
            d1 = d1_0
            if p == 3:
                r1 = (history[-1][1] - history[-2][1]) / h
                d1_1 = (history[-1][0] - history[-2][0]) / r1
                d2 = (d1_0 - d1_1) / (r0 + r1)
                d1 = d1_0 + r0 * d2
                x_next = x_next + (1 if legacy_weights else 2) * h * phi(3, -h) * d2
            x_next = x_next + h * phi(2, -h) * d1
        x = run.end_step(i, x_next, denoised)
        history = (history + [(denoised, -math.log(sigma))])[-2:]
    return run.finish(x)


def _unipc_rhos(rks: list[float], h: float, n: int, official: bool = True) -> list[float]:
    """Solve ``sum_k rho_k r_k^(m-1) = m! phi_(m+1)(-h) / phi_1(-h)`` for m = 1..n (B(h) = bh2).

    ``official``: a single coefficient is 1/2, as in the UniPC reference implementation (its UniP-2
    is then DPM-Solver++(2M) and its UniC-1 the trapezoidal corrector); the solve gives
    ``2 phi_2(-h) / phi_1(-h) = 1/2 + O(h)``, the same order.
    """
    if n == 0:
        return []
    if n == 1 and official:
        return [0.5]
    R = torch.tensor([[r ** (m - 1) for r in rks[:n]] for m in range(1, n + 1)], dtype=torch.float64)
    b = torch.tensor([math.factorial(m) * phi(m + 1, -h) / phi(1, -h) for m in range(1, n + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, b).tolist()


@register("unipc", order=3, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def unipc(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, order=2, corrector=True,
          lower_order_final=True, solve_rhos=False):
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor with the UniC corrector, B(h) = bh2, data prediction.

    One step ``i`` (from ``sigmas[i]`` to ``sigmas[i+1]``) runs, in this order:
    the predictor from the current state; ``run.end_step`` (NaN check, step-end hooks, callback) on the
    predicted state; if ``sigmas[i+1] > 0``, the denoiser at the *hooked* state, then the corrector adds
    ``B(h) (UniC terms - UniP terms)`` to the hooked state. That value (equal to the standard UniC result
    when hooks are the identity) is the state step ``i+1`` starts from, and the denoiser value at the hooked
    state is reused there (one network evaluation per step). No corrector follows the step to 0.
    Convergence order: ``order`` without the corrector, ``order + 1`` with it. Single coefficients are
    the reference implementation's 1/2 (``solve_rhos=True`` solves for them instead).
    """
    _check_order(order, 3)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    history = []  # (denoised, lambda) of previous grid points, most recent last
    denoised = None  # D at the state the step starts from (at its hooked predictor for i > 0)
    for i, sigma, sigma_next in run.steps():
        if denoised is None:
            denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            return run.finish(run.end_step(i, denoised, denoised))  # first order to 0: x = D
        p = step_order(i, run.num_steps, order, len(history), sigma_next, lower_order_final, below=math.inf)
        lam, h = -math.log(sigma), log_step(sigma, sigma_next)
        previous = history[::-1][: p - 1]  # most recent first
        rks = [(lam_k - lam) / h for _, lam_k in previous]
        diffs = [(d_k - denoised) / r for (d_k, _), r in zip(previous, rks)]
        b_h = -math.expm1(-h)
        rhos_p = _unipc_rhos(rks, h, p - 1, not solve_rhos)
        x_pred = exp_first_order(x, denoised, sigma, sigma_next) + b_h * sum(r * d for r, d in zip(rhos_p, diffs))
        x = run.end_step(i, x_pred, denoised)
        history = (history + [(denoised, lam)])[-2:]
        denoised_next = run.denoise(x, sigma_next)
        if corrector:  # UniC-p minus UniP-p on the common differences, plus the new point at r = 1
            rhos_c = _unipc_rhos(rks + [1.0], h, p, not solve_rhos)
            diffs.append(denoised_next - denoised)
            x = x + b_h * sum((rc - rp) * d for rc, rp, d in zip(rhos_c, rhos_p + [0.0], diffs))
        denoised = denoised_next
    return run.finish(x)


def _adams_bashforth(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights ``w_j = int_a^b l_j(s) ds`` of the Lagrange basis on ``nodes`` (exact polynomial integral)."""
    weights = []
    for j, s_j in enumerate(nodes):
        coeffs = [1.0]  # polynomial coefficients, lowest degree first
        for m, s_m in enumerate(nodes):
            if m != j:
                c = 1.0 / (s_j - s_m)
                coeffs = [c * (lo - s_m * hi) for lo, hi in zip([0.0] + coeffs, coeffs + [0.0])]
        weights.append(sum(c * (b ** (k + 1) - a ** (k + 1)) / (k + 1) for k, c in enumerate(coeffs)))
    return weights


_IPNDM_FIXED = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@register("ipndm", order=4, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def ipndm(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, order=4, variable_step=True):
    """Improved PNDM (Zhang & Chen 2023): Adams-Bashforth in sigma on ``d = (x - D) / sigma``.

    The first steps use lower orders. ``variable_step=True`` integrates the Lagrange interpolant
    of the stored derivatives exactly on the actual (non-uniform) grid, which keeps the nominal
    order on any smooth grid; ``False`` uses the classic constant-step coefficients of iPNDM.
    """
    _check_order(order, 4)
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    ds = []  # derivatives at previous grid points, most recent first
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        ds = [to_d(x, sigma, denoised)] + ds[: order - 1]
        if variable_step:
            weights = _adams_bashforth(run.sigmas[i - len(ds) + 1 : i + 1].flip(0).tolist(), sigma, sigma_next)
        else:
            weights = [(sigma_next - sigma) * w for w in _IPNDM_FIXED[len(ds)]]
        x = x + sum(w * d for w, d in zip(weights, ds))
        x = run.end_step(i, x, denoised)
    return run.finish(x)
