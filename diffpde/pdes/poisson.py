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

from ._fd import DirichletProblem2D, apply_operator, nodal_source, solve_dirichlet
from .base import register
from .grf import grf


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
