"""Weights of the DiffusionPDE preset (``method="diffusionpde"``), tuned on validation instances.

DiffusionPDE's guidance weights (``zeta_obs`` for the observation loss, ``zeta_pde`` for the PDE
residual) depend on the scale of the fields and on the number of steps; the paper tuned them by
hand for its own normalisation. :func:`tune_zeta` picks them on validation instances instead: a
grid of observation weights around :func:`natural_zeta` (PDE weight 0), then a grid of PDE
weights at the best observation weight, each grid sampled in one batch (one weight per chain) at
``tune_steps`` Heun steps with the weights scaled by ``steps / tune_steps`` (what matters is the
push per unit of the sampling path). The result's ``zeta_obs`` and ``zeta_pde`` are the
``method_options`` of the preset at ``steps`` steps.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch

from . import tasks
from .evaluation import load_instances, observe, task_fields
from .metrics import relative_l2
from .observations import Observations
from .spec import expand_amount

__all__ = ["ZETA_OBS_GRID", "ZETA_PDE_GRID", "natural_zeta", "tune_zeta"]

#: observation weights tried, in units of :func:`natural_zeta`
ZETA_OBS_GRID = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
#: PDE-residual weights tried at the best observation weight
ZETA_PDE_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def natural_zeta(truth_std: float, m: int, steps: int) -> float:
    """Weight at which the late observation push per step is ``sqrt(m) / steps`` in normalised units.

    ``d ||y - A(x)|| / dz`` has norm ``~ truth_std`` (the physical std of the observed field) at
    small sigma, and a residual of ``sqrt(m)`` normalised units (``m`` measurements) must be
    removed over ``steps`` steps.
    """
    if not (truth_std > 0 and m > 0 and steps > 0):
        raise ValueError(f"natural_zeta needs truth_std > 0, m > 0 and steps > 0, got {truth_std}, {m}, {steps}")
    return math.sqrt(m) / (steps * truth_std)


def tune_zeta(prior: Any, data: str, task: str, indices: Sequence[int], steps: int, tune_steps: int, seed: int = 0,
              *, observe_amount: str = "0.03", log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Grid-search DiffusionPDE's weights for ``task`` (``forward`` / ``inverse``) on dataset instances ``indices``.

    The task's observed fields are observed by ``observe_amount`` (default 3 % of the nodes, drawn
    with ``seed``); the score is the mean relative L2 error of the posterior mean (one sample) of
    the first target field. Returns ``zeta_obs`` (``{observed field: weight}``), ``zeta_pde``, the
    two grids with their errors (``obs_grid``, ``pde_grid``), ``rel_l2`` of the choice, ``steps``,
    ``tune_steps``, ``indices`` and ``target``. ``log`` receives one line per grid (``None``: silent).
    """
    if steps < 1 or tune_steps < 1:
        raise ValueError(f"steps and tune_steps must be >= 1, got {steps}, {tune_steps}")
    observed, target = task_fields(prior, task)
    if task == "reconstruct":
        raise ValueError("tune_zeta tunes the forward or the inverse task")
    indices = [int(i) for i in indices]
    truth = load_instances(data, prior, indices)
    obs = observe(prior, truth, expand_amount(observe_amount, observed), seed=seed, keys=indices)
    op, field = obs.operator, observed[0]
    scale = natural_zeta(float(truth[field].std()), op.num_measurements, steps)
    b = len(indices)

    def run(pairs: list[tuple[float, float]]) -> torch.Tensor:
        """Mean rel. L2 of the target over the instances for each ``(zeta_obs, zeta_pde)``, in one batch."""
        g, factor = len(pairs), steps / tune_steps
        repeated = Observations(op, obs.values.repeat(g, 1))
        zo = torch.tensor([a for a, _ in pairs], dtype=torch.float32).repeat_interleave(b) * factor
        zp = torch.tensor([c for _, c in pairs], dtype=torch.float32).repeat_interleave(b) * factor
        start = time.perf_counter()
        post = tasks.reconstruct(prior, repeated, method="diffusionpde", steps=tune_steps, n_samples=1, seed=seed,
                                 method_options={"zeta_obs": {field: zo}, "zeta_pde": zp})
        errors = relative_l2(post.mean[target[0]], torch.cat([truth[target[0]]] * g)).reshape(g, b).mean(1)
        if log is not None:
            log(f"  [{task}] " + ", ".join(f"({a:.3g}, {c:.3g}): {e:.3f}" for (a, c), e in zip(pairs, errors.tolist()))
                + f"  ({time.perf_counter() - start:.0f} s)")
        return errors

    first = run([(z * scale, 0.0) for z in ZETA_OBS_GRID])
    best_obs = ZETA_OBS_GRID[int(torch.argmin(first))] * scale
    second = run([(best_obs, c) for c in ZETA_PDE_GRID])
    best_pde = ZETA_PDE_GRID[int(torch.argmin(second))]
    return {"zeta_obs": {field: best_obs}, "zeta_pde": best_pde,
            "obs_grid": {f"{z * scale:.6g}": float(e) for z, e in zip(ZETA_OBS_GRID, first)},
            "pde_grid": {f"{c:g}": float(e) for c, e in zip(ZETA_PDE_GRID, second)},
            "steps": steps, "tune_steps": tune_steps, "indices": indices, "target": target[0],
            "rel_l2": float(second.min())}
