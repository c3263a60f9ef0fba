"""Solvers fitted to one prior, kept with it: learned few-step solvers and DPM-Solver-v3's statistics.

Two solvers of :mod:`samplers` need something measured on the prior before they run:

- ``learned`` (:mod:`samplers.learned`): a sigma grid, per-step multistep weights and noise-level
  shifts for one NFE budget, fitted to end points of the prior's probability-flow ODE (a fine Heun
  solve) from fit noises of their own seed;
- ``dpm_solver_v3`` (:mod:`samplers.dpm_solver_v3`): the empirical model statistics, measured on
  the prior's own samples.

:func:`fitted_solver` returns what the solver needs (its options, and for ``learned`` its grid):
read from ``<prior>/solvers/`` when a state fitted to these weights is there (see
:mod:`diffpde.models.solver_state`), else fitted when ``fit=True`` and saved there, else an error
that names the command that fits it (``diffpde fit-solver``). Fitting uses noises that no sampling
call uses (seeds of their own), so a fitted solver is never evaluated on its fit noises.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from samplers import get_solver
from samplers.dpm_solver_v3 import EMS, KIND as EMS_KIND, compute_ems
from samplers.learned import KIND as LEARNED_KIND, LearnedSolver, fit_learned_solver
from samplers.tuning import calibrate, optimized_sigmas

from ..models.solver_state import cached_solver_state, load_solver_state, register_state_kind

Tensor = torch.Tensor

register_state_kind(LEARNED_KIND, "samplers.learned:LearnedSolver")
register_state_kind(EMS_KIND, "samplers.dpm_solver_v3:EMS")

#: solver name -> the option that carries its fitted state
FITTED_SOLVERS = {"learned": "params", "dpm_solver_v3": "ems"}
#: seeds of the fit noises (sampling draws from generators seeded by the user's seed; these are apart)
FIT_SEED, EMS_SEED = 7_000_001, 7_000_002


def state_name(solver: str, nfe: int | None = None) -> str:
    """File name of a fitted state: ``learned-nfe10`` (one per NFE) or ``dpm_solver_v3`` (one per prior)."""
    if solver == "learned":
        if not nfe or nfe < 1:
            raise ValueError("a learned solver is fitted for one NFE budget; give steps >= 1")
        return f"learned-nfe{int(nfe)}"
    if solver == "dpm_solver_v3":
        return "dpm_solver_v3"
    raise ValueError(f"solver {solver!r} is not fitted to a prior; fitted solvers: {', '.join(FITTED_SOLVERS)}")


def _frozen(prior) -> Callable[[Tensor, Tensor], Tensor]:
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior.denoiser()


def reference_end_points(prior, noise: Tensor, *, steps: int = 200, batch: int = 16) -> Tensor:
    """End points of the prior's probability-flow ODE from ``sigma_max * noise``: Heun on a Karras grid (rho 7)."""
    den = _frozen(prior)
    grid = prior.sigmas(steps, "karras")
    with torch.no_grad():
        return torch.cat([get_solver("heun")(den, float(grid[0]) * noise[k:k + batch], grid)
                          for k in range(0, noise.shape[0], batch)])


def fit_learned(prior, nfe: int, *, n_fit: int = 48, ref_steps: int = 200, iterations: int = 150, lr: float = 0.04,
                batch_size: int = 6, history: int = 5, per_channel: bool = True, seed: int = FIT_SEED,
                log: Callable[[str], None] | None = None) -> LearnedSolver:
    """Fit a learned ``nfe``-step solver to the prior (grid, weights, shifts), started from DPM-Solver++(2M)
    on the grid of :func:`samplers.tuning.optimized_sigmas`; fit noises of ``seed``, a quarter held out.
    The defaults are the settings of the README's Darcy table (NFE 8, 10)."""
    log = log or (lambda s: None)
    den = _frozen(prior)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_fit, *prior.latent_shape, generator=g)
    t0 = time.perf_counter()
    reference = reference_end_points(prior, noise, steps=ref_steps)
    log(f"learned nfe {nfe}: {n_fit} reference end points ({ref_steps} Heun steps) in {time.perf_counter() - t0:.0f} s")
    lo, hi = float(prior.sigma_min), float(prior.sigma_max)
    calib = noise[: min(8, n_fit)] * hi
    with torch.no_grad():
        calibration = calibrate(den, calib, sigma_max=hi, sigma_min=lo, fine_steps=48, rtol=1e-5)
        grid = optimized_sigmas(den, calib, nfe, solver="dpmpp_2m", calibration=calibration)
    return fit_learned_solver(den, noise, reference, nfe=nfe, sigma_min=lo, sigma_max=hi, init_sigmas=grid,
                              base="dpmpp_2m", history=history, per_channel=per_channel, steps=iterations, lr=lr,
                              batch_size=batch_size, seed=seed, log=log)


