"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): empirical model statistics and the multistep solver.

Frame. The paper writes the VP process ``x_t = alpha_t x0 + sigma_t eps`` in ``lambda = log(alpha_t / sigma_t)``.
Our VE state is ``x = x_VP / alpha`` with noise level ``sigma = sigma_t / alpha_t`` (``alpha = 1 / sqrt(1 + sigma^2)``
in the VP picture), so ``lambda = -log(sigma)`` and the paper's ``(sigma_t eps - l x_VP) / alpha_t`` equals
``sigma eps - l x``: the statistics ``l, s, b`` as functions of ``lambda`` are the same in both frames, and the VE
frame is the paper's with ``alpha = 1`` (the reference code's ``NoiseScheduleEDM``). With ``sigma eps = x - D``
(``D`` the denoiser) the probability-flow ODE is ``dx/dlambda = D - x = -l x - f`` with

    f(x, lambda) = (1 - l) x - D(x, sigma),

and, with ``L = int l``, ``S = int s`` (integrals in ``lambda``), its exact solution from ``lambda_s`` to ``lambda_t`` is

    x_t = exp(L_s - L_t) x_s - int_s^t exp(L - L_t + S - S_s) [g(lambda) + beta(lambda)] dlambda,
    g = exp(S_s - S) f - beta,   beta(lambda) = int_s^lambda exp(S_s - S_r) b_r dr.

Empirical model statistics (EMS), per dimension of the data (arrays of the event shape, one per ``lambda`` node):

