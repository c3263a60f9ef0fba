"""A figure of one reconstruction: truth, observations, posterior mean, posterior std and error.

One row per generated field. 2D fields are images (``origin="lower"``, axes named after the field's
dims with the grid's physical extent when a PDE family is given); for 3D fields (trajectories
``[t, y, x]``) the last entry of the first axis is shown; 1D fields get one panel with the truth,
the observations and the mean with a two-std band. Truth, observations and mean share one colour
scale; the posterior std and ``|error|`` each have their own (an error far below the field's scale
stays visible). Fields the PDE family declares two-phase (``PDE.two_phase_fields``) get the
error rate in the mean's title and the phase boundary (the midpoint contour) drawn on the truth
and the mean. Drawn on a bare matplotlib ``Figure`` with the Agg canvas (no pyplot, no change to
the user's backend).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from .observations import MaskObservation, Observations, StackedObservation


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64) if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def _observed_points(observations: Observations | None, name: str, instance: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Grid indices ``[m, ndim]`` and values ``[m]`` of the observations of field ``name``."""
    if observations is None:
        return None
    op = observations.operator
    ops = op.operators if isinstance(op, StackedObservation) else (op,)
    values = _numpy(observations.values[min(instance, observations.batch_size - 1)])
    start = 0
    for o in ops:
        stop = start + o.num_measurements
        if isinstance(o, MaskObservation) and o.field == name:
            return o.coordinates(), values[start:stop]
        start = stop
    return None


