"""Super-resolution as a task: interpolation baselines, the classical solver at the fine resolution as
truth, the evaluation table and a t-x figure.

Truth. A coarse and a fine instance of one physical problem share the initial condition: the
coarse instance's ``u0`` (a periodic GRF on the coarse grid, a trigonometric polynomial) is
resampled spectrally to the fine grid (:func:`~diffpde.data.pairs.fourier_resample`, exact for it)
and the classical solver runs at the fine resolution on the coarse time grid refined by the time
factor. (Regenerating the fine instance from the same seed would not do: the GRF draws its white
noise on the grid, so the same seed gives another field at another resolution.)

Baselines (:data:`BASELINES`): the coarse field interpolated by the total factor at once with
:func:`~diffpde.data.pairs.upsample`: ``nearest``, ``linear`` (bilinear in (t, x)), ``spectral``
(Fourier zero-padding on periodic axes, the cosine interpolant on the time axis) and
``linear_t_spectral_x`` (the best of them on Burgers: Fourier in x, linear in t; it is the base
the residual prior adds to).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..data.pairs import downsample, fourier_resample, upsample

Tensor = torch.Tensor

__all__ = ["BASELINES", "interpolate", "burgers_truth", "relative_l2", "steps_for_nfe", "evaluate_superres",
           "superres_figure"]

#: name -> per-axis methods of :func:`~diffpde.data.pairs.upsample` for ``(t, x)`` fields.
BASELINES: dict[str, tuple[str, str]] = {
    "nearest": ("nearest", "nearest"),
    "linear": ("linear", "linear"),
    "spectral": ("spectral", "spectral"),
    "linear_t_spectral_x": ("linear", "spectral"),
}


def interpolate(coarse: Tensor, factors: Sequence[int], kinds: Sequence[str], method: str | Sequence[str]) -> Tensor:
    """A baseline: ``coarse`` ``[B, *grid]`` upsampled by ``factors`` per axis in one go (a name of
    :data:`BASELINES` or per-axis methods)."""
    methods = BASELINES.get(method, method) if isinstance(method, str) else tuple(method)
    return upsample(coarse.to(torch.float64), factors, kinds, methods)


def burgers_truth(problem: Any, u0: Tensor | np.ndarray, factors: Sequence[int]) -> Tensor:
    """The periodic Burgers trajectory of ``u0`` (on ``problem``'s grid) solved at the fine resolution.

    problem: the coarse :class:`~diffpde.pdes.burgers.Burgers` instance (resolution ``n``, times
             ``linspace(0, T, nt)``).
    u0:      ``[B, n]`` or ``[n]`` initial conditions on the coarse grid.
    factors: ``(f_t, f_x)``: the fine instance has ``n f_x`` points and ``f_t (nt - 1) + 1`` times.
    Returns ``[B, f_t (nt - 1) + 1, n f_x]`` float64 (module docstring).
    """
    from .. import pdes

    if getattr(problem, "name", None) != "burgers":
        raise NotImplementedError("burgers_truth needs the periodic Burgers family, "
                                  f"got {getattr(problem, 'name', problem)!r}")
    ft, fx = (int(f) for f in factors)
    u0 = torch.as_tensor(u0, dtype=torch.float64)
    u0 = u0[None] if u0.ndim == 1 else u0
    n, nt = problem.resolution, problem.nt
    fine = pdes.get("burgers", n * fx, **{**problem.parameters, "nt": ft * (nt - 1) + 1})
    if not np.allclose(fine.grid.coords["t"][::ft], problem.grid.coords["t"]):
        raise ValueError("the fine time grid does not contain the coarse one")
    return torch.as_tensor(fine.solve(fourier_resample(u0, n * fx).numpy()))


def relative_l2(estimate: Tensor, truth: Tensor) -> Tensor:
    """Per instance ``||estimate - truth|| / ||truth||`` over all grid points, ``[B]``."""
    d = (estimate.to(torch.float64) - truth.to(torch.float64)).flatten(1)
    return d.norm(dim=1) / truth.to(torch.float64).flatten(1).norm(dim=1)


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Solver steps that spend about ``nfe`` network evaluations (Heun's last step costs one)."""
    from samplers import SOLVERS

    per = SOLVERS[solver].nfe_per_step
    return max(1, (nfe + per - 1) // per)


def evaluate_superres(resolver: Any, coarse: Tensor, truths: Mapping[str, tuple[Sequence[int], Tensor]], *,
                      nfes: Sequence[int] = (10, 20), solver: str = "dpmpp_2m", batch_size: int = 4, seed: int = 0,
                      baselines: Sequence[str] = tuple(BASELINES),
                      samples: Mapping[str, Any] | None = None) -> list[dict]:
    """Relative L2 of super-resolution and of the interpolation baselines against the truth.

    coarse:  ``[N, *grid]`` coarse fields (physical units).
    truths:  ``{label: (total factors per axis, truth [N, *fine])}``, e.g. ``{"2x": ((2, 2), t256)}``.
    nfes:    network evaluations per refinement (a chain of ``k`` refinements spends ``k`` times as many).
    samples: if a dict, receives ``{(label, method): prediction}`` for figures.
    Returns rows ``{"case", "method", "nfe", "rel_l2", "rel_l2_std", "seconds_per_sample"}``; ``nfe``
    is the total over the chain (0 for baselines).
    """
    from ..models.superres import plan_factors

    kinds = resolver.spec.kinds if resolver is not None else ("interval", "periodic")
    rows = []
    for label, (factors, truth) in truths.items():
        for name in baselines:
            t0 = time.perf_counter()
            pred = interpolate(coarse, factors, kinds, name)
            seconds = (time.perf_counter() - t0) / len(coarse)
            err = relative_l2(pred, truth)
            rows.append({"case": label, "method": name, "nfe": 0, "rel_l2": float(err.mean()),
                         "rel_l2_std": float(err.std()) if len(err) > 1 else 0.0, "seconds_per_sample": seconds})
            if samples is not None:
                samples[(label, name)] = pred
        if resolver is None:
            continue
        chain = plan_factors(factors)
        for nfe in nfes:
            g = torch.Generator().manual_seed(seed)
            preds, total_nfe, t0 = [], 0, time.perf_counter()
            for i in range(0, len(coarse), batch_size):
                stats: dict[str, Any] = {}
                x = coarse[i:i + batch_size]
                for f in chain:
                    x = resolver.refine(x, f, solver=solver, steps=steps_for_nfe(solver, nfe), generator=g, stats=stats)
                    total_nfe += stats.get("nfe", 0) if i == 0 else 0
                preds.append(x)
            seconds = (time.perf_counter() - t0) / len(coarse)
            pred = torch.cat(preds)
            err = relative_l2(pred, truth)
            rows.append({"case": label, "method": f"superres ({solver})", "nfe": total_nfe, "rel_l2": float(err.mean()),
                         "rel_l2_std": float(err.std()) if len(err) > 1 else 0.0, "seconds_per_sample": seconds})
            if samples is not None:
                samples[(label, f"superres nfe {nfe}")] = pred
    return rows


def superres_figure(truth: Tensor, coarse: Tensor, estimate: Tensor, baseline: Tensor | None = None, *,
                    labels: Sequence[str] = ("truth", "coarse", "super-resolution", "|error|"),
                    baseline_label: str = "|baseline error|", extent: Sequence[float] = (0.0, 1.0, 0.0, 1.0),
                    path: str | None = None):
    """t-x images of one instance: truth, coarse, super-resolved, ``|error|`` (and a baseline's ``|error|``).

    ``truth``, ``estimate``, ``baseline`` ``[nt, nx]`` on the fine grid, ``coarse`` on its own;
    ``extent`` = ``(x0, x1, t0, t1)``. Truth, coarse and estimate share one colour scale, the
    errors another. Returns the matplotlib ``Figure`` (Agg canvas); written to ``path`` if given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arrays = [truth, coarse, estimate, (estimate - truth).abs()]
    names = list(labels)
    if baseline is not None:
        arrays.append((baseline - truth).abs())
        names.append(baseline_label)
    arrays = [a.detach().cpu().numpy() for a in arrays]
    fig = Figure(figsize=(3.2 * len(arrays), 3.0), constrained_layout=True)
    FigureCanvasAgg(fig)
    vmin, vmax = float(arrays[0].min()), float(arrays[0].max())
    emax = max(float(a.max()) for a in arrays[3:]) or 1.0
    for k, (a, name) in enumerate(zip(arrays, names)):
        ax = fig.add_subplot(1, len(arrays), k + 1)
        err = k >= 3
        im = ax.imshow(a, origin="lower", aspect="auto", extent=tuple(extent), cmap="magma" if err else "RdBu_r",
                       vmin=0 if err else vmin, vmax=emax if err else vmax, interpolation="nearest")
        ax.set_title(f"{name} {a.shape[0]}x{a.shape[1]}", fontsize=9)
        ax.set_xlabel("x")
        if k == 0:
            ax.set_ylabel("t")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def coarse_floor(coarse: Tensor, truth: Tensor, factors: Sequence[int], kinds: Sequence[str]) -> float:
    """Mean relative L2 of ``coarse`` against ``truth`` subsampled to the coarse grid: the error of the
    coarse field itself, which an estimate that keeps the coarse values inherits at the coarse points."""
    return float(relative_l2(coarse, downsample(truth, factors, kinds)).mean())
