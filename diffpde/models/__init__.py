"""Score networks, preconditioning, representations and the saved prior.

- :mod:`.precond`: ``EDMPrecond``, ``VPPrecond``, ``VEPrecond``, ``FlowPrecond`` turn a network
  ``net(x_in, c_noise, cond=None, params=None)`` into a denoiser ``D(x, sigma) -> x0_hat``.
- :mod:`.unet` / :mod:`.unet1d`: ``UNet2D`` (diffusers) and ``UNet1D`` (our own).
- :mod:`.representation`: ``Identity`` (wavelet and autoencoder representations come later).
- :mod:`.prior`: ``Prior``, the self-describing bundle saved with safetensors + JSON.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .precond import (
    EDMPrecond,
    FlowPrecond,
    Preconditioner,
    VEPrecond,
    VPPrecond,
    build_precond,
    measure_sigma_data,
)
from .representation import Identity, Representation, build_representation
from .unet import UNet2D
from .unet1d import UNet1D

NETWORKS: dict[str, type[nn.Module]] = {"unet2d": UNet2D, "unet1d": UNet1D}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Build a score network from ``{"type": "unet2d"|"unet1d", **kwargs}`` (as ``net.config()`` returns)."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in NETWORKS:
        raise ValueError(f"unknown network type {kind!r}; known: {', '.join(NETWORKS)}")
    try:
        return NETWORKS[kind](**config)
    except TypeError as e:
        raise ValueError(f"bad config for network {kind!r}: {e}") from None


def __getattr__(name: str):
    # Prior imports samplers and diffpde.data; load it lazily to keep `import diffpde.models` light.
    if name == "Prior":
        from .prior import Prior

        return Prior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Preconditioner", "EDMPrecond", "VPPrecond", "VEPrecond", "FlowPrecond", "build_precond",
    "measure_sigma_data", "UNet2D", "UNet1D", "build_network", "NETWORKS", "Representation",
    "Identity", "build_representation", "Prior",
]
