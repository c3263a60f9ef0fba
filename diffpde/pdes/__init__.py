"""PDE families: fields, random inputs, classical solvers, physically scaled residuals."""

from .base import PDE, Field, Grid, get, names, register
from . import darcy, helmholtz, poisson  # noqa: F401  (register the families)

__all__ = ["PDE", "Field", "Grid", "get", "names", "register"]
