"""Learned few-step solvers: a sigma grid and per-step multistep weights fitted to a model's own ODE.

The family is the data-prediction exponential multistep update of DPM-Solver++ with free weights.
Step ``i`` (from ``s_i`` to ``s_(i+1)``, one network evaluation) is::

    D_i     = D(x_i, s_i * exp(tau_i))                                  # shifted noise level
    x_(i+1) = exp(a_i) (s_(i+1) / s_i) x_i + (1 - s_(i+1) / s_i) sum_j W[i, j] D_(i-j),   j < history

For ``W`` equal to DPM-Solver++(2M)'s (or 3M's, or Euler's) weights on the same grid and ``tau = 0``
the update *is* that solver (:func:`base_weights`), so a fit starts exactly from a known good solver.
Every network input is then ``(s_i / s_0) x_0`` plus a combination of earlier denoised values, and
the result a combination of denoised values: with free weights and a long enough history the family
holds every such linear scheme (UniPC's predictor-corrector among them: its corrector folds into the
next step's weights). ``tau`` decouples the noise level the network is told from the level of the
state (the time-shift and intermediate-point ideas of AMED-Solver and of exposure-bias corrections);
the grid's last positive level is learned too (few-step grids jump to 0 from well above sigma_min).
``a`` (0 unless learned: ``learn=(..., "scales")``) scales the state carried to the next level, so
the noise the state holds need not follow the grid exactly (the exposure-bias corrections scale the
network's input or output for the same reason). Optionally each channel (axis 1) gets its own
weights (and scales).

:func:`fit_learned_solver` fits the grid, the weights and the shifts by back-propagating the final
error through the unrolled solver (LD3, Tong et al. 2025, learns the grid this way, with an optional
slack on the starts; S4S and D-ODE learn coefficients; AMED-Solver learns intermediate points). The
denoiser's own parameters get no gradient. Only fit noises are used; a part of them is held out as a
validation set and the parameters with the smallest validation error are kept. The last step is
linear in its weights, which are finally solved by least squares.

Sampling: ``samplers.sample(D, x, solver.sigmas, solver="learned", params=solver)``. Hooks,
callbacks and guidance work as in every solver: guidance wraps the denoiser (the solver calls the
wrapper), hooks run at the end of each step on the state at ``s_(i+1)``, and the history holds
denoised values only. A solver fitted on the unguided ODE is then applied to the guided one: its
weights were fitted to the prior's trajectories, not to the posterior's (the test on the exact
Gaussian posterior measures what this costs).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ._core import Denoiser, Run, Tensor, check_finite, check_sigmas, register
from .schedules import karras

F64 = torch.float64
BASES = ("euler", "dpmpp_2m", "dpmpp_3m")
KIND = "learned_solver"
MIN_GAP = 1e-4  # smallest step of a learned grid, as a share of log(sigma_max / sigma_min)


# ---------------------------------------------------------------------------------------------
# the solver's parameters


@dataclass
class LearnedSolver:
    """A learned multistep solver for one NFE budget (see the module docstring).

    Fields:
        sigmas:     ``[n + 1]`` float64 grid from ``sigma_max`` down to a last level >= ``sigma_min``, then 0
                    (strictly decreasing).
        weights:    ``[n, history]`` float64; ``weights[i, j]`` multiplies ``D_(i-j)`` in step ``i``
                    (entries with ``j > i`` are unused and kept 0); or ``[n, history, C]``: one weight per
                    channel (axis 1 of the state), for fields whose channels move differently.
        log_shifts: ``[n]`` float64 ``tau_i``: step ``i`` evaluates the denoiser at ``sigmas[i] * exp(tau_i)``.
        log_scales: ``[n]`` (or ``[n, C]`` with per-channel weights) float64 ``a_i``: step ``i`` carries
                    ``exp(a_i) (s_(i+1) / s_i) x_i``; ``None`` means zeros (the plain exponential update).
        base:       the solver it was initialised from (``euler``, ``dpmpp_2m``, ``dpmpp_3m``).
        shape:      event shape it was fitted for (``None``: any).
        info:       what the fit recorded (JSON-able): errors, wall time, iterations, settings.
    """

    sigmas: Tensor
    weights: Tensor
    log_shifts: Tensor
    base: str = "dpmpp_2m"
    shape: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)
    log_scales: Tensor | None = None

    def __post_init__(self) -> None:
        self.sigmas = check_sigmas(self.sigmas)
        n = self.sigmas.numel() - 1
        self.weights = torch.as_tensor(self.weights, dtype=F64).detach().cpu()
        self.log_shifts = torch.as_tensor(self.log_shifts, dtype=F64).detach().cpu().flatten()
        if self.weights.ndim not in (2, 3) or self.weights.shape[0] != n or 0 in self.weights.shape:
            raise ValueError(f"weights must be [{n}, history] or [{n}, history, channels] for a grid of {n} steps, "
                             f"got {tuple(self.weights.shape)}")
        if self.log_shifts.numel() != n:
            raise ValueError(f"log_shifts must have {n} entries (one per step), got {self.log_shifts.numel()}")
        want = (n,) if self.weights.ndim == 2 else (n, self.weights.shape[2])
        if self.log_scales is None:
            self.log_scales = torch.zeros(want, dtype=F64)
        self.log_scales = torch.as_tensor(self.log_scales, dtype=F64).detach().cpu()
        if tuple(self.log_scales.shape) != want:
            raise ValueError(f"log_scales must have shape {list(want)} (one per step{', per channel' if len(want) > 1 else ''}), "
                             f"got {tuple(self.log_scales.shape)}")
        if not (torch.isfinite(self.weights).all() and torch.isfinite(self.log_shifts).all()
                and torch.isfinite(self.log_scales).all()):
            raise ValueError("learned solver weights, shifts or scales are not finite")
        if self.base not in BASES:
            raise ValueError(f"unknown base solver {self.base!r}; known: {', '.join(BASES)}")
        if self.shape is not None:
            self.shape = tuple(int(s) for s in self.shape)

    @property
    def nfe(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def history(self) -> int:
        return self.weights.shape[1]

    @property
    def channels(self) -> int | None:
        """Channels with their own weights (``None``: one weight for the whole state)."""
        return self.weights.shape[2] if self.weights.ndim == 3 else None

    @classmethod
    def initial(cls, sigmas: Sequence[float] | Tensor, base: str = "dpmpp_2m", history: int | None = None,
                shape: Sequence[int] | None = None) -> "LearnedSolver":
        """The solver equal to ``base`` on the grid ``sigmas`` (zero shifts), with ``history`` weights per step."""
        grid = check_sigmas(sigmas)
        history = _check_history(base, history)
        return cls(grid, base_weights(grid, base, history), torch.zeros(grid.numel() - 1, dtype=F64), base,
                   None if shape is None else tuple(shape))

    def check_grid(self, sigmas: Sequence[float] | Tensor | None) -> Tensor:
        """The solver's grid; ``sigmas`` must be ``None`` or equal to it (relative 1e-6, any dtype)."""
        if sigmas is None:
            return self.sigmas
        given = torch.as_tensor(sigmas, dtype=F64).detach().cpu().flatten()
        if given.shape != self.sigmas.shape or not torch.allclose(given, self.sigmas, rtol=1e-6, atol=0.0):
            raise ValueError(f"the learned solver runs on its own grid of {self.nfe} steps "
                             f"({[round(s, 6) for s in self.sigmas.tolist()]}); pass sigmas=solver.sigmas or None, "
                             f"got {[round(s, 6) for s in given.tolist()]}")
        return self.sigmas

    def state_dict(self) -> dict[str, Tensor]:
        return {"sigmas": self.sigmas.clone(), "weights": self.weights.clone(), "log_shifts": self.log_shifts.clone(),
                "log_scales": self.log_scales.clone()}

    def metadata(self) -> dict:
        positive = self.sigmas[self.sigmas > 0]
        return {"kind": KIND, "nfe": self.nfe, "base": self.base, "history": self.history, "channels": self.channels,
                "sigma_max": float(positive[0]), "sigma_min": float(positive[-1]),
                "shape": None if self.shape is None else list(self.shape), "info": self.info}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], metadata: dict) -> "LearnedSolver":
        if metadata.get("kind") != KIND:
            raise ValueError(f"not a learned solver's state: kind {metadata.get('kind')!r}, expected {KIND!r}")
        missing = {"sigmas", "weights", "log_shifts"} - set(tensors)
        if missing:
            raise ValueError(f"learned solver state lacks {sorted(missing)}")
        solver = cls(tensors["sigmas"], tensors["weights"], tensors["log_shifts"], metadata.get("base", "dpmpp_2m"),
                     metadata.get("shape"), dict(metadata.get("info", {})), tensors.get("log_scales"))
        if "nfe" in metadata and metadata["nfe"] != solver.nfe:
            raise ValueError(f"metadata says nfe {metadata['nfe']}, the grid has {solver.nfe} steps")
        return solver


