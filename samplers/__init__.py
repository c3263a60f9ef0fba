"""samplers: model-agnostic diffusion ODE/SDE solvers on the denoiser contract ``D(x, sigma) -> x0_hat``."""

from ._core import SOLVERS, Run, SolverInfo, get_solver, register

__all__ = ["SOLVERS", "Run", "SolverInfo", "get_solver", "register"]
