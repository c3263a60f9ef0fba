"""Optimised sigma grids by dynamic programming over a fine reference trajectory (the GITS idea).

Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling" (2024), observe that
probability-flow trajectories of a trained model are very regular, so the error a solver makes on
one step, measured from a reference state, is a good proxy for its contribution to the final error,
and a good grid for a few calibration samples is good for fresh ones. Here:

1. ``x`` (a small batch of initial states at ``sigma_max``) is integrated accurately through the
   candidate noise levels ``c_0 = sigma_max > c_1 > ... > c_{N-1} = sigma_min > c_N = 0`` by one
   adaptive DOP853 run in ``log(sigma)`` with dense output at the candidates (as
   :func:`samplers.reference.reference` integrates); the state at 0 is ``D`` after continuing to
   ``sigma_min / 1000``, i.e. the ODE's end point.
2. The local error of a step ``c_i -> c_j`` is ``||x_hat_j - x_ref(c_j)||`` per sample, ``x_hat_j`` one
   step of the solver from the reference state ``x_ref(c_i)``. For the two-step DPM-Solver++(2M) the
   step also depends on the previous node ``c_k`` (its denoised value is the reference
   ``D(x_ref(c_k), c_k)``), so the error is indexed ``(k, i, j)``.
3. Dynamic programming finds the path ``0 -> N`` with exactly the number of steps the NFE budget
   allows that minimises the summed mean-over-batch step costs.
4. Local errors made at large sigma shrink on the way to 0 (the flow contracts), so the cost is also
   tried with each error weighted by the estimated growth factor of an error made at its landing
   node (:func:`amplification`, power 0.5 and 1); the grid with the smallest actual final error of
   the solver on the calibration batch is returned (plain GITS cost when ``propagate=False``).

Cost: one reference integration of the batch (a few hundred denoiser calls), ``2N`` denoiser calls for
the reference denoised values and the growth factors (``N^2 / 2`` more, batched by ``N``, for Heun's
second stage), ``O(N^2 d B)`` (Euler, DDIM, Heun) or ``O(N^3 d B)`` (2M) arithmetic, an
``O(steps N^2)`` or ``O(steps N^3)`` DP per weighting, and three solver runs on the batch. With
``N = 48`` candidates and ``d = 64`` this is about a second on one core; :func:`calibrate` returns
the part that does not depend on the budget or the solver, to reuse explicitly. Nothing is cached
between calls.

Assumptions: the calibration batch is representative (same denoiser and conditioning, same
``sigma_max``); summed (weighted) local errors rank grids like the global error does, which holds
for regular trajectories and breaks down near decision boundaries of multimodal data, where a tiny
error switches the mode (this is why the final choice is made on measured final errors); every
solver's last step to 0 is first order (true for all of ours); the result is a subsequence of the
candidates, so it can be no finer than they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ._core import SOLVERS, Denoiser, Tensor, check_finite, check_sigmas, get_solver
from .schedules import loglinear

__all__ = ["optimized_sigmas", "calibrate", "Calibration", "reference_trajectory", "amplification", "local_errors", "COST_MODELS"]

# which one-step error model stands in for each solver, and how many steps an NFE budget buys
COST_MODELS = {"euler": "euler", "ddim": "ddim", "dpmpp_2m": "dpmpp_2m", "heun": "heun",
               "dpmpp_3m": "dpmpp_2m", "unipc": "dpmpp_2m", "ipndm": "euler"}


def _sigma_batch(x: Tensor, sigma: float) -> Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def reference_trajectory(denoiser: Denoiser, x: Tensor, candidates: Tensor, *, rtol: float = 1e-7,
                         atol: float = 1e-7) -> Tensor:
    """Reference states ``[N + 1, B, ...]`` (float64) at each candidate level; the last one is at 0.

    One adaptive DOP853 integration in ``t = log(sigma)`` (as :func:`samplers.reference.reference`)
    with dense output at the candidates; the state at 0 is ``D`` after continuing to
    ``sigma_min / 1000``, so it is the ODE's end point, not just ``D(x(sigma_min), sigma_min)``.
    """
    from scipy.integrate import solve_ivp

    shape = x.shape
    c = candidates.tolist()
    s_end = c[-2] * 1e-3

    def rhs(t: float, y):
        state = torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=torch.float64)
        out = denoiser(state.to(x.dtype), _sigma_batch(x, math.exp(t))).to(torch.float64)
        return (state - out).reshape(-1).cpu().numpy()

    times = [math.log(s) for s in c[:-1]] + [math.log(s_end)]
    y0 = x.detach().to(torch.float64).reshape(-1).cpu().numpy()
    sol = solve_ivp(rhs, (times[0], times[-1]), y0, method="DOP853", t_eval=times, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference integration failed: {sol.message}")
    states = torch.from_numpy(sol.y.T.copy()).reshape(len(times), *shape)
    last = states[-1].to(device=x.device, dtype=x.dtype)
    states[-1] = denoiser(last, _sigma_batch(last, s_end)).to(torch.float64).cpu()
    check_finite(states, "the reference trajectory")
    return states.to(x.device)


def amplification(denoiser: Denoiser, traj: Tensor, candidates: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Estimated growth ``[N + 1, B]`` of a small state error made at each candidate level until sigma = 0.

    Linearising the ODE, a perturbation ``delta`` obeys ``d delta / d log(sigma) = (I - J) delta``
    with ``J = dD/dx``, so its size changes by ``exp(-int_0^sigma (1 - rho) dlog(sigma))`` on the way
    down, ``rho = u^T J u / |u|^2`` for a typical direction ``u``. ``rho`` is estimated per sample by a
    one-probe finite difference of the denoiser (one extra call per candidate), the integral by the
    trapezoid rule in ``log(sigma)``, below ``sigma_min`` as for Gaussian data with the same ``rho``
    (``1 - rho = sigma^2 / (lam + sigma^2)``, giving ``-log(rho_min) / 2``). For Gaussian data with
    covariance ``lam I`` the factor is exactly ``sqrt(lam / (lam + sigma^2))``.
    """
    n1, batch = traj.shape[0], traj.shape[1]
    c = candidates.tolist()
    one_minus_rho = []
    for i in range(n1 - 1):
        x = traj[i]
        u = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.float64).to(x.device) * 2 - 1
        eps = 1e-4 * c[i] if x.dtype == torch.float64 else 1e-2 * c[i]
        sig = _sigma_batch(x, c[i])
        jvp = (denoiser(x + eps * u, sig).to(torch.float64) - denoiser(x, sig).to(torch.float64)) / eps
        rho = (u * jvp).reshape(batch, -1).sum(-1) / u[0].numel()
        one_minus_rho.append((1 - rho).clamp(0.0, 1.0))
    g = torch.stack(one_minus_rho)                                    # [N, B]
    log_s = torch.log(candidates[:-1]).reshape(-1, 1)
    tail = -0.5 * torch.log((1 - g[-1]).clamp_min(1e-12))           # int_0^sigma_min as for a Gaussian
    pieces = 0.5 * (g[:-1] + g[1:]) * (log_s[:-1] - log_s[1:])       # [N-1, B]
    integral = torch.cat([torch.flip(torch.cumsum(torch.flip(pieces, [0]), 0), [0]), torch.zeros(1, batch, dtype=g.dtype)])
    return torch.cat([torch.exp(-(integral + tail)), torch.ones(1, batch, dtype=g.dtype)])


