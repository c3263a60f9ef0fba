"""The small machinery every solver shares: the denoiser call, sigma grids, hooks and the registry.

Frame: variance exploding, ``x = x0 + sigma * eps``. A denoiser is any callable
``D(x, sigma) -> x0_hat`` with ``x`` of shape ``[B, ...]`` and ``sigma`` of shape ``[B]``.

A solver is a flat function ``solver(denoiser, x, sigmas, *, hooks=(), generator=None,
callback=None, stats=None, **options) -> x`` that opens a :class:`Run` and walks the grid::

    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        x = ...                                   # the method's update
        x = run.end_step(i, x, denoised)          # NaN check, step-end hooks, callback
    return run.finish(x)

Step-end hooks are callables ``hook(x, sigma, step, denoised) -> x``: ``x`` is the state at the
end of step ``step`` (at noise level ``sigma == sigmas[step + 1]``), ``denoised`` the last
``x0_hat`` the step used. What a hook returns *is* the state the next step starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Hook = Callable[[Tensor, float, int, Tensor], Tensor]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``ndim`` dimensions."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but the target has only {ndim}")
    return x[(...,) + (None,) * missing]


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def check_sigmas(sigmas: Sequence[float] | Tensor) -> Tensor:
    """Validate a sigma grid and return it as a float64 CPU tensor.

    The grid must hold at least two finite, non-negative values, strictly decreasing and
    ending in exactly 0.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
    if s.numel() < 2:
        raise ValueError(f"a sigma grid needs at least 2 entries (one step), got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigma grid has non-finite entries: {s.tolist()}")
    if s[-1] != 0:
        raise ValueError(f"sigma grid must end in 0, it ends in {s[-1].item():g}")
    if (s < 0).any():
        raise ValueError("sigma grid has negative entries")
    diffs = s[1:] - s[:-1]
    if (diffs >= 0).any():
        i = int(torch.nonzero(diffs >= 0)[0])
        raise ValueError(
            f"sigma grid must be strictly decreasing; sigmas[{i}]={s[i].item():g} "
            f"<= sigmas[{i + 1}]={s[i + 1].item():g}"
        )
    return s


def check_finite(x: Tensor, what: str) -> None:
    """Raise a FloatingPointError naming ``what`` when ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite values in {what}")


class Run:
    """Book-keeping of one solver call: counted and checked denoiser calls, hooks, callbacks.

    Arguments:
        denoiser:  ``D(x, sigma) -> x0_hat`` in the VE frame.
        x:         initial state at ``sigmas[0]``; only its shape/dtype/device are read.
        sigmas:    the grid; validated and kept as float64.
        hooks:     step-end hooks ``hook(x, sigma, step, denoised) -> x`` applied in order.
        callback:  ``callback(info)`` after each step with a dict of
                   ``step, sigma, sigma_next, x, denoised, nfe``; its return value is ignored.
        stats:     a dict that receives ``nfe`` (network evaluations) and ``steps`` at the end.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Sequence[float] | Tensor,
        *,
        hooks: Sequence[Hook] | Hook | None = (),
        callback: Callable[[dict], object] | None = None,
        stats: dict | None = None,
    ) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise TypeError("x must be a tensor of shape [B, ...]")
        check_finite(x, "the initial state")
        self.denoiser = denoiser
        self.sigmas = check_sigmas(sigmas)
        if hooks is None:
            hooks = ()
        elif callable(hooks):
            hooks = (hooks,)
        self.hooks = tuple(hooks)
        self.callback = callback
        self.stats = stats
        self.shape = x.shape
        self.nfe = 0
        self.step = -1

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    def steps(self) -> Iterator[tuple[int, float, float]]:
        """Yield ``(i, sigma_i, sigma_{i+1})`` as Python floats (float64)."""
        s = self.sigmas.tolist()
        for i in range(len(s) - 1):
            self.step = i
            yield i, s[i], s[i + 1]

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Call the denoiser at noise level ``sigma`` (scalar or ``[B]``), count and check it."""
        sigma_b = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma_b.ndim == 0:
            sigma_b = sigma_b.expand(x.shape[0])
        out = self.denoiser(x, sigma_b)
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"denoiser returned shape {got} for input of shape {tuple(x.shape)}")
        check_finite(out, f"the denoiser output at step {self.step} (sigma={float(sigma_b[0]):g})")
        return out

    def end_step(self, i: int, x: Tensor, denoised: Tensor, sigma_next: float | None = None) -> Tensor:
        """Finish step ``i``: check for NaN, apply the step-end hooks, report to the callback."""
        if sigma_next is None:
            sigma_next = float(self.sigmas[i + 1])
        check_finite(x, f"the state after step {i} (sigma={sigma_next:g})")
        for hook in self.hooks:
            x = hook(x, sigma_next, i, denoised)
            if not isinstance(x, torch.Tensor) or x.shape != self.shape:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"hook {hook!r} returned shape {got}, expected {tuple(self.shape)}")
            check_finite(x, f"the state returned by hook {hook!r} after step {i} (sigma={sigma_next:g})")
        if self.callback is not None:
            self.callback(
                {"step": i, "sigma": float(self.sigmas[i]), "sigma_next": sigma_next,
                 "x": x, "denoised": denoised, "nfe": self.nfe}
            )
        return x

    def finish(self, x: Tensor) -> Tensor:
        """Record statistics and return the final state."""
        if self.stats is not None:
            self.stats["nfe"] = self.nfe
            self.stats["steps"] = self.num_steps
        return x


# ---------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class SolverInfo:
    """What the registry knows of a solver."""

    name: str
    fn: Callable[..., Tensor]
    order: int              # nominal convergence order of the deterministic part (1 for SDEs)
    nfe_per_step: int       # network evaluations per step (the last step may use fewer)
    stochastic: bool        # draws noise (uses ``generator``)
    description: str = ""

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs)


SOLVERS: dict[str, SolverInfo] = {}


def register(name: str, *, order: int, nfe_per_step: int, stochastic: bool, description: str = ""):
    """Decorator that registers a solver function under ``name``."""

    def wrap(fn):
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = SolverInfo(name, fn, order, nfe_per_step, stochastic, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return wrap


def get_solver(name: str) -> SolverInfo:
    """Look a solver up by name; an unknown name lists the known ones."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; known solvers: {', '.join(sorted(SOLVERS))}") from None


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (on its device)."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return noise.to(x.device)