def _check_history(base: str, history: int | None) -> int:
    if base not in BASES:
        raise ValueError(f"unknown base solver {base!r}; known: {', '.join(BASES)}")
    need = {"euler": 1, "dpmpp_2m": 2, "dpmpp_3m": 3}[base]
    if history is None:
        return max(need, 3)
    if int(history) != history or history < need:
        raise ValueError(f"history must be an integer >= {need} for base {base!r}, got {history!r}")
    return int(history)


# ---------------------------------------------------------------------------------------------
# the base solvers' weights (differentiable in the grid)


def _phi(k: int, h: Tensor) -> Tensor:
    """``phi_k(-h)`` for a float64 tensor ``h > 0``: series for ``h < 0.5``, the recursion from ``exp`` otherwise."""
    z = -h
    small = h.abs() < 0.5
    zs = torch.where(small, z, torch.zeros_like(z))
    series = sum(zs**j / float(math.factorial(j + k)) for j in range(25))
    zl = torch.where(small, torch.ones_like(z), z)
    value = torch.exp(zl)
    for m in range(k):
        value = (value - 1.0 / math.factorial(m)) / zl
    return torch.where(small, series, value)


def base_weights(sigmas: Tensor, base: str, history: int, lower_order_final: bool = True) -> Tensor:
    """Weights ``[n, history]`` of ``base`` on the grid ``sigmas`` (differentiable in ``sigmas``).

    They reproduce :func:`samplers.ode.dpmpp_2m`, :func:`samplers.ode.dpmpp_3m` (Taylor weights,
    lower order at the end of runs under 15 steps, as there) and ``euler`` (= DDIM in the VE frame);
    the step to ``sigma = 0`` is first order.
    """
    n = sigmas.numel() - 1
    lam = -torch.log(sigmas[:-1])                                       # lambda at the positive nodes
    rows = []
    for i in range(n):
        w = [torch.ones((), dtype=sigmas.dtype)] + [torch.zeros((), dtype=sigmas.dtype)] * (history - 1)
        last = bool(sigmas[i + 1] == 0)
        order = {"euler": 1, "dpmpp_2m": 2, "dpmpp_3m": 3}[base]
        p = 1 if last else min(order, i + 1)
        if lower_order_final and n < 15 and not last:
            p = min(p, n - i)
        if p >= 2:
            h = lam[i + 1] - lam[i]
            r0 = (lam[i] - lam[i - 1]) / h
            if base == "dpmpp_2m":
                w[0], w[1] = 1 + 0.5 / r0, -0.5 / r0
            else:  # dpmpp_3m: x1 + h phi_2 d1 + 2 h phi_3 d2, divided by (1 - s_next/s) = h phi_1
                a = _phi(2, h) / _phi(1, h)
                d1 = [1 / r0, -1 / r0, 0.0]
                if p == 3:
                    r1 = (lam[i - 1] - lam[i - 2]) / h
                    d2 = [c / (r0 + r1) for c in (1 / r0, -1 / r0 - 1 / r1, 1 / r1)]
                    d1 = [u + r0 * v for u, v in zip(d1, d2)]
                    b = 2 * _phi(3, h) / _phi(1, h)
                    w = [wj + b * cj for wj, cj in zip(w, d2)] + w[3:]
                w = [wj + a * cj for wj, cj in zip(w, d1)] + w[3:]
        rows.append(torch.stack([torch.as_tensor(v, dtype=sigmas.dtype) for v in w]))
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# the update, shared by the sampler and the fit


