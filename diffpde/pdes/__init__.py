"""PDE families: fields, random inputs, classical solvers, physically scaled residuals."""

from .base import PDE, Field, Grid, get, names, register
from . import darcy, helmholtz, poisson  # noqa: F401  (register the families)
from . import burgers  # noqa: F401
from . import burgers_dirichlet  # noqa: F401
from . import navier_stokes  # noqa: F401

__all__ = ["PDE", "Field", "Grid", "get", "names", "register"]
