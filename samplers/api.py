"""The public entry point: run any registered solver by name."""

from __future__ import annotations

from typing import Sequence

import torch

from ._core import Denoiser, get_solver


def sample(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, solver: str = "dpmpp_2m",
           **options) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` down the grid ``sigmas`` (ending in 0) with the solver ``solver``.

    Arguments:
        denoiser: ``D(x, sigma) -> x0_hat`` in the VE frame ``x = x0 + sigma * eps``, ``sigma`` of shape ``[B]``.
        x:        the initial state at ``sigmas[0]``, e.g. ``noise * sigmas[0]``; shape ``[B, ...]``.
        sigmas:   strictly decreasing noise levels ending in 0 (see :mod:`samplers.schedules`).
        solver:   a name in :data:`samplers.SOLVERS`; an unknown name raises ``KeyError`` listing the known ones.
        options:  ``hooks=``, ``generator=``, ``callback=``, ``stats=`` (a dict that receives ``nfe``) and the
                  solver's own options (e.g. ``order=`` for ``unipc``).

    Returns the final state, the sample at ``sigma = 0``.
    """
    return get_solver(solver)(denoiser, x, sigmas, **options)
