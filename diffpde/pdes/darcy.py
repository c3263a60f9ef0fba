"""Darcy flow ``-div(a grad u) = f`` on [0, 1]^2 with ``u = 0`` on the boundary.

Inputs follow FNO and DiffusionPDE: a two-phase permeability ``a = a_high`` where a Gaussian random
field ``psi ~ N(0, (-Laplacian + tau^2)^(-alpha))`` (alpha 2, tau 3, cosine series, i.e. the
Neumann variant of :func:`diffpde.pdes.grf.grf`, zero mean) is ``>= 0`` and ``a_low`` elsewhere
(12 and 3), and a constant source ``f = 1``. FNO's MATLAB generator draws the same cosine series on
a cell-centred grid; here it lives on the vertex grid ``x_j = j/(n-1)``.

Discretisation: conservative five-point finite differences with harmonic-mean face permeabilities
(:mod:`diffpde.pdes._fd`), second order for smooth ``a``, sparse direct solve.

Residual ``[B, n, n]``: ``-div(a grad u) - f`` at interior nodes with the solver's operator (so it is
round-off on solver output) and ``u / h^2`` at boundary nodes, all in units of ``f``. It uses the
constant parameter ``f``. Harmonic means need ``a > 0``; near ``a_1 + a_2 = 0`` they blow up.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from . import captions as cap
from ._fd import DirichletProblem2D, apply_operator, coordinates, nodal_source, solve_dirichlet
from .base import register
from .grf import grf


CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("Darcy flow through a two-phase porous medium on the unit square",
                    "pressure in a binary permeability field with zero boundary pressure",
                    "a Darcy problem with a two-phase permeability"),),
    ),
    clauses=(
        cap.Clause(("permeabilities {a_high} and {a_low}", "high permeability {a_high}, low permeability {a_low}"),
                   {"a_high": cap.Number("float", 2), "a_low": cap.Number("float", 2)}),
        cap.Clause(("a permeability contrast of {contrast}", "contrast ratio {contrast}"),
                   {"contrast": cap.Number("float", 2)}),
        cap.Clause(("{high_fraction} high-permeability material", "a high-permeability fraction of {high_fraction}",
                    "high phase covering {high_fraction} of the domain"), {"high_fraction": cap.Number("percent")},
                   optional=False),
        cap.Clause(("high-permeability regions: {n_inclusions}",
                    "a count of {n_inclusions} separate high-permeability regions"),
                   {"n_inclusions": cap.Number("int")}),
        cap.Clause(("the largest high-permeability region centred at ({inclusion_x}, {inclusion_y}) covering "
                    "{inclusion_area}",
                    "a main inclusion at x = {inclusion_x}, y = {inclusion_y} of area {inclusion_area}"),
                   {"inclusion_x": cap.Number("coord", 2), "inclusion_y": cap.Number("coord", 2),
                    "inclusion_area": cap.Number("percent")}),
        cap.Clause(("a uniform source term {f}", "constant forcing f = {f}"), {"f": cap.Number("float", 3)}),
        cap.Clause(("peak pressure {u_max} at ({u_max_x}, {u_max_y})",
                    "maximum pressure {u_max} near x = {u_max_x}, y = {u_max_y}"),
                   {"u_max": cap.Number("sci", 2), "u_max_x": cap.Number("coord", 2),
                    "u_max_y": cap.Number("coord", 2)}),
        cap.Clause(("mean pressure {u_mean}", "an average pressure of {u_mean}"), {"u_mean": cap.Number("sci", 2)}),
    ),
)


@register
class Darcy(DirichletProblem2D):
    """Darcy flow on the ``n x n`` vertex grid; fields ``a`` (permeability) and ``u`` (pressure)."""

    name = "darcy"
    defaults = {
        "f": 1.0,       # constant source
        "a_high": 12.0, # permeability where the GRF is >= 0
        "a_low": 3.0,   # permeability where the GRF is < 0
        "alpha": 2.0,   # GRF smoothness
        "tau": 3.0,     # GRF inverse length scale
    }
    # The cosine-series GRF, its threshold, the constant source, the zero boundary values and the
    # five-point stencil with harmonic-mean faces are all invariant under the square's reflections.
    symmetries = ("flip_x", "flip_y", "transpose")
    caption_vocabulary = CAPTIONS
    input_description = "permeability (two-phase)"
    output_description = "pressure"

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        p = self.parameters
        for key in self.defaults:
            if not isinstance(p[key], (int, float)) or isinstance(p[key], bool) or not np.isfinite(p[key]):
                raise ValueError(f"darcy: parameter {key} must be a finite number, got {p[key]!r}")
        if p["a_high"] <= 0 or p["a_low"] <= 0:
            raise ValueError(f"darcy: permeabilities must be positive, got a_high={p['a_high']}, a_low={p['a_low']}")
        if p["alpha"] <= 0 or p["tau"] <= 0:
            raise ValueError(f"darcy: GRF needs alpha > 0 and tau > 0, got alpha={p['alpha']}, tau={p['tau']}")

    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """``{"a": [n, res, res]}``: thresholded GRFs; sample ``i`` equals ``generate(seed + i)["a"]``."""
        p = self.parameters
        psi = grf(n, self.resolution, p["alpha"], p["tau"], dim=2, boundary="neumann", seed=seed)
        return {"a": np.where(psi >= 0, float(p["a_high"]), float(p["a_low"]))}

    def solve(self, a: Any, f: Any = None) -> np.ndarray:
        """Pressure ``u`` ``[n, n]`` (float64, zero on the boundary) for permeability ``a`` ``[n, n]`` > 0.

        ``f``: the source, ``None`` for the constant parameter ``f``, else a number, an ``[n, n]``
        array or a callable ``f(x, y)`` evaluated at the nodes.
        """
        a = self.check_array("a", a)
        if (a <= 0).any():
            raise ValueError(f"darcy: permeability a must be positive everywhere; min is {a.min():g} ({int((a <= 0).sum())} nodes <= 0)")
        source = nodal_source(self.parameters["f"] if f is None else f, self.resolution, "source f", self.name)
        return solve_dirichlet(source, a)

    def interior_residual(self, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``-div(a grad u) - f`` at interior nodes (harmonic-mean faces, ``1/h^2`` scaling)."""
        return apply_operator(u, a) - self.parameters["f"]

    def two_phase_fields(self) -> dict[str, tuple[float, float]]:
        """The permeability ``a`` takes ``a_low`` or ``a_high``."""
        return {"a": (float(self.parameters["a_low"]), float(self.parameters["a_high"]))}

    def describe(self, fields: Mapping[str, Any] | None = None) -> str:
        p, n = self.parameters, self.resolution
        text = (
            f"Darcy flow -div(a grad u) = {p['f']:g} on [0,1]^2, {n}x{n} vertex grid, u = 0 on the boundary, "
            f"two-phase permeability {{{p['a_high']:g}, {p['a_low']:g}}}"
        )
        if fields is not None and "a" in fields:
            a = self.instance(fields, "a")
            text += f", high-permeability fraction {(abs(a - p['a_high']) < abs(a - p['a_low'])).mean():.2f}"
        return text

    def features(self, fields: Mapping[str, Any]) -> dict[str, float]:
        """The numbers captions state (:mod:`diffpde.pdes.captions`) of one instance ``{"a", "u"}``.

        The permeability's phases are split at the midpoint of ``(a_low, a_high)``. From ``a``:
        ``a_high``/``a_low`` (the mean permeability of each phase), ``contrast`` (their ratio),
        ``high_fraction`` (fraction of nodes in the high phase), ``n_inclusions`` (connected
        high-phase regions, 4-neighbours) and the largest of them (``inclusion_x``, ``inclusion_y``:
        its centre; ``inclusion_area``: fraction of the nodes). Parameter: ``f`` (the source). From
        ``u``: ``u_max`` and where (``u_max_x``, ``u_max_y``), ``u_mean``.
        """
        p = self.parameters
        a, u = self.one_sample(fields, "a"), self.one_sample(fields, "u")
        x = coordinates(self.resolution)
        high = a >= 0.5 * (p["a_low"] + p["a_high"])
        out = {"f": float(p["f"]), "high_fraction": float(high.mean()), "u_max": float(u.max()),
               "u_mean": float(u.mean())}
        i, j = np.unravel_index(int(np.argmax(u)), u.shape)
        out["u_max_x"], out["u_max_y"] = float(x[j]), float(x[i])
        if high.any():
            out["a_high"] = float(a[high].mean())
        if not high.all():
            out["a_low"] = float(a[~high].mean())
        if "a_high" in out and "a_low" in out and out["a_low"] > 0:
            out["contrast"] = out["a_high"] / out["a_low"]
        region = cap.largest_region(high, x, x, periodic=False)
        out["n_inclusions"] = float(region["count"]) if region is not None else 0.0
        if region is not None:
            out.update({"inclusion_x": region["x"], "inclusion_y": region["y"], "inclusion_area": region["area"]})
        return out
