"""Adapters from trained networks to the denoiser contract ``D(x, sigma) -> x0_hat``.

Every adapter returns a callable in the variance-exploding (VE) frame ``x = x0 + sigma * eps`` with
``sigma`` of shape ``[B]``; it converts the state to the network's own frame, calls the network and
converts its prediction back to ``x0_hat``. Conversions are done in float64 and cast back.

Frames:

* VP (DDPM, Song et al. VP-SDE, diffusers): ``x_vp = alpha x0 + sigma_vp eps`` with
  ``alpha^2 + sigma_vp^2 = 1``. It is the VE state scaled: ``x_vp = alpha x``, ``alpha = 1/sqrt(1+sigma^2)``,
  ``sigma_vp = sigma alpha``. The network takes ``(x_vp, t)`` and predicts ``eps``, ``v = alpha eps - sigma_vp x0``
  or ``x0``; ``t`` comes from ``sigma`` through a timestep map (continuous linear/cosine beta schedules,
  or a discrete ``alphas_cumprod`` table).
* Flow matching / rectified flow: ``x_t = (1 - t) x0 + t eps`` and the network predicts the velocity
  ``v = eps - x0``. Here ``t = sigma / (1 + sigma)`` and ``x_t = x / (1 + sigma)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .schedules import flow_frame, vp_sigma, vp_time

Tensor = torch.Tensor
Network = Callable[[Tensor, Tensor], Tensor]

PREDICTIONS = ("eps", "v", "x0")
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _bcast(values: Tensor, x: Tensor) -> Tensor:
    """``[B]`` float64 values reshaped to broadcast against ``x`` of shape ``[B, ...]``."""
    return values.to(torch.float64).reshape(-1, *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------------------------------------
# timestep maps sigma -> t of a VP network


class LinearVPTimestep:
    """Song et al. VP-SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)``, ``t`` in (0, 1].

    ``sigma(t)`` is :func:`~samplers.schedules.vp_sigma`, inverted by :func:`~samplers.schedules.vp_time`;
    the network receives ``scale * t`` (``scale=999`` for DDPM-style networks trained on integer steps ``0..999``).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, scale: float = 1.0) -> None:
        self.beta_min, self.beta_d, self.scale = beta_min, beta_max - beta_min, scale

    def sigma(self, t: Tensor) -> Tensor:
        return vp_sigma(t.to(torch.float64) / self.scale, self.beta_d, self.beta_min)

    def __call__(self, sigma: Tensor) -> Tensor:
        return self.scale * vp_time(sigma.to(torch.float64), self.beta_d, self.beta_min)


class CosineVPTimestep:
    """Nichol & Dhariwal cosine schedule ``alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2)``.

    Inverted in closed form; the network receives ``scale * t`` with ``t`` in [0, 1].
    """

    def __init__(self, s: float = 0.008, scale: float = 1.0) -> None:
        self.s, self.scale = s, scale
        self.f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2

    def sigma(self, t: Tensor) -> Tensor:
        t = t.to(torch.float64) / self.scale
        alpha_bar = torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2 / self.f0
        return torch.sqrt(1 / alpha_bar - 1)

    def __call__(self, sigma: Tensor) -> Tensor:
        alpha_bar = 1 / (1 + sigma.to(torch.float64) ** 2)
        t = torch.arccos(torch.sqrt(alpha_bar * self.f0).clamp(max=1.0)) * 2 / math.pi * (1 + self.s) - self.s
        return self.scale * t


class DiscreteVPTimestep:
    """A discrete DDPM schedule ``alphas_cumprod[n]``, n = 0..N-1, made continuous.

    The sigmas ``sqrt((1 - a_n) / a_n)`` increase with ``n``; a sigma between two of them gets the
    fractional timestep interpolated linearly in ``log sigma`` (the network takes float timesteps).

    Out-of-range policy: a sigma outside ``[sigma_min, sigma_max]`` by more than a relative ``1e-6``
    raises ``ValueError`` naming it (``out_of_range="error"``, the default); with
    ``out_of_range="clamp"`` the timestep is clamped to ``[0, N-1]`` while the frame conversion still
    uses the true sigma (the network is then queried at a noise level it was not trained on).
    """

    def __init__(self, alphas_cumprod: Tensor, out_of_range: str = "error") -> None:
        if out_of_range not in ("error", "clamp"):
            raise ValueError(f"out_of_range must be 'error' or 'clamp', got {out_of_range!r}")
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.numel() < 2 or not ((a > 0) & (a <= 1)).all():
            raise ValueError("alphas_cumprod needs at least 2 values in (0, 1]")
        sigmas = torch.sqrt((1 - a) / a)
        if (sigmas[1:] <= sigmas[:-1]).any() or sigmas[0] <= 0:
            raise ValueError("alphas_cumprod must be strictly decreasing and below 1")
        self.sigmas, self.log_sigmas, self.out_of_range = sigmas, sigmas.log(), out_of_range

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, t: Tensor) -> Tensor:
        """Inverse map: sigma at a fractional timestep (log-linear between the table entries)."""
        t = t.to(torch.float64).clamp(0, self.sigmas.numel() - 1)
        lo = t.floor().long().clamp(max=self.sigmas.numel() - 2)
        w = t - lo
        return torch.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1])

    def __call__(self, sigma: Tensor) -> Tensor:
        log_sigma = sigma.to(torch.float64).log()
        low, high = self.log_sigmas[0], self.log_sigmas[-1]
        outside = (log_sigma < low - 1e-6) | (log_sigma > high + 1e-6)
        if self.out_of_range == "error" and outside.any():
            bad = float(sigma.flatten()[outside.flatten()][0])
            raise ValueError(f"sigma={bad:g} is outside the trained range [{self.sigma_min:g}, {self.sigma_max:g}] "
                             "of the discrete schedule (use out_of_range='clamp' to clamp the timestep)")
        log_sigma = log_sigma.clamp(low, high)
        idx = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.sigmas.numel() - 1)
        l0, l1 = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        return (idx - 1) + (log_sigma - l0) / (l1 - l0)