def fit_statistics(prior, *, n_samples: int = 128, sample_steps: int = 20, n_grid: int = 24, batch: int = 64,
                   seed: int = EMS_SEED, log: Callable[[str], None] | None = None) -> EMS:
    """DPM-Solver-v3's statistics of the prior, measured on ``n_samples`` of its own samples
    (DPM-Solver++(2M), ``sample_steps`` Karras steps)."""
    den = _frozen(prior)
    g = torch.Generator().manual_seed(seed)
    grid = prior.sigmas(sample_steps, "karras")
    with torch.no_grad():
        x0 = torch.cat([get_solver("dpmpp_2m")(den, float(grid[0]) * torch.randn(min(batch, n_samples - k),
                                                                                 *prior.latent_shape, generator=g), grid)
                        for k in range(0, n_samples, batch)])
    return compute_ems(den, x0, sigma_min=float(prior.sigma_min), sigma_max=float(prior.sigma_max), n_grid=n_grid,
                       batch=batch, generator=g, log=log)


def fitted_solver(prior, solver: str, steps: int, *, prior_dir: str | os.PathLike | None = None, fit: bool = False,
                  refit: bool = False, log: Callable[[str], None] | None = None,
                  **fit_options: Any) -> tuple[Tensor | None, dict[str, Any]]:
    """``(grid or None, solver options)`` of a fitted solver for ``prior`` at ``steps`` steps.

    ``prior_dir`` defaults to the directory the prior was loaded from (``prior.source_dir``). The
    state is read from there; a missing one is fitted (and saved) when ``fit`` is true, else a
    ``FileNotFoundError`` names ``diffpde fit-solver``. ``learned`` returns its own grid (it was
    fitted for it); ``dpm_solver_v3`` works on any grid in the prior's range (``None``).
    """
    name = state_name(solver, steps)
    prior_dir = prior_dir if prior_dir is not None else getattr(prior, "source_dir", None)
    if solver == "learned":
        def do_fit():
            return fit_learned(prior, steps, log=log, **fit_options)
    else:
        def do_fit():
            return fit_statistics(prior, log=log, **fit_options)
    if fit or refit:
        state = cached_solver_state(prior_dir, name, prior, do_fit, refit=refit, log=log)
    else:
        if prior_dir is None:
            raise FileNotFoundError(f"solver {solver!r} needs a state fitted to the prior, and this prior has no "
                                    f"directory to read it from; fit it with diffpde.inference.fitted.fitted_solver(..., fit=True)")
        try:
            state = load_solver_state(prior_dir, name, prior=prior)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"solver {solver!r} at {steps} steps needs a state fitted to this prior ({Path(prior_dir) / 'solvers' / name}"
                f" is missing); fit it first: diffpde fit-solver {prior_dir} --solver {solver}"
                + (f" --nfe {steps}" if solver == "learned" else "")) from None
    if solver == "learned":
        if state.nfe != steps:
            raise ValueError(f"the learned solver in {name} has {state.nfe} steps, not {steps}")
        return state.sigmas, {"params": state}
    return None, {"ems": state}


def describe(state: Any) -> str:
    """One line about a fitted state (for the command line)."""
    if isinstance(state, LearnedSolver):
        info = state.info or {}
        start, best = info.get("init_val_rms"), info.get("val_rms")
        return (f"learned solver, {state.nfe} steps, base {state.base}, grid "
                + " ".join(f"{s:.3g}" for s in state.sigmas.tolist())
                + (f", validation rms {start:.4g} -> {best:.4g}" if isinstance(start, float) and isinstance(best, float)
                   else ""))
    if isinstance(state, EMS):
        return f"DPM-Solver-v3 statistics on {tuple(state.l.shape[0:1])[0]} noise levels, shape {list(state.shape)}"
    return type(state).__name__