def local_errors(denoiser: Denoiser, traj: Tensor, candidates: Tensor, model: str) -> Tensor:
    """Per-sample errors of one solver step from the reference states.

    Returns ``[N+1, N+1, B]`` (``[i, j, b]``: step ``c_i -> c_j``) for the one-step models ``euler``,
    ``ddim``, ``heun``, and ``[N+1, N+1, N+1, B]`` (``[k, i, j, b]``, previous node ``k``) for
    ``dpmpp_2m``, whose first step (no history) is stored at ``k = i = 0``. Entries that are not a
    forward step are ``inf``.
    """
    n1, batch = traj.shape[0], traj.shape[1]
    x = traj.reshape(n1, batch, -1)                                   # [N+1, B, d]
    c = candidates.tolist()
    den = torch.stack([denoiser(traj[i], _sigma_batch(traj[i], c[i])).to(torch.float64).reshape(batch, -1)
                       for i in range(n1 - 1)])                       # [N, B, d] reference D at c_0..c_{N-1}
    errors = torch.full((n1, n1, batch), math.inf, dtype=torch.float64)
    errors2 = torch.full((n1, n1, n1, batch), math.inf, dtype=torch.float64) if model == "dpmpp_2m" else None
    lam = [-math.log(s) if s > 0 else math.inf for s in c]
    for i in range(n1 - 1):
        s_i = c[i]
        s_j = candidates[i + 1:].to(torch.float64).reshape(-1, 1, 1)  # [M, 1, 1]
        ratio = s_j / s_i
        if model == "euler":
            pred = x[i] + (s_j - s_i) * (x[i] - den[i]) / s_i
        elif model in ("ddim", "dpmpp_2m"):
            pred = ratio * x[i] + (1 - ratio) * den[i]
        elif model == "heun":
            d_i = (x[i] - den[i]) / s_i
            pred = x[i] + (s_j - s_i) * d_i                         # Euler predictor [M, B, d]
            m = pred.shape[0] - 1                                    # all but the step to 0 get the corrector
            if m > 0:
                flat = pred[:m].reshape(m * batch, *traj.shape[2:]).to(traj.dtype)
                sig = s_j[:m].reshape(m, 1).expand(m, batch).reshape(-1).to(traj.dtype)
                d_j = (pred[:m] - denoiser(flat, sig).to(torch.float64).reshape(m, batch, -1)) / s_j[:m]
                pred = torch.cat([x[i] + (s_j[:m] - s_i) * 0.5 * (d_i + d_j), pred[m:]])
        else:
            raise ValueError(f"unknown step model {model!r}; known: euler, ddim, heun, dpmpp_2m")
        err = pred - x[i + 1:]                                       # [M, B, d]
        errors[i, i + 1:] = err.norm(dim=-1)
        if errors2 is not None and i > 0:
            # 2M adds c (D_i - D_k), c = (1 - s_j/s_i) h / (2 h_prev), h = lam_j - lam_i, h_prev = lam_i - lam_k
            m = n1 - 2 - i                                           # landing nodes j with s_j > 0
            h = torch.tensor(lam[i + 1: n1 - 1], dtype=torch.float64) - lam[i]            # [m]
            h_prev = lam[i] - torch.tensor(lam[:i], dtype=torch.float64)                  # [i]
            coef = ((1 - ratio[:m].reshape(-1, 1)) * h.reshape(-1, 1) / (2 * h_prev))[..., None]  # [m, i, 1]
            delta = den[i] - den[:i]                                                      # [i, B, d]
            e = err[:m]                                                                   # [m, B, d]
            sq = ((e * e).sum(-1)[:, None] + 2 * coef * torch.einsum("jbd,kbd->jkb", e, delta)
                  + coef**2 * (delta * delta).sum(-1)[None])                              # [m, i, B]
            errors2[:i, i, i + 1: n1 - 1] = sq.clamp_min(0).sqrt().permute(1, 0, 2)
            errors2[:i, i, n1 - 1] = errors[i, n1 - 1]               # the step to 0 is first order
    if errors2 is not None:
        errors2[0, 0, 1:] = errors[0, 1:]                            # first step: no history
        return errors2
    return errors