* ``l = argmin E ||d(sigma eps - l x)/dx||_F^2`` over diagonal ``l``: ``l = 1 - E[diag dD/dx]``;
* ``s, b = argmin E |f' - s f - b|^2``, ``f' = df/dlambda`` along the ODE
  (``f' = -l' x + (1 - l)(D - x) - dD/dlambda``, ``dD/dlambda = dD/dx (D - x) + dD/dlambda|_x``): the
  least-squares line per dimension, ``s = Cov(f', f) / Var(f)``, ``b = E f' - s E f``.

Expectations are over ``x = x0 + sigma eps`` for the given ``x0`` (data or the model's own samples). The same
``x0``, ``eps`` and Hutchinson probe ``v`` are used at every ``lambda`` node, so ``l`` is smooth in ``lambda`` and its
derivative ``l'`` is taken by finite differences on the grid; ``diag dD/dx = E_v[v * (dD/dx v)]`` (Rademacher ``v``).

Solver. ``g`` is expanded in a Taylor series about ``lambda_s``; its derivatives come from the ``g`` values of the
last points (multistep; exact Taylor fit, or divided differences with ``pseudo``). The predictor uses up to ``order``
points; the corrector (UniPC-style, the paper's) repeats the step with the denoiser value at the new point and the
same order, on the state the step-end hooks returned (``x_hooked + corrector - predictor``), and that value is
reused by the next step (one network evaluation per step). Between the EMS nodes ``l, s, b`` are linear in
``lambda``; ``L, S`` are integrated exactly, the rest with 5-point Gauss-Legendre per piece and ``beta`` inside a
piece by integrating the interpolant through those nodes (``quadrature="gauss"``), or with the reference
implementation's trapezoidal rule on the nodes (``quadrature="trapezoid"``). The reference rounds the sampling
times to the EMS grid; here grid points between EMS nodes are inserted into it. Because ``l'`` jumps at the nodes,
the Taylor fits of ``g`` meet kinks: the solver keeps its order only while the EMS grid is finer than its steps
(on the Gaussian tests an error floor near 1e-6 relative with 100 intervals, none visible with 2000). The
coefficients cost ``O(nodes x 5 x dims)`` per call, independent of the batch. The step to ``sigma = 0``
returns ``D`` (first order, as every solver here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._core import Denoiser, Run, Tensor, check_finite, register

KIND = "dpm_solver_v3.ems"


@dataclass
class EMS:
    """Empirical model statistics on a grid of ``lambda = -log(sigma)``.

    Attributes:
        lambdas:     ``[n + 1]`` float64, strictly increasing (``sigma_max`` first, ``sigma_min`` last).
        l, s, b:     ``[n + 1, *shape]`` float64, per dimension of one sample of the data.
        num_samples: how many samples ``x0`` the statistics were estimated on.
        derivative:  how the derivatives were taken (``"fd"``, ``"jvp"`` or ``"exact"``).
    """

    lambdas: Tensor
    l: Tensor
    s: Tensor
    b: Tensor
    num_samples: int = 0
    derivative: str = "fd"

    def __post_init__(self) -> None:
        self.lambdas = torch.as_tensor(self.lambdas, dtype=torch.float64).detach().cpu().flatten()
        n = self.lambdas.numel()
        if n < 2 or not torch.isfinite(self.lambdas).all() or (self.lambdas.diff() <= 0).any():
            raise ValueError("EMS lambdas must be at least 2 finite, strictly increasing values")
        for name in ("l", "s", "b"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64).detach().cpu()
            if value.ndim < 1 or value.shape[0] != n:
                raise ValueError(f"EMS {name} must have shape [{n}, *shape], got {tuple(value.shape)}")
            check_finite(value, f"the EMS {name}")
            setattr(self, name, value)
        if not self.l.shape == self.s.shape == self.b.shape:
            raise ValueError(f"EMS l, s, b shapes differ: {tuple(self.l.shape)}, {tuple(self.s.shape)}, "
                             f"{tuple(self.b.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Event shape of one sample the statistics belong to."""
        return tuple(self.l.shape[1:])

    @property
    def sigma_min(self) -> float:
        return math.exp(-float(self.lambdas[-1]))

    @property
    def sigma_max(self) -> float:
        return math.exp(-float(self.lambdas[0]))

    def state_dict(self) -> dict[str, Tensor]:
        return {"lambdas": self.lambdas, "l": self.l, "s": self.s, "b": self.b}

    def metadata(self) -> dict:
        return {"kind": KIND, "version": 1, "shape": list(self.shape), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "n_grid": self.lambdas.numel() - 1,
                "num_samples": int(self.num_samples), "derivative": self.derivative}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], metadata: dict) -> "EMS":
        """Rebuild from :meth:`state_dict` and :meth:`metadata`; the metadata must describe the tensors."""
        if metadata.get("kind") != KIND:
            raise ValueError(f"not DPM-Solver-v3 statistics: kind {metadata.get('kind')!r}, expected {KIND!r}")
        missing = {"lambdas", "l", "s", "b"} - set(tensors)
        if missing:
            raise ValueError(f"EMS state lacks {sorted(missing)}")
        ems = cls(tensors["lambdas"], tensors["l"], tensors["s"], tensors["b"],
                  num_samples=int(metadata.get("num_samples", 0)), derivative=str(metadata.get("derivative", "fd")))
        if list(ems.shape) != list(metadata.get("shape", ems.shape)):
            raise ValueError(f"EMS tensors have shape {ems.shape}, metadata says {metadata['shape']}")
        for key in ("sigma_min", "sigma_max"):
            if key in metadata and not math.isclose(getattr(ems, key), metadata[key], rel_tol=1e-9):
                raise ValueError(f"EMS {key} {getattr(ems, key)!r} does not match the metadata's {metadata[key]!r}")
        return ems

    def __repr__(self) -> str:
        return f"EMS({json.dumps(self.metadata())})"


# ---------------------------------------------------------------------------------------------
# statistics


def _derivatives(denoiser: Denoiser, x: Tensor, sigma: float, v: Tensor, derivative: str, step: float):
    """``D(x)``, ``dD/dx v`` and ``dD/dlambda`` along the ODE (tangent ``(D - x, 1)``), in x's dtype."""
    sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    if derivative == "jvp":
        def fn(x_, lam_):
            return denoiser(x_, torch.exp(-lam_))

        lam = -torch.log(sig)
        denoised, jv = torch.func.jvp(fn, (x, lam), (v, torch.zeros_like(lam)))
        _, dd = torch.func.jvp(fn, (x, lam), (denoised - x, torch.ones_like(lam)))
        return denoised, jv, dd
    denoised = denoiser(x, sig)
    h = step * sigma  # the denoiser varies on the scale sigma in x
    jv = (denoiser(x + h * v, sig) - denoiser(x - h * v, sig)) / (2 * h)
    u = step * (denoised - x)  # x(lambda +- step) to second order (the O(step^2) shifts cancel)
    dd = (denoiser(x + u, sig * math.exp(-step)) - denoiser(x - u, sig * math.exp(step))) / (2 * step)
    return denoised, jv, dd


def compute_ems(denoiser: Denoiser, x0: Tensor, *, sigma_min: float, sigma_max: float, n_grid: int = 120,
                batch: int = 64, generator: torch.Generator | None = None, derivative: str = "fd",
                fd_step: float = 1e-2, log: Callable[[str], None] | None = None) -> EMS:
    """Estimate the empirical model statistics of ``denoiser`` on ``x0`` (see the module docstring).

    Arguments:
        denoiser:  ``D(x, sigma) -> x0_hat`` in the VE frame.
        x0:        ``[K, *shape]`` clean samples (data, or the model's own samples), in the denoiser's dtype.
        sigma_min, sigma_max: the range of the grid, ``n_grid`` intervals uniform in ``lambda = -log(sigma)``.
        batch:     samples per denoiser call.
        generator: draws the noise ``eps`` and the Rademacher probes (once, shared by all noise levels).
        derivative: ``"fd"`` central differences (5 calls per sample and level; works with any network) or
                   ``"jvp"`` (``torch.func.jvp``, 2 forward-mode calls; the network must support forward AD).
        fd_step:   relative step of the differences: ``fd_step * sigma`` in x, ``fd_step`` in lambda.
        log:       called with a progress line after each noise level.

    Returns an :class:`EMS` with ``l, s, b`` of shape ``[n_grid + 1, *shape]`` (float64).
    """
    if derivative not in ("fd", "jvp"):
        raise ValueError(f"derivative must be 'fd' or 'jvp', got {derivative!r}")
    if not 0 < sigma_min < sigma_max < math.inf or n_grid < 2:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf and n_grid >= 2, got {sigma_min}, {sigma_max}, {n_grid}")
    if x0.ndim < 2 or x0.shape[0] < 2:
        raise ValueError(f"x0 must be [K, *shape] with K >= 2 samples, got {tuple(x0.shape)}")
    check_finite(x0, "x0")
    lambdas = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), n_grid + 1, dtype=torch.float64)
    k, shape, dev = x0.shape[0], x0.shape[1:], generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=dev).to(x0)
    v = (2 * torch.randint(0, 2, x0.shape, generator=generator, device=dev) - 1).to(x0)
    # per level: E[v * Jv], E x, E D, E w, E x^2, E x D, E D^2, E x w, E D w  (w = dD/dlambda along the ODE)
    m = torch.zeros(9, n_grid + 1, *shape, dtype=torch.float64)
    for j, lam in enumerate(lambdas.tolist()):
        sigma = math.exp(-lam)
        for lo in range(0, k, batch):
            x = x0[lo:lo + batch] + sigma * eps[lo:lo + batch]
            with torch.no_grad():  # forward-mode AD (jvp) works without the autograd graph
                out = _derivatives(denoiser, x, sigma, v[lo:lo + batch], derivative, fd_step)
            denoised, jv, w = (t.detach().to(torch.float64).cpu() for t in out)
            xd, vd = x.to(torch.float64).cpu(), v[lo:lo + batch].to(torch.float64).cpu()
            for i, term in enumerate((vd * jv, xd, denoised, w, xd * xd, xd * denoised, denoised * denoised,
                                      xd * w, denoised * w)):
                m[i, j] += term.sum(0)
        if log is not None:
            log(f"EMS level {j + 1}/{n_grid + 1} (sigma {sigma:.4g})")
    vjv, ex, ed, ew, exx, exd, edd, exw, edw = m / k
    l = 1 - vjv
    dl = torch.gradient(l, spacing=(lambdas,), dim=0, edge_order=2)[0]
    vx, cxd, vd, cxw, cdw = exx - ex**2, exd - ex * ed, edd - ed**2, exw - ex * ew, edw - ed * ew
    a = 1 - l                  # f  = a x - D
    p = -(dl + a)              # f' = p x + a D - w
    mean_f, mean_fp = a * ex - ed, p * ex + a * ed - ew
    cov = a * p * vx + a * a * cxd - a * cxw - p * cxd - a * vd + cdw
    var = a * a * vx - 2 * a * cxd + vd
    # f = a x - D cancels: where its variance is below 1e-6 of its parts' (a std a thousandth of theirs,
    # round-off of a float32 network, e.g. a linear denoiser with f = 0), s is 0 rather than noise / noise
    ok = (var > 1e-6 * (a * a * vx + vd)) & (var > 1e-12 * (mean_f**2 + var).clamp_min(1e-300))
    s = torch.where(ok, cov / torch.where(ok, var, 1.0), 0.0)
    return EMS(lambdas, l, s, mean_fp - s * mean_f, num_samples=k, derivative=derivative)


