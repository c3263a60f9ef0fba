"""Preconditioning: turn a raw network ``F(x_in, c_noise, cond, params)`` into a denoiser.

Every preconditioner is the EDM template (Karras et al. 2022, table 1)::

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), cond, params)

in the variance-exploding frame ``x = x0 + sigma * eps`` of the *normalised* data, so the result
is a :mod:`samplers` denoiser ``D(x, sigma) -> x0_hat``. Subclasses differ only in the four
coefficients (what the network is trained to predict):

=============  =====================  ===========================  =====================  =====================
class          c_skip                 c_out                        c_in                   c_noise
=============  =====================  ===========================  =====================  =====================
EDMPrecond     sd^2 / (s^2 + sd^2)    s sd / sqrt(s^2 + sd^2)      1 / sqrt(s^2 + sd^2)   ln(s) / 4
VPPrecond      1                      -s          (net = eps)      1 / sqrt(s^2 + 1)      (M - 1) t(s)
VEPrecond      1                      s           (net = -eps)     1                      ln(s / 2)
FlowPrecond    1 / (1 + s)            -s / (1 + s) (net = v)       1 / (1 + s)            1000 t,  t = s/(1+s)
=============  =====================  ===========================  =====================  =====================

The VP time ``t(s)`` and the flow frame are :func:`samplers.schedules.vp_time` and
:func:`samplers.schedules.flow_frame`. The coefficients are computed in float64 (float32 on
devices without float64) and the combination in float32; the network itself may run under
``torch.autocast``. Each preconditioner is registered (:mod:`.registry`) under its ``type``, and
``config()`` / ``from_config(config, net=net)`` round-trip it.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from samplers.schedules import flow_frame, vp_sigma, vp_time

from .registry import Configurable, register, register_to_config

Tensor = torch.Tensor

__all__ = [
    "Preconditioner",
    "EDMPrecond",
    "VPPrecond",
    "VEPrecond",
    "FlowPrecond",
    "measure_sigma_data",
]


def _sigma64(sigma: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``sigma`` as a ``[batch]`` tensor in float64 (float32 on MPS, which lacks float64)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    s = torch.as_tensor(sigma, device=device).to(dtype)
    if s.ndim == 0:
        s = s.expand(batch)
    s = s.reshape(-1)
    if s.numel() != batch:
        raise ValueError(f"sigma must have shape [B] = [{batch}] or be a scalar, got {tuple(s.shape)}")
    return s


def _bcast(c: Tensor, ndim: int) -> Tensor:
    """``[B]`` float64 coefficient -> float32 ``[B, 1, ..., 1]`` with ``ndim`` dims."""
    return c.to(torch.float32).reshape(-1, *([1] * (ndim - 1)))


class Preconditioner(Configurable, nn.Module):
    """Base class: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, cond, params)``.

    Arguments:
        net:        the raw network, called as ``net(x_in, c_noise, cond=cond, params=params)``
                    with ``x_in`` float32 of the shape of ``x`` and ``c_noise`` float32 ``[B]``.
        sigma_min:  smallest noise level the prior is meant to be sampled at (VE frame).
        sigma_max:  largest noise level.
        sigma_data: standard deviation of the normalised data (used by EDM; stored by all).

    ``forward(x, sigma, cond=None, params=None, *, context=None, context_mask=None) -> x0_hat``:
    ``x`` ``[B, C, ...]`` in the normalised VE frame, ``sigma`` ``[B]`` (or a scalar), ``cond``
    ``[B, Cc, ...]`` known fields (normalised) handed to the network as extra channels, ``params``
    ``[B, P]`` scalar PDE parameters, ``context`` ``[B, L, D]`` tokens (text, frames, parameters;
    :mod:`.conditioning`) with ``context_mask`` ``[B, L]`` (true where valid), passed to the network
    only when given (a network without ``context_dim`` refuses them). Returns float32 ``x0_hat`` of
    the shape of ``x``.
    """

    config_family = "preconditioner"
    config_ignore = ("net",)

    def __init__(self, net: nn.Module, sigma_min: float, sigma_max: float, sigma_data: float = 1.0) -> None:
        super().__init__()
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)``, each ``[B]`` in the dtype of ``sigma`` (float64)."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None,
                params: Tensor | None = None, *, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        x = x.to(torch.float32)
        s = _sigma64(sigma, x.shape[0], x.device)
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        if cond is not None:
            cond = cond.to(torch.float32)
        if params is not None:
            params = params.to(torch.float32)
        tokens = {}
        if context is not None:
            if not getattr(self.net, "context_dim", 0):
                kind = getattr(self.net, "config_type", "") or type(self.net).__name__
                raise ValueError(f"the network {kind!r} takes no context tokens (text, frame or parameter "
                                 "conditioning needs a network with cross-attention: a DiT with context_dim > 0)")
            tokens = {"context": context.to(torch.float32), "context_mask": context_mask}
        elif context_mask is not None:
            raise ValueError("got context_mask without context")
        F_x = self.net(_bcast(c_in, x.ndim) * x, c_noise.to(torch.float32), cond=cond, params=params, **tokens)
        if F_x.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(F_x.shape)} for input of shape {tuple(x.shape)}")
        return _bcast(c_skip, x.ndim) * x + _bcast(c_out, x.ndim) * F_x.to(torch.float32)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


@register("preconditioner", "edm")
class EDMPrecond(Preconditioner):
    """Karras et al. (2022): unit-variance network input and target for data of std ``sigma_data``."""

    @register_to_config
    def __init__(self, net: nn.Module, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5) -> None:
        super().__init__(net, sigma_min, sigma_max, sigma_data)

    def coefficients(self, sigma):
        sd = self.sigma_data
        norm = (sigma**2 + sd**2).sqrt()
        return sd**2 / norm**2, sigma * sd / norm, 1.0 / norm, sigma.log() / 4


@register("preconditioner", "vp")
class VPPrecond(Preconditioner):
    """Song et al. VP-SDE (DDPM++): the network predicts ``eps`` at time ``t(sigma)``.

    ``sigma(t)`` is :func:`samplers.schedules.vp_sigma`; ``c_noise = (M - 1) t``.
    The default sigma range is ``[sigma(epsilon_t), sigma(1)]`` (recorded in the config).
    """

    @register_to_config
    def __init__(self, net: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5, sigma_min: float | None = None, sigma_max: float | None = None,
                 sigma_data: float = 1.0) -> None:
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        super().__init__(
            net,
            self.sigma_of_t(epsilon_t) if sigma_min is None else sigma_min,
            self.sigma_of_t(1.0) if sigma_max is None else sigma_max,
            sigma_data,
        )
        self.update_config(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def sigma_of_t(self, t: float) -> float:
        return float(vp_sigma(t, self.beta_d, self.beta_min))

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of ``sigma(t)`` (:func:`samplers.schedules.vp_time`)."""
        return vp_time(sigma, self.beta_d, self.beta_min)

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        return one, -sigma, 1.0 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.t_of_sigma(sigma)


