"""samplers: model-agnostic diffusion ODE/SDE solvers on the denoiser contract ``D(x, sigma) -> x0_hat``.

``samplers.sample(denoiser, x, sigmas, solver="dpmpp_2m", **options)`` runs any registered solver;
``samplers.SOLVERS`` lists them with their order, NFE per step and whether they draw noise.
"""

import importlib

from . import analytic, denoisers, ode, reference, schedules
from ._core import SOLVERS, Run, SolverInfo, get_solver, register
from .api import sample

# Modules written alongside this one; each registers its solvers or wrappers on import.
for _name in ("sde", "guidance", "covariance", "smc", "diffusers", "tuning"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_name}":
            raise
del _name

__all__ = ["SOLVERS", "Run", "SolverInfo", "analytic", "denoisers", "get_solver", "ode", "reference", "register",
           "sample", "schedules"]