# ---------------------------------------------------------------------------------------------
# integrals of the piecewise-linear statistics


def _rule(quadrature: str) -> tuple[Tensor, Tensor, Tensor]:
    """Nodes ``xi`` and weights on [0, 1], and the matrix ``Q`` with ``int_0^xi_q f ~ sum_r Q_qr f(xi_r)``.

    ``"gauss"``: 5-point Gauss-Legendre (exact to degree 9; ``Q`` integrates the interpolant, degree 4).
    ``"trapezoid"``: the end points; ``Q`` is then the cumulative trapezoid of the reference implementation.
    """
    if quadrature == "trapezoid":
        nodes, weights = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    elif quadrature == "gauss":
        k = torch.arange(1, 5, dtype=torch.float64)
        off = k / torch.sqrt(4 * k**2 - 1)
        nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))  # Golub-Welsch
        nodes, weights = (nodes + 1) / 2, vecs[0] ** 2
    else:
        raise ValueError(f"quadrature must be 'gauss' or 'trapezoid', got {quadrature!r}")
    powers = torch.arange(nodes.numel(), dtype=torch.float64)
    lagrange = torch.linalg.inv(nodes.unsqueeze(1) ** powers)            # monomial coefficients of the l_r
    integrals = nodes.unsqueeze(1) ** (powers + 1) / (powers + 1)        # int_0^xi_q t^j dt
    return nodes, weights, integrals @ lagrange


