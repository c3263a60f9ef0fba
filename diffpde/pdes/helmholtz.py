"""Helmholtz equation ``laplacian(u) + k^2 u = a`` on [0, 1]^2 with ``u = 0`` on the boundary.

Same grid, source distribution and discretisation as :mod:`diffpde.pdes.poisson` (DiffusionPDE's
inhomogeneous Helmholtz problem, ``k = 1`` by default). The discrete problem is singular when
``k^2`` is an eigenvalue of the discrete ``-laplacian`` (the smallest is about ``2 pi^2``); such
``k`` is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from typing import Mapping

from . import captions as cap
from ._fd import spacing
from .base import register
from .poisson import SOURCE_CLAUSES, Poisson

CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("Helmholtz problem on the unit square with zero boundary values",
                    "the Helmholtz equation with a random source and homogeneous Dirichlet boundaries",
                    "a solution of laplacian(u) + k^2 u = a on [0, 1]^2"),),
    ),
    clauses=(cap.Clause(("wavenumber k = {k}", "Helmholtz wavenumber {k}"), {"k": cap.Number("float", 3)},
                        optional=False),) + SOURCE_CLAUSES,
)


@register
class Helmholtz(Poisson):
    """``laplacian(u) + k^2 u = a`` on the ``n x n`` vertex grid; fields ``a`` (source) and ``u``."""

    name = "helmholtz"
    defaults = {**Poisson.defaults, "k": 1.0}  # k: wavenumber
    caption_vocabulary = CAPTIONS

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        k = self.parameters["k"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not np.isfinite(k):
            raise ValueError(f"helmholtz: wavenumber k must be a finite number, got {k!r}")
        # Eigenvalues of the discrete -laplacian: (4/h^2) (sin^2(p pi h/2) + sin^2(q pi h/2)), 1 <= p, q <= n-2.
        h = spacing(self.resolution)
        lam = 4 / h**2 * np.sin(np.arange(1, self.resolution - 1) * np.pi * h / 2) ** 2
        gap = np.abs(lam[:, None] + lam[None, :] - k**2).min()
        if gap <= 1e-8 * max(k**2, 1.0):
            raise ValueError(f"helmholtz: k^2 = {k**2:g} is an eigenvalue of the discrete Laplacian at resolution {self.resolution}; the problem is singular")

    @property
    def shift(self) -> float:
        return -float(self.parameters["k"]) ** 2

    def equation(self) -> str:
        return f"Helmholtz equation laplacian(u) + k^2 u = a with k = {self.parameters['k']:g}"

    def features(self, fields: Mapping[str, Any]) -> dict[str, float]:
        """:meth:`Poisson.features` and the parameter ``k``."""
        return {"k": float(self.parameters["k"]), **super().features(fields)}