# ---------------------------------------------------------------------------------------------
# adapters


class VPDenoiser:
    """``D(x, sigma)`` in the VE frame from a VP network ``net(x_vp, t)``.

    Arguments:
        net:        callable ``net(x_vp, t) -> prediction`` with ``x_vp = x / sqrt(1 + sigma^2)`` and ``t`` of shape [B].
        prediction: what the network predicts: ``"eps"``, ``"v"`` (``alpha eps - sigma_vp x0``) or ``"x0"``.
        timestep:   map ``sigma [B] -> t [B]``: :class:`LinearVPTimestep`, :class:`CosineVPTimestep`,
                    :class:`DiscreteVPTimestep` or any callable.
    """

    def __init__(self, net: Network, prediction: str, timestep: Callable[[Tensor], Tensor]) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net, self.prediction, self.timestep = net, prediction, timestep

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = _bcast(sigma, x)
        alpha = 1 / torch.sqrt(1 + s**2)
        x64 = x.to(torch.float64)
        t = self.timestep(sigma.to(torch.float64).flatten()).to(device=x.device)
        out = self.net((alpha * x64).to(x.dtype), t.to(x.dtype)).to(torch.float64)
        if self.prediction == "eps":
            x0 = x64 - s * out
        elif self.prediction == "v":
            x0 = alpha * (alpha * x64) - (s * alpha) * out
        else:
            x0 = out
        return x0.to(x.dtype)


class FlowDenoiser:
    """``D(x, sigma)`` in the VE frame from a flow-matching velocity network ``net(x_t, t)``.

    Frame (:func:`~samplers.schedules.flow_frame`): ``x_t = (1 - t) x0 + t eps`` with ``v = eps - x0``;
    ``t = sigma / (1 + sigma)``, ``x_t = x / (1 + sigma)``, ``x0_hat = x_t - t v``. The network receives
    ``scale * t`` (e.g. 1000).
    """

    def __init__(self, net: Network, scale: float = 1.0) -> None:
        self.net, self.scale = net, scale

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        a, t = flow_frame(_bcast(sigma, x))
        x_t = a * x.to(torch.float64)
        v = self.net(x_t.to(x.dtype), (self.scale * t.flatten()).to(x.dtype)).to(torch.float64)
        return (x_t - t * v).to(x.dtype)


def from_diffusers(model, scheduler_or_config, *, out_of_range: str = "error", **model_kwargs) -> VPDenoiser:
    """``D(x, sigma)`` from a diffusers model (e.g. ``UNet2DModel``) trained with a DDPM-type scheduler.

    Arguments:
        model:               ``model(sample, timestep, **model_kwargs)`` returning an object with ``.sample``
                             (or a tensor). Inputs are cast to ``model.dtype`` when it has one.
        scheduler_or_config: a diffusers scheduler (its ``alphas_cumprod`` and ``config.prediction_type`` are
                             used) or its config dict, from which ``DDPMScheduler`` builds ``alphas_cumprod``
                             (``beta_schedule``, ``trained_betas``, ...).
        out_of_range:        policy of :class:`DiscreteVPTimestep` for sigmas outside the trained range.
        model_kwargs:        extra keyword arguments bound into every call (e.g. ``class_labels``).

    Models with learned variance (twice the input channels) have the variance half dropped.
    """
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    if "FlowMatch" in str(config.get("_class_name", type(scheduler_or_config).__name__)):
        raise ValueError("a flow-matching scheduler has no alphas_cumprod; wrap the model with FlowDenoiser")
    if hasattr(scheduler_or_config, "alphas_cumprod"):
        scheduler = scheduler_or_config
    else:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(dict(scheduler_or_config))
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unsupported prediction_type {kind!r}; supported: {sorted(_DIFFUSERS_PREDICTIONS)}")
    dtype = getattr(model, "dtype", None)

    def net(x_vp: Tensor, t: Tensor) -> Tensor:
        out = model(x_vp.to(dtype or x_vp.dtype), t.to(dtype or t.dtype), **model_kwargs)
        out = getattr(out, "sample", out)
        if out.shape[1] == 2 * x_vp.shape[1] and out.shape[2:] == x_vp.shape[2:]:
            out = out[:, : x_vp.shape[1]]  # learned variance: keep the mean prediction
        return out.to(x_vp.dtype)

    timestep = DiscreteVPTimestep(torch.as_tensor(scheduler.alphas_cumprod), out_of_range=out_of_range)
    return VPDenoiser(net, _DIFFUSERS_PREDICTIONS[kind], timestep)