class _Statistics:
    """The EMS on the merged grid of EMS nodes and sampling points; coefficients of one step."""

    def __init__(self, ems: EMS, lambdas: list[float], quadrature: str) -> None:
        nodes = ems.lambdas
        tol = 1e-9 * (1 + nodes.abs().max().item())
        extra = []
        for lam in lambdas:
            if lam < nodes[0] - tol or lam > nodes[-1] + tol:
                raise ValueError(
                    f"the sigma grid reaches sigma={math.exp(-lam):.6g}, outside the range the EMS were computed for "
                    f"[{ems.sigma_min:.6g}, {ems.sigma_max:.6g}]; compute the statistics for this range")
            if (nodes - lam).abs().min() > tol:
                extra.append(lam)
        grid = torch.cat([nodes, torch.tensor(extra, dtype=torch.float64)]).sort().values
        self.grid = grid
        self.index = [int((grid - lam).abs().argmin()) for lam in lambdas]
        flat = [t.reshape(t.shape[0], -1) for t in (ems.l, ems.s, ems.b)]
        i = torch.searchsorted(nodes, grid.clamp(nodes[0], nodes[-1]), right=True).clamp(1, nodes.numel() - 1)
        theta = ((grid - nodes[i - 1]) / (nodes[i] - nodes[i - 1])).unsqueeze(1)
        self.l, self.s, self.b = ((1 - theta) * t[i - 1] + theta * t[i] for t in flat)   # [M + 1, d]
        width = grid.diff().unsqueeze(1)
        zero = torch.zeros(1, self.l.shape[1], dtype=torch.float64)
        self.L = torch.cat([zero, (width * (self.l[1:] + self.l[:-1]) / 2).cumsum(0)])   # exact for linear l
        self.S = torch.cat([zero, (width * (self.s[1:] + self.s[:-1]) / 2).cumsum(0)])
        self.xi, self.omega, self.cumulative = _rule(quadrature)
        # int over each piece of exp(S_start - S_r) b_r dr: beta between nodes is a weighted sum of these
        p = torch.arange(grid.numel() - 1)
        _, b, _, big_s = self._at(p, self.xi.expand(p.numel(), -1))
        self.phi = (width.unsqueeze(1) * self.omega.reshape(1, -1, 1) * torch.exp(self.S[:-1, None] - big_s) * b).sum(1)
        self._steps: dict[tuple[int, int], dict] = {}

    def _at(self, p: Tensor, theta: Tensor):
        """``lambda, b, L, S`` inside pieces ``p`` ([P]) at fractions ``theta`` ([P, ...])."""
        w = (self.grid[p + 1] - self.grid[p]).reshape(-1, *[1] * (theta.ndim - 1))
        lam = self.grid[p].reshape(w.shape) + w * theta
        t = theta.unsqueeze(-1)
        sel = (p,) + (None,) * (theta.ndim - 1)
        lo_l, hi_l, lo_s, hi_s = self.l[sel], self.l[(p + 1,) + sel[1:]], self.s[sel], self.s[(p + 1,) + sel[1:]]
        w = w.unsqueeze(-1)
        big_l = self.L[sel] + w * (lo_l * t + (hi_l - lo_l) * t**2 / 2)
        big_s = self.S[sel] + w * (lo_s * t + (hi_s - lo_s) * t**2 / 2)
        b = (1 - t) * self.b[sel] + t * self.b[(p + 1,) + sel[1:]]
        return lam, b, big_l, big_s

    def beta(self, a: int, j: int) -> Tensor:
        """``beta`` at grid node ``j`` for the expansion about node ``a``: ``int_a^j exp(S_a - S_r) b_r dr``."""
        lo, hi, sign = (a, j, 1.0) if j >= a else (j, a, -1.0)
        return sign * (torch.exp(self.S[a] - self.S[lo:hi]) * self.phi[lo:hi]).sum(0)

    def growth(self, a: int, j: int) -> Tensor:
        """``exp(S_a - S_j)``."""
        return torch.exp(self.S[a] - self.S[j])

    def step(self, a: int, c: int) -> dict:
        """Coefficients of the step from node ``a`` to node ``c``: ``decay``, ``c0``, ``cb`` and ``ck`` (k = 1..3)."""
        if (a, c) in self._steps:
            return self._steps[(a, c)]
        p = torch.arange(a, c)
        om = self.omega.reshape(1, -1, 1)
        w = (self.grid[p + 1] - self.grid[p]).reshape(-1, 1, 1)
        lam, b, big_l, big_s = self._at(p, self.xi.expand(p.numel(), -1))                # [P, m], [P, m, d]
        weight = w * om * torch.exp(big_l - self.L[c] + big_s - self.S[a])              # [P, m, d]
        # beta at the quadrature nodes: whole pieces before, plus the part of the own piece
        partial = w * torch.einsum("qr,prd->pqd", self.cumulative, torch.exp(self.S[a] - big_s) * b)
        whole = torch.exp(self.S[a] - self.S[a:c]) * self.phi[a:c]                        # [P, d]
        before = torch.cat([torch.zeros_like(whole[:1]), whole.cumsum(0)[:-1]])
        beta = before.unsqueeze(1) + partial
        offset = (lam - self.grid[a]).unsqueeze(-1)
        coeffs = {"decay": torch.exp(self.L[a] - self.L[c]), "c0": weight.sum((0, 1)),
                  "cb": (weight * beta).sum((0, 1)),
                  "ck": [(weight * offset**k).sum((0, 1)) / math.factorial(k) for k in (1, 2, 3)]}
        self._steps[(a, c)] = coeffs
        return coeffs