def _per_channel(weights: Tensor, x: Tensor) -> Tensor:
    """``[..., C]`` weights shaped to broadcast over the channel axis 1 of ``x`` (``[..., 1, C, 1, ...]``)."""
    if x.ndim < 2 or x.shape[1] != weights.shape[-1]:
        raise ValueError(f"per-channel weights for {weights.shape[-1]} channels, state of shape {tuple(x.shape)}")
    return weights.reshape(*weights.shape[:-1], 1, weights.shape[-1], *(1,) * (x.ndim - 2))


def _update(x: Tensor, history: Sequence[Tensor], ratio, weights, scale=1.0) -> Tensor:
    """``scale ratio x + (1 - ratio) sum_j weights[j] history[j]`` (``history`` most recent first)."""
    combined = weights[0] * history[0]
    for j in range(1, len(history)):
        combined = combined + weights[j] * history[j]
    return (scale * ratio) * x + (1 - ratio) * combined


@register("learned", order=2, nfe_per_step=1, stochastic=False)
@torch.no_grad()
def learned(denoiser, x, sigmas=None, *, params: LearnedSolver | None = None, hooks=(), generator=None, callback=None,
            stats=None):
    """Learned multistep solver (grid, weights and shifts from :func:`fit_learned_solver`); ``params=`` the solver."""
    if not isinstance(params, LearnedSolver):
        raise TypeError(f"the learned solver needs params=LearnedSolver(...), got {type(params).__name__}")
    if params.shape is not None and tuple(x.shape[1:]) != params.shape:
        raise ValueError(f"learned solver was fitted for samples of shape {params.shape}, got {tuple(x.shape[1:])}")
    run = Run(denoiser, x, params.check_grid(sigmas), hooks=hooks, callback=callback, stats=stats)
    shifts = params.log_shifts.tolist()
    if params.channels is None:
        weights = params.weights.tolist()
        scales = params.log_scales.exp().tolist()
    else:
        weights = _per_channel(params.weights.to(device=x.device, dtype=x.dtype), x)
        scales = _per_channel(params.log_scales.exp().to(device=x.device, dtype=x.dtype), x)
    history = []  # denoised values, most recent first
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma * math.exp(shifts[i]))
        history = ([denoised] + history)[: params.history]
        x = _update(x, history, sigma_next / sigma, weights[i], scales[i])
        x = run.end_step(i, x, denoised)
    return run.finish(x)


