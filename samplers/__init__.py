"""samplers: model-agnostic diffusion ODE/SDE solvers on the denoiser contract ``D(x, sigma) -> x0_hat``.

``samplers.sample(denoiser, x, sigmas, solver="dpmpp_2m", **options)`` runs any registered solver;
``samplers.SOLVERS`` lists them with their order, NFE per step and whether they draw noise.
"""

from . import (analytic, cfg, covariance, denoisers, dpm_solver_v3, ensemble, er_sde, genie, guidance, learned, ode, reference,
               schedules, scheduler_bridge, sde, smc, tuning)
from ._core import SOLVERS, Run, SolverInfo, get_solver, register
from .api import sample

__all__ = ["SOLVERS", "Run", "SolverInfo", "analytic", "cfg", "covariance", "denoisers", "dpm_solver_v3", "ensemble", "er_sde",
           "genie", "get_solver", "guidance", "learned", "ode", "reference", "register", "sample", "scheduler_bridge",
           "schedules", "sde", "smc", "tuning"]
