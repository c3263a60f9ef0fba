"""PDE families: fields, random inputs, classical solvers, physically scaled residuals."""

from .base import PDE, Field, Grid, get, names, register

__all__ = ["PDE", "Field", "Grid", "get", "names", "register"]
