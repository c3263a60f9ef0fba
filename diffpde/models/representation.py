"""Representations: the space a prior diffuses in, ``encode(fields) -> z``, ``decode(z) -> fields``.

``fields`` is the stacked, normalised tensor ``[B, C, *grid]`` (channel order = the prior's
field names); ``z`` is what the network sees. ``decode`` is differentiable so that observation
and PDE losses on physical fields can guide sampling in ``z``.

Only :class:`Identity` (pixel-space diffusion, as in DiffusionPDE) exists now. A wavelet
representation of whole trajectories (WDNO) and a trained autoencoder (latent diffusion, as in
Text2PDE) come later and plug in through :func:`build_representation`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

Tensor = torch.Tensor


class Representation(nn.Module):
    """Base class: ``encode``, differentiable ``decode``, ``latent_shape`` and a JSON ``config``."""

    kind: str = ""

    def encode(self, fields: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one ``z`` (without batch) for fields of shape ``[C, *grid]``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"type": self.kind}


class Identity(Representation):
    """Diffusion directly on the (normalised) fields: ``z = fields``."""

    kind = "identity"

    def encode(self, fields: Tensor) -> Tensor:
        return fields

    def decode(self, z: Tensor) -> Tensor:
        return z

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(n) for n in field_shape)


REPRESENTATIONS: dict[str, type[Representation]] = {"identity": Identity}


def build_representation(config: dict[str, Any] | None) -> Representation:
    """Build a representation from ``{"type": "identity", ...}`` (``None`` means identity)."""
    config = dict(config or {"type": "identity"})
    kind = config.pop("type", None)
    if kind not in REPRESENTATIONS:
        raise ValueError(f"unknown representation type {kind!r}; known: {', '.join(REPRESENTATIONS)}")
    try:
        return REPRESENTATIONS[kind](**config)
    except TypeError as e:
        raise ValueError(f"bad config for representation {kind!r}: {e}") from None
