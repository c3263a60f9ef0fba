"""Poisson equation ``laplacian(u) = a`` on [0, 1]^2 with ``u = 0`` on the boundary.

The source ``a`` is a Gaussian random field ``N(0, sigma^2 (-Laplacian + tau^2)^(-alpha))`` with
alpha 2, tau 3 and FNO's amplitude, drawn as the cosine (Neumann) series of
:func:`diffpde.pdes.grf.grf` on the vertex grid, as DiffusionPDE draws its Poisson and Helmholtz
sources (FNO's Darcy field). ``grf="dirichlet"`` draws a sine series instead, which vanishes on the
boundary. Source values at boundary nodes are stored but do not enter the equation (it holds at
interior nodes; the boundary carries ``u = 0``).

Discretisation: five-point Laplacian (:mod:`diffpde.pdes._fd`), second order, sparse direct solve.
Residual ``[B, n, n]``: ``laplacian(u) - a`` at interior nodes with the solver's stencil and
``u / h^2`` at boundary nodes, all in units of ``a``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from . import captions as cap
from ._fd import DirichletProblem2D, apply_operator, coordinates, nodal_source, solve_dirichlet
from .base import register
from .grf import grf


#: clauses of the source and the solution, shared with Helmholtz
SOURCE_CLAUSES = (
    cap.Clause(("source rms {a_rms}", "a source of rms amplitude {a_rms}"), {"a_rms": cap.Number("float", 2)},
               optional=False),
    cap.Clause(("source dominated by wavenumber {a_k}", "a source with dominant wavenumber {a_k}"),
               {"a_k": cap.Number("float", 2)}),
    cap.Clause(("the strongest {source_sign} source lobe at ({source_x}, {source_y}) with radius {source_r}",
                "a {source_sign} source peak of {source_peak} centred at x = {source_x}, y = {source_y}, "
                "radius {source_r}"),
               {"source_x": cap.Number("coord", 2), "source_y": cap.Number("coord", 2),
                "source_r": cap.Number("float", 2), "source_peak": cap.Number("float", 2)},
               {"source_sign": cap.signed("source_sign", "positive", "negative")}),
    cap.Clause(("solution extremum {u_ext} at ({u_ext_x}, {u_ext_y})",
                "the solution reaching {u_ext} at x = {u_ext_x}, y = {u_ext_y}"),
               {"u_ext": cap.Number("sci", 2), "u_ext_x": cap.Number("coord", 2), "u_ext_y": cap.Number("coord", 2)}),
    cap.Clause(("solution energy {energy}", "mean u^2/2 of {energy}"), {"energy": cap.Number("sci", 2)}),
)

CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("Poisson problem on the unit square with zero boundary values",
                    "the Poisson equation with a random source and homogeneous Dirichlet boundaries",
                    "a solution of laplacian(u) = a on [0, 1]^2"),),
    ),
    clauses=SOURCE_CLAUSES,
)


@register
class Poisson(DirichletProblem2D):
    """``laplacian(u) = a`` on the ``n x n`` vertex grid; fields ``a`` (source) and ``u`` (solution)."""

    name = "poisson"
    defaults = {
        "alpha": 2.0,      # source GRF smoothness
        "tau": 3.0,        # source GRF inverse length scale
        "grf": "neumann",  # source GRF series: "neumann" (cosine) or "dirichlet" (sine)
    }
    # The square's reflections (the cosine and sine GRF series and the stencil are invariant), and
    # the sign of (a, u): the problem is linear and the source a zero-mean Gaussian.
    symmetries = ("flip_x", "flip_y", "transpose", "negate")
    odd_fields = {"negate": ("a", "u")}
    caption_vocabulary = CAPTIONS
    input_description = "source"
    output_description = "solution"

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        p = self.parameters
        if p["grf"] not in ("neumann", "dirichlet"):
            raise ValueError(f"{self.name}: parameter grf must be 'neumann' or 'dirichlet', got {p['grf']!r}")
        if not (p["alpha"] > 0 and p["tau"] > 0):
            raise ValueError(f"{self.name}: GRF needs alpha > 0 and tau > 0, got alpha={p['alpha']}, tau={p['tau']}")

    @property
    def shift(self) -> float:
        """Zeroth-order coefficient ``c`` of the operator ``-laplacian + c`` the solver inverts."""
        return 0.0

    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """``{"a": [n, res, res]}`` source GRFs; sample ``i`` equals ``generate(seed + i)["a"]``."""
        p = self.parameters
        return {"a": grf(n, self.resolution, p["alpha"], p["tau"], dim=2, boundary=p["grf"], seed=seed)}

    def solve(self, a: Any) -> np.ndarray:
        """Solution ``u`` ``[n, n]`` (float64, zero on the boundary) for the source ``a``.

        ``a``: an ``[n, n]`` array, a number or a callable ``a(x, y)`` evaluated at the nodes.
        """
        source = nodal_source(a, self.resolution, "source a", self.name)
        # laplacian(u) + k^2 u = a  <=>  (-laplacian + shift) u = -a  with shift = -k^2
        return solve_dirichlet(-source, None, self.shift)

    def interior_residual(self, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``laplacian(u) [+ k^2 u] - a`` at interior nodes (five-point stencil, ``1/h^2`` scaling)."""
        return -apply_operator(u, None, self.shift) - a[..., 1:-1, 1:-1]

    def features(self, fields: Mapping[str, Any]) -> dict[str, float]:
        """The numbers captions state (:mod:`diffpde.pdes.captions`) of one instance ``{"a", "u"}``.

        From the source ``a``: ``a_rms``, ``a_k`` (dominant wavenumber, type-I DCT), its strongest lobe
        (:func:`captions.main_structure`: ``source_x``, ``source_y``, ``source_r``, ``source_peak`` =
        ``|a|`` there, ``source_sign``). From ``u``: its extremum ``u_ext`` (signed, largest ``|u|``) and
        where (``u_ext_x``, ``u_ext_y``), ``energy`` = ``mean(u^2) / 2``.
        """
        a, u = self.one_sample(fields, "a"), self.one_sample(fields, "u")
        x = coordinates(self.resolution)
        out = {"a_rms": float(np.sqrt((a**2).mean())), "a_k": cap.dominant_wavenumber(a, (-2, -1), periodic=False),
               "energy": cap.mean_energy(u)}
        lobe = cap.main_structure(a, x, x, periodic=False)
        if lobe is not None:
            out.update({"source_x": lobe["x"], "source_y": lobe["y"], "source_r": lobe["radius"],
                        "source_peak": lobe["peak"], "source_sign": lobe["sign"]})
        i, j = np.unravel_index(int(np.argmax(np.abs(u))), u.shape)
        out.update({"u_ext": float(u[i, j]), "u_ext_x": float(x[j]), "u_ext_y": float(x[i])})
        return {k: v for k, v in out.items() if v is not None}

    def equation(self) -> str:
        return "Poisson equation laplacian(u) = a"

    def describe(self, fields: Mapping[str, Any] | None = None) -> str:
        p, n = self.parameters, self.resolution
        text = (
            f"{self.equation()} on [0,1]^2, {n}x{n} vertex grid, u = 0 on the boundary, "
            f"source a ~ GRF(alpha {p['alpha']:g}, tau {p['tau']:g}, {p['grf']})"
        )
        if fields is not None and "a" in fields:
            text += f", source rms {np.sqrt((self.instance(fields, 'a') ** 2).mean()):.3g}"
        if fields is not None and "u" in fields:
            text += f", max |u| {np.abs(self.instance(fields, 'u')).max():.3g}"
        return text