@register("preconditioner", "ve")
class VEPrecond(Preconditioner):
    """Song et al. VE-SDE (NCSN++): ``D = x + sigma F(x, ln(sigma / 2))``, the network predicts ``-eps``."""

    @register_to_config
    def __init__(self, net: nn.Module, sigma_min: float = 0.02, sigma_max: float = 100.0,
                 sigma_data: float = 1.0) -> None:
        super().__init__(net, sigma_min, sigma_max, sigma_data)

    def coefficients(self, sigma):
        one = torch.ones_like(sigma)
        return one, sigma, one, (0.5 * sigma).log()


@register("preconditioner", "flow")
class FlowPrecond(Preconditioner):
    """Flow matching / rectified flow: a velocity network as a VE denoiser.

    The flow path is ``x_t = (1 - t) x0 + t eps`` with ``t = s / (1 + s)``, i.e. ``x_t = x / (1 + s)``
    for the VE state ``x = x0 + s eps`` (:func:`samplers.schedules.flow_frame`). The network
    predicts ``v = eps - x0`` from ``(x_t, time_scale * t)`` and ``x0_hat = x_t - t v``.
    """

    @register_to_config
    def __init__(self, net: nn.Module, sigma_min: float = 0.002, sigma_max: float = 200.0,
                 sigma_data: float = 1.0, time_scale: float = 1000.0) -> None:
        super().__init__(net, sigma_min, sigma_max, sigma_data)
        self.time_scale = float(time_scale)

    def coefficients(self, sigma):
        a, t = flow_frame(sigma)
        return a, -t, a, self.time_scale * t


@torch.no_grad()
def measure_sigma_data(data: Tensor | Iterable, max_samples: int | None = None) -> float:
    """Standard deviation over all entries of the normalised training data.

    ``data`` is a tensor ``[N, C, ...]`` or an iterable (a ``Dataset`` or ``DataLoader``) of
    tensors, of dicts (the tensor under ``"x"`` is used; otherwise every tensor value), or of
    tuples whose first item is the data tensor. Computed in float64 with running sums over at
    most ``max_samples`` items.
    """
    if isinstance(data, Tensor):
        data = [data[:max_samples] if max_samples else data]
        max_samples = None
    n, s1, s2 = 0, 0.0, 0.0
    for i, item in enumerate(data):
        if max_samples is not None and i >= max_samples:
            break
        if isinstance(item, dict):
            item = item["x"] if "x" in item else torch.cat([torch.as_tensor(v).reshape(-1) for v in item.values()])
        elif isinstance(item, (tuple, list)):
            item = item[0]
        t = torch.as_tensor(item).to(torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError(f"measure_sigma_data: item {i} holds NaN or inf")
        n += t.numel()
        s1 += float(t.sum())
        s2 += float((t * t).sum())
    if n < 2:
        raise ValueError("measure_sigma_data needs at least 2 values")
    var = (s2 - s1 * s1 / n) / (n - 1)
    return math.sqrt(max(var, 0.0))