def _grid_info(problem: Any, name: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Axis names and coordinates of a field (indices when no PDE family is known)."""
    try:
        field = problem.field(name)
        coords = [np.asarray(problem.grid.coords[d], dtype=np.float64) for d in field.dims]
        if tuple(len(c) for c in coords) == tuple(shape):
            return tuple(field.dims), coords
    except (AttributeError, KeyError, ValueError, TypeError):
        pass
    dims = ("i",) if len(shape) == 1 else tuple(f"index {k}" for k in range(len(shape)))
    return dims, [np.arange(n, dtype=np.float64) for n in shape]


def _title_name(problem: Any, name: str) -> str:
    try:
        desc = problem.field(name).description
    except (AttributeError, KeyError, ValueError, TypeError):
        desc = ""
    return f"{name} – {desc}" if desc else name


def _edges(c: np.ndarray) -> tuple[float, float]:
    h = float(c[1] - c[0]) if len(c) > 1 else 1.0
    return float(c[0]) - h / 2, float(c[-1]) + h / 2


def _rel_l2(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - truth) / max(np.linalg.norm(truth), 1e-30))


def _problem(problem: Any) -> Any:
    """A PDE family instance from a PDE, a prior (its ``problem``) or ``None``."""
    if problem is None or (hasattr(problem, "field") and hasattr(problem, "grid")):
        return problem
    try:
        return problem.problem
    except (AttributeError, ValueError):
        return None


def reconstruction_figure(truth: Mapping[str, Any] | None, posterior: Any, observations: Observations | None,
                          instance: int = 0, *, problem: Any = None, title: str | None = None):
    """The figure of instance ``instance`` of a reconstruction (a matplotlib ``Figure``, Agg canvas).

    Arguments:
        truth:        ``{field: [B, *grid]}`` in physical units, or ``None`` (no truth and error columns).
        posterior:    a :class:`~.tasks.Posterior` (or anything with ``.mean``/``.std``/``.num_samples``).
        observations: scattered on the truth (or on a blank grid without truth); ``None`` for none.
        problem:      the PDE family instance or the prior: axis names and coordinates, field
                      descriptions, two-phase fields. Without it axes are array indices.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    problem = _problem(problem)
    two_phase = problem.two_phase_fields() if problem is not None else {}
    mean = {k: _numpy(v[instance]) for k, v in posterior.mean.items()}
    std = {k: _numpy(v[instance]) for k, v in posterior.std.items()}
    if truth is not None:
        truth = {k: _numpy(truth[k][instance]) for k in mean if k in truth}
    names = list(mean)
    columns = (["truth"] if truth else []) + ["observations", "posterior mean", "posterior std"] + (["|error|"] if truth else [])
    ncol = len(columns)
    # a bare Figure on the Agg canvas: no pyplot state, the user's backend is left alone
    fig = Figure(figsize=(3.6 * ncol, 3.0 * len(names)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), ncol, squeeze=False)
    for row, name in zip(axes, names):
        m, s = mean[name], std[name]
        t = truth.get(name) if truth else None
        points = _observed_points(observations, name, instance)
        dims, coords = _grid_info(problem, name, m.shape)
        note = ""
        if m.ndim == 3:  # a trajectory [t, y, x]: show the last time
            m, s, t = m[-1], s[-1], (t[-1] if t is not None else None)
            if points is not None:
                keep = points[0][:, 0] == mean[name].shape[0] - 1
                points = (points[0][keep][:, 1:], points[1][keep])
            note = f", last {dims[0]}"
            dims, coords = dims[1:], coords[1:]
        label = _title_name(problem, name)
        if m.ndim == 1:
            _plot_1d(fig, row, m, s, t, points, coords[0], dims[0], label)
            continue
        if m.ndim != 2:
            for ax in row:
                ax.set_axis_off()
            row[0].set_title(f"{label}: {m.ndim}D fields are not plotted")
            continue
        extent = (*_edges(coords[1]), *_edges(coords[0]))  # pixels centred on the nodes
        scale_fields = [m] + ([t] if t is not None else []) + ([points[1]] if points is not None and len(points[1]) else [])
        lo = min(float(np.min(f)) for f in scale_fields)
        hi = max(float(np.max(f)) for f in scale_fields)
        err = np.abs(m - t) if t is not None else None
        mid = 0.5 * sum(two_phase[name]) if name in two_phase else None
        panels = dict(zip(columns, row))

        def show(ax, image, cmap, vmin, vmax, text, boundary=False):
            im = ax.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                           interpolation="nearest")
            if boundary and mid is not None and image.min() < mid < image.max():
                ax.contour(coords[1], coords[0], image, levels=[mid], colors="w", linewidths=0.8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            ax.set_title(text, fontsize=9)
            ax.set_xlabel(dims[1], fontsize=8)
            ax.set_ylabel(dims[0], fontsize=8)
            ax.tick_params(labelsize=7)

        if t is not None:
            show(panels["truth"], t, "viridis", lo, hi, f"{label}: truth{note}", boundary=True)
        ax = panels["observations"]
        if t is not None:  # the truth faintly in gray behind the points
            ax.imshow(t, origin="lower", extent=extent, cmap="gray", vmin=lo, vmax=hi, aspect="auto",
                      interpolation="nearest", alpha=0.35)
        else:
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
        ax.set_xlabel(dims[1], fontsize=8)
        ax.set_ylabel(dims[0], fontsize=8)
        ax.tick_params(labelsize=7)
        if points is not None and len(points[1]):
            idx, vals = points
            xs, ys = coords[1][idx[:, 1]], coords[0][idx[:, 0]]
            size = max(4.0, min(40.0, 4000.0 / len(vals)))
            sc = ax.scatter(xs, ys, c=vals, cmap="viridis", vmin=lo, vmax=hi, s=size, edgecolors="k", linewidths=0.4)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.03)
            ax.set_title(f"{name}: {len(vals)} observations ({100 * len(vals) / m.size:.3g} %)", fontsize=9)
        else:
            fig.colorbar(ScalarMappable(Normalize(lo, hi), "viridis"), ax=ax,
                         fraction=0.046, pad=0.03)
            ax.set_title(f"{name}: not observed", fontsize=9)
        text = f"{name}: posterior mean (K={posterior.num_samples})"
        if t is not None:
            text += f"\nrel L2 {_rel_l2(m, t):.3g}"
            if mid is not None:
                text += f", error rate {100 * np.mean((m > mid) != (t > mid)):.3g} %"
        show(panels["posterior mean"], m, "viridis", lo, hi, text, boundary=True)
        show(panels["posterior std"], s, "magma", 0.0, max(float(s.max()), 1e-30),
             f"{name}: posterior std\nmean {s.mean():.3g}")
        if err is not None:
            show(panels["|error|"], err, "magma", 0.0, max(float(err.max()), 1e-30),
                 f"{name}: |mean - truth|\nRMS {np.sqrt((err ** 2).mean()):.3g}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_reconstruction(truth: Mapping[str, Any] | None, posterior: Any, observations: Observations | None,
                        path: str | os.PathLike, instance: int = 0, *, problem: Any = None,
                        title: str | None = None, dpi: int = 110) -> str:
    """Write the PNG of :func:`reconstruction_figure` (same arguments) and return its path.

    The file is written to a temporary name and renamed.
    """
    fig = reconstruction_figure(truth, posterior, observations, instance, problem=problem, title=title)
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _plot_1d(fig, row, m, s, t, points, x, dim, label) -> None:
    """A 1D field on two panels spanning the row: truth, observations and mean +- 2 std; std and |error|."""
    grid = row[0].get_subplotspec().get_gridspec()
    r = row[0].get_subplotspec().rowspan.start
    for ax in row:
        ax.remove()
    split = max(1, len(row) - 2)
    ax = fig.add_subplot(grid[r, :split])
    if t is not None:
        ax.plot(x, t, "k-", lw=1.2, label="truth")
    ax.plot(x, m, "C0-", lw=1.2, label="posterior mean")
    ax.fill_between(x, m - 2 * s, m + 2 * s, color="C0", alpha=0.25, label="mean ± 2 std")
    if points is not None and len(points[1]):
        ax.plot(x[points[0][:, 0]], points[1], "o", color="C3", ms=4, label=f"{len(points[1])} observations")
    ax.set_title(label + (f": rel L2 {_rel_l2(m, t):.3g}" if t is not None else ""), fontsize=9)
    ax.set_xlabel(dim, fontsize=8)
    ax.legend(fontsize=7)
    if split < len(row):
        ax = fig.add_subplot(grid[r, split:])
        ax.plot(x, s, "C1-", lw=1.2, label="posterior std")
        if t is not None:
            ax.plot(x, np.abs(m - t), "k-", lw=0.8, label="|mean - truth|")
        ax.set_xlabel(dim, fontsize=8)
        ax.set_title("spread and error", fontsize=9)
        ax.legend(fontsize=7)
