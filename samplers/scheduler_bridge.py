"""Drive a diffusers scheduler with a VE-frame denoiser ``D(x, sigma) -> x0_hat`` and our hooks.

diffusers schedulers keep the state in one of two frames:

* **VP frame** (``init_noise_sigma == 1``: DDIM, DDPM, DPMSolverMultistep/Singlestep, UniPC, DEIS):
  the latent is ``x_vp = alpha * x0 + sigma_vp * eps`` with ``alpha = 1 / sqrt(1 + sigma^2)``,
  i.e. ``x_vp = alpha * x_ve`` where ``sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)`` is
  the VE noise level;
* **VE frame** (``init_noise_sigma > 1``: Euler, EulerAncestral, Heun, LMS, KDPM2, EDMEuler,
  EDMDPMSolverMultistep): the latent is ``x_ve = x0 + sigma * eps`` itself.

The scheduler expects the network output in its ``prediction_type``; it is computed here from
our ``x0_hat`` (frame-independent: ``eps = (x_ve - x0) / sigma``, ``v = alpha * (eps - sigma * x0)``,
``sample = x0``; EDM schedulers invert their own ``precondition_outputs``). Flow-matching
schedulers (noise level 1 = infinite VE sigma) are not supported.

Limitation (measured in ``tests/samplers/test_diffusers_interop.py``): multistep schedulers keep
history inside the scheduler object. A step-end hook's change is written into the latent the
scheduler sees next, but e.g. UniPC's corrector rebuilds that latent from its stored
``last_sample`` and the new model output, so the hook's change survives only through the model
evaluation at the hooked state; two-stage schedulers (Heun, KDPM2) restart their second stage from
the stored first-stage input, so hooks are applied only after completed steps. Our own solvers
(:mod:`samplers.ode`) never rebuild a hooked state and are the right choice for guidance by hooks.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch

from ._core import Denoiser, Hook, Run, Tensor, check_sigmas

__all__ = ["sample_with_scheduler", "sigmas_of", "fresh_scheduler"]

_UNSUPPORTED = {
    "PNDMScheduler": "its warm-up re-evaluates the model at repeated timesteps from a stored sample",
    "IPNDMScheduler": "it uses its own non-DDPM noise levels",
}


def fresh_scheduler(scheduler, steps: int):
    """A new scheduler of the same class built from ``scheduler.config``, with ``steps`` set.

    The passed object is never stepped, so its internal state (history, step index) is irrelevant.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    name = type(scheduler).__name__
    if name.startswith("FlowMatch") or getattr(scheduler.config, "use_flow_sigmas", False):
        raise NotImplementedError(f"{name}: flow-matching schedulers (sigma = 1 is an infinite VE noise level) are not supported")
    if name in _UNSUPPORTED:
        raise NotImplementedError(f"{name} is not supported: {_UNSUPPORTED[name]}")
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(int(steps))
    return sched


def _is_ve(sched) -> bool:
    """True when the scheduler's latent is the VE state ``x0 + sigma * eps`` (k-diffusion-type schedulers)."""
    return abs(float(sched.init_noise_sigma) - 1.0) > 1e-6


def _sigma_from_alpha_bar(alpha_bar: float) -> float:
    return math.sqrt(max(1.0 - alpha_bar, 0.0) / alpha_bar)


def _grid(sched) -> Tensor:
    """The VE noise levels of the states a (fresh, set) scheduler passes through, float64."""
    sigmas = getattr(sched, "sigmas", None)
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().to(torch.float64)
        if hasattr(sched, "state_in_first_order"):  # two-stage schedulers (Heun, KDPM2) store inner levels twice
            sigmas = torch.unique_consecutive(sigmas)
        return sigmas
    alphas = sched.alphas_cumprod.detach().cpu().to(torch.float64)
    levels = [_sigma_from_alpha_bar(float(alphas[int(t)])) for t in sched.timesteps]
    final = float(getattr(sched, "final_alpha_cumprod", 1.0))
    return torch.tensor(levels + [_sigma_from_alpha_bar(final)], dtype=torch.float64)


def sigmas_of(scheduler, steps: int) -> Tensor:
    """The VE sigma grid (float64, strictly decreasing, ending in 0) a scheduler uses for ``steps`` steps.

    Running one of our solvers on this grid runs it on the scheduler's own noise levels (already
    rounded to the scheduler's float32), so the two can be compared step for step. Raises
    ``ValueError`` when the scheduler does not end at noise level 0 (``final_sigmas_type="sigma_min"``,
    ``set_alpha_to_one=False``).
    """
    grid = _grid(fresh_scheduler(scheduler, steps))
    if grid[-1] != 0:
        raise ValueError(
            f"{type(scheduler).__name__} ends at sigma={grid[-1].item():.4g}, not 0; "
            "use final_sigmas_type='zero' (or set_alpha_to_one=True) for a grid that ends in 0"
        )
    return check_sigmas(grid)


