"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

A guided denoiser mixes a conditional and an unconditional denoiser of one network::

    D_w(x, sigma) = D_u(x, sigma) + w * (D_c(x, sigma) - D_u(x, sigma))

(``w = 0``: unconditional, ``w = 1``: conditional, ``w > 1``: the condition amplified). In the VE
frame this is the same mix of the scores, ``s_u + w (s_c - s_u)``, since ``D = x + sigma^2 s``.

The wrapped callable is a **switched denoiser** ``D(x, sigma, conditional) -> x0_hat`` whose
``conditional`` (bool ``[B]``) says, per sample, whether the condition is applied: a network trained
with condition dropout evaluates both branches in one call on the doubled batch
``[x, x]`` with ``conditional = [True..., False...]``. :func:`switch` builds one from two plain
denoisers (two calls, for denoisers that cannot batch their branches).

The result is a plain denoiser ``D_w(x, sigma)``, so it works with every solver and composes with
every guidance that wraps a denoiser (:class:`~samplers.guidance.DPSGuidance`,
:class:`~samplers.covariance.CovarianceGuidance`, the TDS particle sampler's twisting): their
vector-Jacobian products go through both branches. The mix is ``torch.lerp``, which returns ``D_u``
at ``w = 0`` and ``D_c`` at ``w = 1`` bit for bit; at exactly those scales only one branch is
evaluated.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._core import Denoiser, Tensor, append_dims

SwitchedDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = ["ClassifierFreeGuidance", "switch"]


def _sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    s = torch.as_tensor(sigma, device=x.device)
    return s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(-1)


class ClassifierFreeGuidance:
    """The denoiser ``D_u + w (D_c - D_u)`` of a switched denoiser ``denoiser(x, sigma, conditional)``.

    Arguments:
        denoiser: ``D(x, sigma, conditional) -> x0_hat`` (VE frame) with ``conditional`` bool ``[B]``.
        scale:    guidance scale ``w``: a float, a ``[B]`` tensor (one scale per sample), or a
                  callable of ``sigma`` ``[B]`` returning either (e.g. guidance only in a range of
                  noise levels).
        batched:  evaluate both branches in one call on the doubled batch (default); ``False``
                  calls the denoiser twice (half the memory).

    Counters: ``calls`` (wrapper calls) and ``network_calls`` (calls of ``denoiser``).
    """

    def __init__(self, denoiser: SwitchedDenoiser, scale: float | Tensor | Callable[[Tensor], float | Tensor] = 1.0,
                 batched: bool = True) -> None:
        if not callable(scale):
            w = torch.as_tensor(scale, dtype=torch.float64)
            if not torch.isfinite(w).all():
                raise ValueError(f"guidance scale must be finite, got {scale!r}")
        self.denoiser, self.scale, self.batched = denoiser, scale, bool(batched)
        self.calls = 0
        self.network_calls = 0

    def _call(self, x: Tensor, sigma: Tensor, conditional: bool | Tensor) -> Tensor:
        self.network_calls += 1
        if isinstance(conditional, bool):
            conditional = torch.full((x.shape[0],), conditional, dtype=torch.bool, device=x.device)
        return self.denoiser(x, sigma, conditional)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        sigma = _sigma_batch(sigma, x)
        w = self.scale(sigma) if callable(self.scale) else self.scale
        w = w.to(x.device) if isinstance(w, Tensor) else torch.as_tensor(w, dtype=torch.float64, device=x.device)
        if w.ndim and w.numel() != x.shape[0] and w.numel() != 1:
            raise ValueError(f"guidance scale must be a scalar or have one value per sample ({x.shape[0]}), "
                             f"got shape {tuple(w.shape)}")
        if (w == 1).all():
            return self._call(x, sigma, True)
        if (w == 0).all():
            return self._call(x, sigma, False)
        if self.batched:
            b = x.shape[0]
            both = self._call(torch.cat([x, x]), torch.cat([sigma, sigma]),
                              torch.arange(2 * b, device=x.device) < b)
            conditional, unconditional = both[:b], both[b:]
        else:
            conditional, unconditional = self._call(x, sigma, True), self._call(x, sigma, False)
        weight = append_dims(w.reshape(-1), x.ndim).to(conditional.dtype) if w.ndim else w.to(conditional.dtype)
        return torch.lerp(unconditional, conditional, weight)


def switch(conditional: Denoiser, unconditional: Denoiser) -> SwitchedDenoiser:
    """A switched denoiser from two plain ones: ``conditional`` where the switch is on, else ``unconditional``.

    Each is called once on its part of the batch (not at all when the part is empty); differentiable.
    """

    def denoise(x: Tensor, sigma: Tensor, on: Tensor) -> Tensor:
        on = on.to(torch.bool).reshape(-1)
        sigma = _sigma_batch(sigma, x)
        if bool(on.all()):
            return conditional(x, sigma)
        if not bool(on.any()):
            return unconditional(x, sigma)
        yes, no = on.nonzero().reshape(-1), (~on).nonzero().reshape(-1)
        out = torch.cat([conditional(x[yes], sigma[yes]), unconditional(x[no], sigma[no])])
        order = torch.empty_like(on, dtype=torch.long)
        order[torch.cat([yes, no])] = torch.arange(x.shape[0], device=x.device)
        return out[order]

    return denoise