def _taylor(lams: list[float], gs: list[Tensor], pseudo: bool) -> list[Tensor]:
    """Derivatives ``g^(1..n)`` at ``lams[0]`` from ``n + 1`` values: Taylor fit, or divided differences."""
    n = len(gs) - 1
    if n == 0:
        return []
    if pseudo:
        table, out = list(gs), []
        for i in range(1, n + 1):
            table = [(table[j] - table[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)]
            out.append(math.factorial(i) * table[0])
        return out
    h = torch.tensor([lam - lams[0] for lam in lams[1:]], dtype=torch.float64)
    inv = torch.linalg.inv(h.unsqueeze(1) ** torch.arange(1, n + 1, dtype=torch.float64)).tolist()
    return [math.factorial(k + 1) * sum(inv[k][j] * (gs[j + 1] - gs[0]) for j in range(n)) for k in range(n)]


# ---------------------------------------------------------------------------------------------
# solver


def _check_ems(ems, x: Tensor) -> EMS:
    if ems is None:
        raise TypeError("dpm_solver_v3 needs ems= (empirical model statistics of this denoiser, from "
                        "samplers.dpm_solver_v3.compute_ems or EMS.from_state)")
    if not isinstance(ems, EMS):
        raise TypeError(f"ems must be an EMS, got {type(ems).__name__}")
    if tuple(x.shape[1:]) != ems.shape:
        raise ValueError(f"the EMS were computed for samples of shape {ems.shape}, the state has {tuple(x.shape[1:])}")
    return ems


@register("dpm_solver_v3", order=3, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def dpm_solver_v3(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, ems: EMS | None = None,
                  order: int = 3, corrector: bool = True, pseudo: bool = False, corrector_pseudo: bool = False,
                  lower_order_final: bool = True, quadrature: str = "gauss"):
    """DPM-Solver-v3 multistep predictor-corrector with empirical model statistics ``ems`` (required).

    Options:
        order:            predictor order 1..3 (lower while the history fills up).
        corrector:        apply the corrector (same order as the step's predictor; ``+1`` with ``corrector_pseudo``).
        pseudo:           predictor derivatives by divided differences (the paper's pseudo-order for very few steps).
        corrector_pseudo: corrector one order higher, with divided differences (the reference's ``c_pseudo``).
        lower_order_final: step ``i`` of ``N`` (counting the step to 0) uses order at most ``N - i``.
        quadrature:       ``"gauss"`` (exact for the piecewise-linear statistics) or ``"trapezoid"`` (reference).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be an integer in 1..3, got {order!r}")
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    ems = _check_ems(ems, x)
    positive = [s for s in run.sigmas.tolist() if s > 0]
    table = _Statistics(ems, [-math.log(s) for s in positive], quadrature)
    lams, index = table.grid[table.index].tolist(), table.index

    def cast(t: Tensor) -> Tensor:
        return t.reshape(ems.shape).to(dtype=x.dtype, device=x.device)

    def f_value(i, state, denoised):
        return (1 - cast(table.l[index[i]])) * state - denoised

    def g_part(i, c, points, use_pseudo):  # points: [(k, f_k)], the expansion point i first
        coeffs = table.step(index[i], index[c])
        gs = [points[0][1]] + [cast(table.growth(index[i], index[k])) * f - cast(table.beta(index[i], index[k]))
                               for k, f in points[1:]]
        out = cast(coeffs["c0"]) * gs[0] + cast(coeffs["cb"])
        for ck, dk in zip(coeffs["ck"], _taylor([lams[k] for k, _ in points], gs, use_pseudo)):
            out = out + cast(ck) * dk
        return out

    history = []  # (grid index, f) of the last points, most recent last
    denoised = None  # D at the state the step starts from (the hooked predictor for i > 0)
    for i, sigma, sigma_next in run.steps():
        if denoised is None:
            denoised = run.denoise(x, sigma)
            history.append((i, f_value(i, x, denoised)))
        if sigma_next == 0:
            return run.finish(run.end_step(i, denoised, denoised))
        p = min(order, len(history))
        if lower_order_final:
            p = min(p, run.num_steps - i)
        predicted = g_part(i, i + 1, history[::-1][:p], pseudo)
        x = run.end_step(i, cast(table.step(index[i], index[i + 1])["decay"]) * x - predicted, denoised)
        denoised = run.denoise(x, sigma_next)
        new = (i + 1, f_value(i + 1, x, denoised))
        c = p + int(corrector_pseudo)
        if corrector and c > 1 and i + 2 < run.num_steps:  # no corrector before the step to 0: D is final there
            corrected = g_part(i, i + 1, [history[-1], new] + history[::-1][1:c - 1], corrector_pseudo)
            x = x - (corrected - predicted)
        history = (history + [new])[-3:]
    return run.finish(x)