# ---------------------------------------------------------------------------------------------
# fitting


class _Parameters(torch.nn.Module):
    """The trainable form: grid logits, weight offsets from the base solver, log shifts.

    ``log s_i = log s_max - log(s_max / s_floor) * cumsum(g)_(i-1)``, ``i = 1 .. n-1``, with the gaps
    ``g_k = m + (1 - (n - 1) m) softmax(u)_k`` (``m = MIN_GAP``, ``u`` has ``n`` entries: the last one is the
    rest from ``s_(n-1)`` down to ``s_floor``) keeps the grid strictly decreasing from ``s_max`` to a last level
    in ``[s_floor, s_max)``, then 0, for any ``u``. A last level at the floor starts (and in practice stays)
    there. Weights are ``base_weights(grid) + delta``
    (``delta = 0`` at the start: the fit starts at the base solver on the initial grid).
    """

    def __init__(self, init: LearnedSolver, learn: set[str], sigma_floor: float | None = None) -> None:
        super().__init__()
        s = init.sigmas
        self.base, self.n, self.k, self.channels = init.base, init.nfe, init.history, init.channels
        self.s_max = float(s[0])
        self.s_floor = float(s[-2]) if sigma_floor is None else float(sigma_floor)
        if not 0 < self.s_floor <= float(s[-2]):
            raise ValueError(f"sigma_floor={self.s_floor:g} must be in (0, {float(s[-2]):g}], the initial grid's last level")
        self.log_max, self.log_floor = math.log(self.s_max), math.log(self.s_floor)
        span = max(self.log_max - self.log_floor, 1e-300)
        # shares of log(s_max / s_floor): the n - 1 steps between positive levels, then the rest down to the floor
        gaps = torch.cat([torch.log(s[:-2]) - torch.log(s[1:-1]), torch.log(s[-2:-1]) - self.log_floor]) / span
        gaps[:-1] -= MIN_GAP
        shares = (gaps / (1 - (self.n - 1) * MIN_GAP)).clamp_min(1e-12)
        self.logits = torch.nn.Parameter(torch.log(shares), requires_grad="sigmas" in learn)
        offsets = init.weights - self._base(s)
        self.delta = torch.nn.Parameter(offsets.clone(), requires_grad="weights" in learn)
        self.tau = torch.nn.Parameter(init.log_shifts.clone(), requires_grad="shifts" in learn)
        self.alpha = torch.nn.Parameter(init.log_scales.clone(), requires_grad="scales" in learn)
        i, j = torch.meshgrid(torch.arange(self.n), torch.arange(self.k), indexing="ij")
        mask = (j <= i).to(F64)                                           # weights on existing history only
        self.register_buffer("mask", mask if self.channels is None else mask[..., None])

    def _base(self, grid: Tensor) -> Tensor:
        w = base_weights(grid, self.base, self.k)
        return w if self.channels is None else w[..., None].expand(-1, -1, self.channels)

    def grid(self) -> Tensor:
        if self.n == 1:
            return torch.tensor([self.s_max, 0.0], dtype=F64)
        gaps = MIN_GAP + (1 - (self.n - 1) * MIN_GAP) * torch.softmax(self.logits, 0)[:-1]
        levels = torch.exp(self.log_max - (self.log_max - self.log_floor) * torch.cumsum(gaps, 0))
        return torch.cat([torch.tensor([self.s_max], dtype=F64), levels, torch.zeros(1, dtype=F64)])

    def solver(self, shape, info=None) -> LearnedSolver:
        with torch.no_grad():
            grid = self.grid()
            weights = self._base(grid) + self.delta * self.mask
            return LearnedSolver(grid, weights, self.tau.detach().clone(), self.base, shape, dict(info or {}),
                                 self.alpha.detach().clone())

    def forward(self, denoiser: Denoiser, x: Tensor, final_history: list | None = None) -> Tensor:
        """The unrolled solver, differentiable in the parameters (and in ``x``).

        ``final_history``: a list that receives the denoised values the last step combines (most recent first).
        """
        grid = self.grid()
        to = {"dtype": x.dtype, "device": x.device}
        weights = (self._base(grid) + self.delta * self.mask).to(**to)
        scales = self.alpha.exp().to(**to)
        if self.channels is not None:
            weights = _per_channel(weights, x)
            scales = _per_channel(scales, x)
        sig = (grid[:-1] * torch.exp(self.tau)).to(**to)
        ratios = (grid[1:] / grid[:-1]).to(**to)
        history = []
        for i in range(self.n):
            denoised = denoiser(x, sig[i].expand(x.shape[0]))
            history = ([denoised] + history)[: self.k]
            x = _update(x, history, ratios[i], weights[i], scales[i])
        if final_history is not None:
            final_history.extend(history)
        return x

    @torch.no_grad()
    def solve_final_step(self, denoiser: Denoiser, x: Tensor, reference: Tensor, batch_size: int) -> None:
        """Set the last step's weights to their least-squares optimum on ``(x, reference)``.

        The step to ``sigma = 0`` is linear in its weights (``x_n = sum_j W[n-1, j] D_(n-1-j)``), so with the other
        parameters fixed its best weights solve a ``history x history`` normal system (per channel).
        """
        if float(self.grid()[-1]) != 0.0:
            raise ValueError("the last step must end at sigma = 0")
        k = min(self.k, self.n)
        channels = 1 if self.channels is None else self.channels
        gram = torch.zeros(channels, k, k, dtype=F64)
        rhs = torch.zeros(channels, k, dtype=F64)
        for start in range(0, x.shape[0], batch_size):
            history: list = []
            self(denoiser, x[start:start + batch_size], history)
            target = reference[start:start + batch_size]
            # [channels, k, values]: the denoised values of each channel, and the target, as columns
            cols = torch.stack([h.to(F64).transpose(0, 1).reshape(h.shape[1], -1) if self.channels else
                                h.to(F64).reshape(1, -1) for h in history[:k]], 1)
            tgt = target.to(F64).transpose(0, 1).reshape(target.shape[1], -1) if self.channels else target.to(F64).reshape(1, -1)
            gram += cols @ cols.transpose(1, 2)
            rhs += (cols @ tgt[..., None])[..., 0]
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True)[..., None]
        solution = torch.linalg.solve(gram + 1e-10 * scale * torch.eye(k, dtype=F64), rhs)  # [channels, k]
        base = self._base(self.grid())[-1, :k]
        new = solution.T if self.channels else solution[0]
        self.delta[-1, :k] = new - base


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a.to(F64) - b.to(F64)).pow(2).mean().sqrt())


