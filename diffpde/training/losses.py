"""Denoising losses on a preconditioned network (EDM, VP, VE, flow matching).

Every loss draws a noise level per sample, noises the clean data in the VE frame
``x = x0 + sigma * eps``, calls the preconditioned denoiser ``D = precond(x, sigma, cond, params)``
and returns the weighted squared error ``weight(sigma) * (D - x0)^2`` averaged over the entries
of each sample -- a per-sample loss of shape ``[B]`` (take ``.mean()`` for the batch loss).

``mask`` (``[C]`` or broadcastable to ``x0``, entries 0/1) removes entries from the average:
channels that are *given* rather than generated contribute nothing to the loss. The mask only
weights the loss; all channels of ``x`` are noised alike, so the denoiser sees the usual input.

Since every preconditioner is a denoiser, every loss works with every preconditioner; the
natural pairs are EDMLoss/EDMPrecond, VPLoss/VPPrecond, VELoss/VEPrecond and
FlowMatchingLoss/FlowPrecond. In terms of what each network predicts, VPLoss is the DDPM
``||eps_hat - eps||^2``, VELoss the denoising score matching loss ``sigma^2 ||s_hat - s||^2``,
and FlowMatchingLoss the velocity loss ``||v_hat - v||^2``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from samplers.schedules import flow_frame, flow_sigma, vp_sigma

from ..models.registry import REGISTRY, Configurable, build, register, register_to_config

Tensor = torch.Tensor

__all__ = ["sigma_data_of", "DenoisingLoss", "EDMLoss", "VPLoss", "VELoss", "FlowMatchingLoss", "LOSSES", "build_loss"]


def _draw(kind: str, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal (``"randn"``) or uniform (``"rand"``) float32 noise on ``like.device``."""
    fn = torch.randn if kind == "randn" else torch.rand
    if generator is None:
        return fn(shape, dtype=torch.float32, device=like.device)
    return fn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(like.device)


def _mask_weights(mask: Tensor | None, x0: Tensor) -> Tensor | None:
    if mask is None:
        return None
    mask = torch.as_tensor(mask, dtype=torch.float32, device=x0.device)
    if mask.ndim == 1:
        if mask.numel() != x0.shape[1]:
            raise ValueError(f"a per-channel mask needs {x0.shape[1]} entries, got {mask.numel()}")
        mask = mask.reshape(1, -1, *([1] * (x0.ndim - 2)))
    try:
        torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x0 {tuple(x0.shape)}") from None
    return mask


def sigma_data_of(precond: nn.Module) -> float:
    """``sigma_data`` of a preconditioner, also through wrappers (DDP's ``.module``, ``torch.compile``'s
    ``._orig_mod``, a :class:`~diffpde.models.prior.Prior`'s ``.precond``)."""
    m = precond
    for _ in range(8):
        if hasattr(m, "sigma_data"):
            return float(m.sigma_data)
        m = getattr(m, "module", None) or getattr(m, "_orig_mod", None) or getattr(m, "precond", None)
        if m is None:
            break
    raise AttributeError(f"{type(precond).__name__} has no sigma_data (needed by the EDM loss weight)")


class DenoisingLoss(Configurable):
    """Base class: subclasses draw ``sigma`` ``[B]`` and give ``weight(sigma)`` ``[B]``.

    Each loss is registered (:mod:`diffpde.models.registry`, family ``"loss"``) under its ``type``;
    its ``config()`` is recorded from its constructor, and :func:`build_loss` rebuilds it.
    """

    def sample_sigma(self, batch: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def weight(self, sigma: Tensor, precond: nn.Module) -> Tensor:
        raise NotImplementedError

    def __call__(self, precond: nn.Module, x0: Tensor, cond: Tensor | None = None, params: Tensor | None = None,
                 mask: Tensor | None = None, generator: torch.Generator | None = None, **conditions: Any) -> Tensor:
        """Per-sample loss ``[B]`` of the denoiser ``precond`` on clean normalised data ``x0`` ``[B, C, ...]``.

        ``precond`` is called as ``precond(x, sigma, cond=cond, params=params, **conditions)``: a
        :class:`~diffpde.models.precond.Preconditioner`, a ``Prior``, or either wrapped by
        Accelerate/DDP. ``conditions`` are the encoded conditions of a prior with conditioning
        encoders (``text``, normalised ``frames``, condition dropout ``keep``; see ``Prior.forward``).
        ``generator`` draws sigma and the noise (on its own device).
        """
        x0 = x0.to(torch.float32)
        sigma = self.sample_sigma(x0.shape[0], x0, generator)
        noise = _draw("randn", tuple(x0.shape), x0, generator)
        x = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        denoised = precond(x, sigma, cond=cond, params=params, **conditions)
        err = self.weight(sigma, precond).reshape(-1, *([1] * (x0.ndim - 1))) * (denoised - x0) ** 2
        m = _mask_weights(mask, x0)
        if m is None:
            return err.flatten(1).mean(1)
        m = m.expand_as(x0)
        return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.config().items() if k != 'type')})"