def _eval_sigma(sched, timestep) -> Tensor:
    """The noise level (scheduler dtype, 0-dim) of the latent the scheduler is about to step from."""
    idx = getattr(sched, "step_index", None)
    idx = 0 if idx is None else idx  # a fresh scheduler starts at its first level
    interpol = getattr(sched, "sigmas_interpol", None)
    if interpol is not None and not sched.state_in_first_order:
        return interpol[idx]
    sigmas = getattr(sched, "sigmas", None)
    if isinstance(sigmas, torch.Tensor):
        return sigmas[idx]
    alpha_bar = sched.alphas_cumprod[int(timestep)].to(torch.float64)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def _model_output(sched, x_ve: Tensor, x_sched: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """What the scheduler's network would have returned, given our ``x0_hat`` at VE level ``sigma``."""
    if hasattr(sched, "precondition_outputs"):  # EDM: D = c_skip * x + c_out * F
        one = torch.ones((), dtype=sigma.dtype)
        c_skip = sched.precondition_outputs(one, torch.zeros_like(one), sigma).to(torch.float64)
        c_out = sched.precondition_outputs(torch.zeros_like(one), one, sigma).to(torch.float64)
        return ((x0.to(torch.float64) - c_skip * x_sched.to(torch.float64)) / c_out).to(x0.dtype)
    kind = sched.config.prediction_type
    s = float(sigma)
    if kind in ("sample", "original_sample"):
        return x0
    eps = (x_ve - x0) / s
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return (eps - s * x0) / math.sqrt(1.0 + s * s)
    raise NotImplementedError(f"{type(sched).__name__}: prediction_type {kind!r} is not supported")


@torch.no_grad()
def sample_with_scheduler(
    denoiser: Denoiser,
    x: Tensor,
    scheduler,
    steps: int,
    *,
    hooks: Sequence[Hook] | Hook | None = (),
    generator: torch.Generator | None = None,
    callback: Callable[[dict], object] | None = None,
    stats: dict | None = None,
) -> Tensor:
    """Sample with a diffusers scheduler and our VE-frame denoiser.

    Arguments:
        denoiser:  ``D(x, sigma) -> x0_hat`` in the VE frame.
        x:         initial state in the VE frame at ``sigmas_of(scheduler, steps)[0]``
                   (noise times that sigma), shape ``[B, ...]``.
        scheduler: any supported diffusers scheduler; only its ``config`` is used, a fresh
                   scheduler is built on every call.
        steps:     ``num_inference_steps`` passed to ``set_timesteps``.
        hooks:     step-end hooks ``hook(x, sigma, step, denoised) -> x`` on the VE state after
                   each completed step (see the module docstring for what multistep schedulers
                   make of a hooked state).
        generator: passed to ``scheduler.step`` when it takes one (ancestral, DDPM, SDE variants).
        callback:  ``callback(info)`` after each completed step, as for our solvers.
        stats:     receives ``nfe`` and ``steps``.

    Returns the final state in the VE frame at the scheduler's last level: sigma 0 (the data frame)
    for ``final_sigmas_type="zero"`` / ``set_alpha_to_one=True``; otherwise at its smallest level,
    e.g. DEIS, whose last step goes from ``sigma_min`` to ``sigma_min``.
    """
    sched = fresh_scheduler(scheduler, steps)
    grid = _grid(sched)
    ve = _is_ve(sched)

    def to_sched(x_ve: Tensor, sigma: float) -> Tensor:
        return x_ve if ve else x_ve / math.sqrt(1.0 + sigma * sigma)

    def to_ve(x_s: Tensor, sigma: float) -> Tensor:
        return x_s if ve else x_s * math.sqrt(1.0 + sigma * sigma)

    run = Run(denoiser, x, [1.0, 0.0], hooks=hooks, callback=callback, stats=stats)
    run.sigmas = grid  # the scheduler's own levels: may end above 0, or repeat the last one (DEIS)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    timesteps = list(sched.timesteps)
    latent = to_sched(x, float(grid[0]))
    done = 0  # completed steps
    for k, t in enumerate(timesteps):
        run.step = done
        sched.scale_model_input(latent, t)  # initialises the step index / stage of k-diffusion-type schedulers
        sigma = _eval_sigma(sched, t)
        s = float(sigma)
        x_ve = to_ve(latent, s)
        denoised = run.denoise(x_ve, s)
        out = _model_output(sched, x_ve, latent, denoised, sigma)
        kwargs = {"generator": generator} if takes_generator else {}
        latent = sched.step(out, t, latent, return_dict=False, **kwargs)[0].to(x.dtype)
        mid_step = hasattr(sched, "state_in_first_order") and not sched.state_in_first_order and k < len(timesteps) - 1
        if mid_step:
            continue
        sigma_next = float(grid[done + 1])
        if run.hooks or callback is not None:
            x_ve = to_ve(latent, sigma_next)
            hooked = run.end_step(done, x_ve, denoised, sigma_next)
            if run.hooks:
                latent = to_sched(hooked, sigma_next)
        done += 1
    if done != grid.numel() - 1:
        raise RuntimeError(f"{type(sched).__name__} made {done} steps over a grid of {grid.numel() - 1}")
    return run.finish(to_ve(latent, float(grid[-1])))