def _shortest_path(cost: Tensor, steps: int) -> list[int]:
    """Node sequence ``0 -> N`` with exactly ``steps`` edges minimising the summed ``cost[i, j]``."""
    n1 = cost.shape[0]
    idx = torch.arange(n1)
    cost = cost.masked_fill(idx[:, None] >= idx[None, :], math.inf)  # only forward steps
    best = torch.full((n1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    parents = []
    for _ in range(steps):
        total = best[:, None] + cost                                  # [i, j]
        best, arg = total.min(dim=0)
        parents.append(arg)
    return _backtrack(parents, n1 - 1, best[n1 - 1])


def _backtrack(parents: list[Tensor], node: int, value: Tensor) -> list[int]:
    if not math.isfinite(float(value)):
        raise ValueError("no path with this many steps through the candidate grid; use more candidates")
    path = [node]
    for arg in reversed(parents):
        node = int(arg[node])
        path.append(node)
    return path[::-1]


def _shortest_path_2m(cost2: Tensor, steps: int) -> list[int]:
    """Like :func:`_shortest_path` with edge costs ``cost2[k, i, j]`` depending on the previous node ``k``.

    The state is the last edge ``(k, i)``; the first edge is stored as ``(0, j)`` and continued with
    ``cost2[0, j, l]`` (its history is node 0), and ``cost2[0, 0, j]`` holds the first-order first step.
    """
    n1 = cost2.shape[0]
    idx = torch.arange(n1)
    first = cost2[0, 0].masked_fill(idx == 0, math.inf)
    cost2 = cost2.masked_fill(~((idx[:, None, None] < idx[None, :, None]) & (idx[None, :, None] < idx[None, None, :])), math.inf)
    best = first                                        # after one step: best[i] for edge (0, i)
    state = torch.full((n1, n1), math.inf, dtype=torch.float64)      # state[k, i]
    state[0, 1:] = best[1:]
    history = []
    for _ in range(steps - 1):
        total = state[:, :, None] + cost2                             # [k, i, j]
        new, arg = total.min(dim=0)                                   # over k -> [i, j]
        history.append(arg)
        state = new
    if steps == 1:
        if not math.isfinite(float(state[0, n1 - 1])):
            raise ValueError("no path with this many steps through the candidate grid")
        return [0, n1 - 1]
    last = int(state[:, n1 - 1].argmin())
    if not math.isfinite(float(state[last, n1 - 1])):
        raise ValueError("no path with this many steps through the candidate grid; use more candidates")
    path = [n1 - 1, last]
    for arg in reversed(history):
        path.append(int(arg[path[-1], path[-2]]))
    return path[::-1]


@dataclass
class Calibration:
    """What :func:`optimized_sigmas` computes once per calibration batch and may reuse across budgets."""

    x: Tensor            # calibration initial states at sigma_max
    candidates: Tensor   # the candidate grid, float64, ending in 0
    trajectory: Tensor   # reference states at the candidates, [N + 1, B, ...] float64
    growth: Tensor       # amplification of errors made at each candidate, [N + 1, B]


def calibrate(denoiser: Denoiser, x: Tensor, *, sigma_max: float, sigma_min: float, fine_steps: int = 48,
              candidate_grid: Sequence[float] | Tensor | None = None, rtol: float = 1e-7) -> Calibration:
    """Reference trajectory of the calibration batch ``x`` through the candidate grid, and error growth.

    ``candidate_grid``: explicit candidates (strictly decreasing, ending in 0); by default ``fine_steps``
    log-spaced levels from ``sigma_max`` to ``sigma_min`` and 0.
    """
    if candidate_grid is None:
        candidates = loglinear(fine_steps, sigma_min, sigma_max)
        candidates[0] = sigma_max  # exactly, not exp(log(sigma_max))
    else:
        candidates = check_sigmas(candidate_grid)
    check_finite(x, "the calibration states")
    with torch.no_grad():
        traj = reference_trajectory(denoiser, x, candidates, rtol=rtol, atol=rtol)
        growth = amplification(denoiser, traj, candidates, generator=torch.Generator().manual_seed(0))
    return Calibration(x, candidates, traj, growth)


def optimized_sigmas(
    denoiser: Denoiser,
    x: Tensor,
    nfe: int,
    *,
    solver: str = "dpmpp_2m",
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    fine_steps: int = 48,
    candidate_grid: Sequence[float] | Tensor | None = None,
    rtol: float = 1e-7,
    propagate: bool = True,
    calibration: Calibration | None = None,
) -> Tensor:
    """A sigma grid for ``solver`` with at most ``nfe`` network evaluations, tuned on the batch ``x``.

    Arguments:
        denoiser:       ``D(x, sigma) -> x0_hat`` in the VE frame (with any conditioning bound in).
        x:              calibration initial states at ``sigma_max`` (``noise * sigma_max``), ``[B, ...]``;
                        a handful of samples suffices.
        nfe:            the budget; ``steps = nfe`` for one-evaluation-per-step solvers, ``(nfe + 1) // 2``
                        for Heun (its step to 0 needs one evaluation).
        solver:         one of :data:`COST_MODELS` (the step error model: Euler in sigma, DDIM, Heun,
                        DPM-Solver++(2M); 3M/UniPC use the 2M model, iPNDM the Euler model).
        sigma_max, sigma_min: the range of the candidate grid (not needed when ``candidate_grid`` is given).
        fine_steps:     number of positive candidates, log-spaced from ``sigma_max`` to ``sigma_min``.
        candidate_grid: explicit candidates, strictly decreasing, ending in 0; its first entry is sigma_max.
        rtol:           tolerance of the reference integration.
        propagate:      also weight each step's error by ``a^gamma``, ``a`` the estimated growth of an
                        error made at its end point until sigma = 0 (:func:`amplification`), for
                        ``gamma`` in (0.5, 1), and return whichever of the DP grids (gamma = 0, the plain
                        GITS cost, 0.5, 1) gives ``solver`` the smallest final error on the calibration
                        batch (3 extra solver runs; for a solver that is not registered, e.g. ``ddim``,
                        the plain grid). ``False``: the plain GITS grid only.
        calibration:    the result of :func:`calibrate` for this ``denoiser`` and ``x``, to reuse across
                        budgets and solvers (the grid arguments are then ignored).

    Returns a float64 grid of ``steps + 1`` values, a subsequence of the candidates that starts at
    ``sigma_max`` and ends in 0.
    """
    if solver not in COST_MODELS:
        raise KeyError(f"no step error model for solver {solver!r}; known: {', '.join(sorted(COST_MODELS))}")
    model = COST_MODELS[solver]
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    steps = (int(nfe) + 1) // 2 if model == "heun" else int(nfe)
    available = (calibration.candidates.numel() if calibration is not None else
                 len(candidate_grid) if candidate_grid is not None else fine_steps + 1) - 1
    if steps > available:
        raise ValueError(f"{steps} steps need at least {steps} positive candidates, got {available}")
    if calibration is None:
        if candidate_grid is None and (sigma_max is None or sigma_min is None):
            raise ValueError("give sigma_max and sigma_min, a candidate_grid or a calibration")
        calibration = calibrate(denoiser, x, sigma_max=sigma_max, sigma_min=sigma_min, fine_steps=fine_steps,
                                candidate_grid=candidate_grid, rtol=rtol)
    elif calibration.x.shape != x.shape or not torch.equal(calibration.x, x):
        raise ValueError("the calibration was computed for a different batch x")
    candidates, traj = calibration.candidates, calibration.trajectory
    with torch.no_grad():
        errors = local_errors(denoiser, traj, candidates, model)
        growth = calibration.growth[None] if model != "dpmpp_2m" else calibration.growth[None, None]  # at node j
        grids = []
        for gamma in (0.0, 0.5, 1.0) if propagate else (0.0,):
            weighted = errors if gamma == 0 else errors * growth**gamma        # growth of the landing node j
            cost = weighted.nan_to_num(nan=math.inf).mean(-1)
            path = _shortest_path_2m(cost, steps) if model == "dpmpp_2m" else _shortest_path(cost, steps)
            grids.append(candidates[path].clone())
        if len(grids) == 1 or solver not in SOLVERS:  # nothing to select with: the plain GITS grid
            return grids[0]
        target = traj[-1].to(x.dtype)
        final = [float((get_solver(solver)(denoiser, x, grid) - target).flatten(1).norm(dim=1).mean()) for grid in grids]
    return grids[min(range(len(grids)), key=final.__getitem__)]