def fit_learned_solver(
    denoiser: Denoiser,
    noise: Tensor,
    reference: Tensor,
    *,
    nfe: int,
    sigma_min: float,
    sigma_max: float,
    init_sigmas: Sequence[float] | Tensor | LearnedSolver | None = None,
    base: str = "dpmpp_2m",
    history: int | None = None,
    per_channel: bool = False,
    learn: Sequence[str] = ("sigmas", "weights", "shifts"),
    steps: int = 100,
    lr: float = 0.01,
    batch_size: int = 8,
    val_fraction: float = 0.25,
    val_every: int = 10,
    slack: float = 0.0,
    solve_final: bool = True,
    seed: int = 0,
    log: Callable[[str], object] | None = None,
) -> LearnedSolver:
    """Fit a :class:`LearnedSolver` with ``nfe`` evaluations to reference end points of the ODE.

    Arguments:
        denoiser:    ``D(x, sigma) -> x0_hat`` (VE frame), differentiable in ``x`` and ``sigma``; its own
                     parameters are not trained (gradients are taken w.r.t. the solver's parameters only).
        noise:       ``[N, ...]`` unit-normal fit noises; the solver starts from ``sigma_max * noise``.
        reference:   ``[N, ...]`` the ODE's end points from those starts (a fine solve of the same ODE).
        nfe:         network evaluations = steps of the learned solver.
        sigma_min, sigma_max: the grid's range: it starts at ``sigma_max``; its last positive level is learned
                     in ``[sigma_min, sigma_max)`` (a start at ``sigma_min`` stays there in practice).
        init_sigmas: the initial grid (``nfe + 1`` entries from ``sigma_max`` down to a level >= ``sigma_min``, then
                     0), e.g. :func:`samplers.tuning.optimized_sigmas`; default Karras (rho 7) to ``sigma_min``.
                     Or a :class:`LearnedSolver` to continue from (its base, history and weight layout are kept;
                     ``base``, ``history`` and ``per_channel`` are then ignored).
        base:        the solver the fit starts from: ``dpmpp_2m`` (default), ``dpmpp_3m`` or ``euler``.
        history:     weights per step (denoised values combined); default ``max(base order, 3)``.
        per_channel: one weight per channel (axis 1) instead of one per step and history entry.
        learn:       which parts to fit: any of ``sigmas`` (the grid), ``weights``, ``shifts``, ``scales``.
        steps:       Adam iterations (cosine-decayed learning rate ``lr``; the grid logits get ``5 lr``).
        batch_size:  fit noises per iteration (minibatches drawn without replacement, epoch by epoch).
        val_fraction: share of the fit noises held out as a validation set (0: none; then the last
                     iterate is kept); the parameters with the smallest validation RMS error are returned,
                     the initial solver included, so the fit never returns a solver worse on it.
        val_every:   iterations between validation passes.
        slack:       LD3's soft teacher forcing: each training start may move within a ball of RMS radius
                     ``slack * sigma_max`` (per sample) to match its reference (0: off). Evaluation and
                     validation use the true starts.
        solve_final: after the iterations, set the last step's weights (linear in the output) to their least-squares
                     optimum on the training noises; kept only if the validation error falls.
        seed:        seeds the split and the minibatch order.
        log:         called with a progress line after each validation pass.

    Returns the solver with ``info``: ``init_val_rms``, ``val_rms`` (RMS error over the validation set,
    normalised frame as given), ``best_step``, ``fit_seconds``, ``train_rms`` (last minibatches), settings.
    """
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    nfe = int(nfe)
    if noise.shape != reference.shape or noise.ndim < 2:
        raise ValueError(f"noise {tuple(noise.shape)} and reference {tuple(reference.shape)} must be equal [N, ...]")
    check_finite(noise, "the fit noises")
    check_finite(reference, "the fit references")
    unknown = set(learn) - {"sigmas", "weights", "shifts", "scales"}
    if unknown:
        raise ValueError(f"unknown parts to learn {sorted(unknown)}; known: sigmas, weights, shifts, scales")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if init_sigmas is None:
        init_sigmas = karras(nfe, sigma_min, sigma_max, rho=7.0)
    if isinstance(init_sigmas, LearnedSolver):
        init = LearnedSolver(init_sigmas.sigmas, init_sigmas.weights, init_sigmas.log_shifts, init_sigmas.base,
                             tuple(noise.shape[1:]), log_scales=init_sigmas.log_scales)
        base, history, per_channel = init.base, init.history, init.channels is not None
    else:
        init = LearnedSolver.initial(init_sigmas, base, history, noise.shape[1:])
    if per_channel and init.channels is None:
        init = LearnedSolver(init.sigmas, init.weights[..., None].expand(-1, -1, noise.shape[1]).clone(),
                             init.log_shifts, base, init.shape,
                             log_scales=init.log_scales[:, None].expand(-1, noise.shape[1]).clone())
    if init.nfe != nfe:
        raise ValueError(f"init_sigmas has {init.nfe} steps, nfe is {nfe}")
    positive = init.sigmas[:-1]
    if not (math.isclose(float(positive[0]), sigma_max, rel_tol=1e-9) and float(positive[-1]) >= sigma_min * (1 - 1e-9)):
        raise ValueError(f"init_sigmas must start at sigma_max={sigma_max:g} and stay >= sigma_min={sigma_min:g} "
                         f"before its final 0; got {float(positive[0]):g} .. {float(positive[-1]):g}")

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(noise.shape[0], generator=gen)
    n_val = int(round(val_fraction * noise.shape[0]))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_idx.numel() == 0:
        raise ValueError("no fit noises left for training after the validation split")
    params = _Parameters(init, set(learn), min(sigma_min, float(positive[-1])))
    groups = [{"params": [params.logits], "lr": 5 * lr}, {"params": [params.delta, params.tau, params.alpha], "lr": lr}]
    optimiser = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * k / max(steps, 1))))
    trainable = [p for p in params.parameters() if p.requires_grad]
    x_start = sigma_max * noise
    slack_radius = slack * sigma_max
    offsets = torch.zeros_like(x_start) if slack > 0 else None

    def validate() -> float:
        if n_val == 0:
            return math.nan
        with torch.no_grad():
            outs = [params(denoiser, x_start[val_idx[k:k + batch_size]]) for k in range(0, n_val, batch_size)]
        return _rms(torch.cat(outs), reference[val_idx])

    t0 = time.perf_counter()
    best_val = init_val = validate()
    best, best_step = copy.deepcopy(params.state_dict()), 0
    queue: list[int] = []
    train_rms = []
    for step in range(1, steps + 1):
        if len(queue) < batch_size:
            queue += train_idx[torch.randperm(train_idx.numel(), generator=gen)].tolist()
        batch, queue = queue[:batch_size], queue[batch_size:]
        x0 = x_start[batch]
        if offsets is not None:
            x0 = x0 + offsets[batch].requires_grad_(True)
        with torch.enable_grad():
            out = params(denoiser, x0)
            loss = (out - reference[batch]).pow(2).mean()
            inputs = trainable + ([x0] if offsets is not None else [])
            grads = torch.autograd.grad(loss, inputs)
        for p, g in zip(trainable, grads):
            p.grad = g
        optimiser.step()
        schedule.step()
        if offsets is not None:  # normalised gradient step on each start, projected back into its ball
            g = grads[-1].flatten(1)
            moved = offsets[batch].flatten(1) - 0.1 * slack_radius * math.sqrt(g.shape[1]) * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
            limit = slack_radius * math.sqrt(g.shape[1])
            moved = moved * (limit / moved.norm(dim=1, keepdim=True).clamp_min(limit))
            offsets[batch] = moved.reshape(offsets[batch].shape).to(offsets.dtype)
        train_rms.append(float(loss.detach()) ** 0.5)
        if n_val and (step % val_every == 0 or step == steps):
            val = validate()
            if val < best_val:
                best_val, best, best_step = val, copy.deepcopy(params.state_dict()), step
            if log is not None:
                log(f"nfe {nfe} step {step}/{steps}: train rms {sum(train_rms[-val_every:]) / len(train_rms[-val_every:]):.4f}"
                    f" val rms {val:.4f} (best {best_val:.4f} at {best_step}, start {init_val:.4f})")
    if n_val:
        params.load_state_dict(best)
    else:
        best_step = steps
    solved_final = False
    if solve_final and "weights" in learn:
        params.solve_final_step(denoiser, x_start[train_idx], reference[train_idx], batch_size)
        val = validate()
        solved_final = not n_val or val < best_val
        if solved_final:
            best_val = val
        else:
            params.load_state_dict(best)
        if log is not None:
            log(f"nfe {nfe} final step solved by least squares: val rms {val:.4f} ({'kept' if solved_final else 'dropped'})")
    info = {"init_val_rms": init_val, "val_rms": best_val, "best_step": best_step, "fit_seconds": time.perf_counter() - t0,
            "train_rms": train_rms[-10:], "steps": steps, "lr": lr, "batch_size": batch_size, "n_train": int(train_idx.numel()),
            "n_val": n_val, "learn": sorted(learn), "slack": slack, "seed": seed, "per_channel": per_channel,
            "sigma_floor": params.s_floor,
            "solved_final": solved_final}
    return params.solver(tuple(noise.shape[1:]), info)


def evaluate(denoiser: Denoiser, solver: LearnedSolver, noise: Tensor, reference: Tensor, *, sigma_max: float | None = None,
             batch_size: int = 16) -> float:
    """RMS error over everything of the learned solver from ``sigma_max * noise`` against ``reference``."""
    sigma_max = float(solver.sigmas[0]) if sigma_max is None else sigma_max
    outs = [learned(denoiser, sigma_max * noise[k:k + batch_size], solver.sigmas, params=solver)
            for k in range(0, noise.shape[0], batch_size)]
    return _rms(torch.cat(outs), reference)