@register("loss", "edm")
class EDMLoss(DenoisingLoss):
    """Karras et al. (2022): ``ln sigma ~ N(P_mean, P_std^2)``, weight ``(s^2 + sd^2) / (s sd)^2``.

    ``sd`` is the preconditioner's ``sigma_data``. With this weight the exact denoiser of
    ``N(mu, sd^2 I)`` data has expected loss exactly 1 per entry at every sigma.
    """

    @register_to_config
    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        self.P_mean, self.P_std = float(P_mean), float(P_std)

    def sample_sigma(self, batch, like, generator):
        return (_draw("randn", (batch,), like, generator) * self.P_std + self.P_mean).exp()

    def weight(self, sigma, precond):
        sd = sigma_data_of(precond)
        return (sigma**2 + sd**2) / (sigma * sd) ** 2


@register("loss", "vp")
class VPLoss(DenoisingLoss):
    """Song et al. VP-SDE: ``t ~ U(epsilon_t, 1)``, ``sigma = vp_sigma(t)`` (:func:`samplers.schedules.vp_sigma`), weight ``1/sigma^2``."""

    @register_to_config
    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5) -> None:
        self.beta_d, self.beta_min, self.epsilon_t = float(beta_d), float(beta_min), float(epsilon_t)

    def sample_sigma(self, batch, like, generator):
        t = 1 + _draw("rand", (batch,), like, generator).double() * (self.epsilon_t - 1)
        return vp_sigma(t, self.beta_d, self.beta_min).float()

    def weight(self, sigma, precond):
        return 1.0 / sigma**2


@register("loss", "ve")
class VELoss(DenoisingLoss):
    """Song et al. VE-SDE (denoising score matching): ``ln sigma ~ U(ln sigma_min, ln sigma_max)``, weight ``1/sigma^2``."""

    @register_to_config
    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0) -> None:
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample_sigma(self, batch, like, generator):
        u = _draw("rand", (batch,), like, generator)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

    def weight(self, sigma, precond):
        return 1.0 / sigma**2


@register("loss", "flow")
class FlowMatchingLoss(DenoisingLoss):
    """Flow matching / rectified flow on ``x_t = (1 - t) x0 + t eps``: the velocity loss ``||v_hat - v||^2``.

    ``t`` is uniform on ``(t_eps, 1 - t_eps)`` (``t_dist="uniform"``) or logit-normal with
    ``logit_mean``, ``logit_std`` (``t_dist="logit_normal"``, as in Stable Diffusion 3), then
    clamped to that interval. In the VE frame ``sigma = t / (1 - t)`` (:func:`samplers.schedules.flow_sigma`)
    and ``||v_hat - v||^2 = ||x0_hat - x0||^2 / t^2``, the weight used here.
    """

    @register_to_config
    def __init__(self, t_dist: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 t_eps: float = 1e-4) -> None:
        if t_dist not in ("uniform", "logit_normal"):
            raise ValueError(f"t_dist must be 'uniform' or 'logit_normal', got {t_dist!r}")
        if not 0 < t_eps < 0.5:
            raise ValueError(f"t_eps must lie in (0, 0.5), got {t_eps}")
        self.t_dist, self.logit_mean, self.logit_std, self.t_eps = t_dist, float(logit_mean), float(logit_std), float(t_eps)

    def sample_t(self, batch: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.t_dist == "uniform":
            t = self.t_eps + (1 - 2 * self.t_eps) * _draw("rand", (batch,), like, generator)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * _draw("randn", (batch,), like, generator))
        return t.clamp(self.t_eps, 1 - self.t_eps)

    def sample_sigma(self, batch, like, generator):
        return flow_sigma(self.sample_t(batch, like, generator).double()).float()

    def weight(self, sigma, precond):
        return flow_frame(sigma.double())[1].pow(-2).float()


#: ``{type name: class}`` of the registered losses (the ``"loss"`` family of the registry).
LOSSES: dict[str, type[DenoisingLoss]] = REGISTRY["loss"]


def build_loss(config: Mapping[str, Any] | str) -> DenoisingLoss:
    """Build a loss from ``{"type": "edm"|"vp"|"ve"|"flow", **kwargs}`` (or just the type name).

    Unknown types and keys, and values of the wrong kind, raise ``ValueError`` naming them.
    """
    return build("loss", {"type": config} if isinstance(config, str) else config)
