"""Representations: the space a prior diffuses in, ``encode(fields) -> z``, ``decode(z) -> fields``.

``fields`` is the stacked, normalised tensor ``[B, C, *grid]`` (channel order = the prior's
field names); ``z`` is what the network sees. ``decode`` is differentiable so that observation
and PDE losses on physical fields can guide sampling in ``z``.

Only :class:`Identity` (pixel-space diffusion, as in DiffusionPDE) exists now. A wavelet
representation of whole trajectories (WDNO) and a trained autoencoder (latent diffusion, as in
Text2PDE) come later: each registers itself (``@register("representation", name)``) and
records its arguments (``@register_to_config``), so ``build("representation", config)`` finds it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import Configurable, register, register_to_config

Tensor = torch.Tensor


class Representation(Configurable, nn.Module):
    """Base class: ``encode``, differentiable ``decode``, ``latent_shape`` and a JSON ``config()``."""

    config_family = "representation"

    def encode(self, fields: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one ``z`` (without batch) for fields of shape ``[C, *grid]``."""
        raise NotImplementedError


@register("representation", "identity")
class Identity(Representation):
    """Diffusion directly on the (normalised) fields: ``z = fields``."""

    @register_to_config
    def __init__(self) -> None:
        super().__init__()

    def encode(self, fields: Tensor) -> Tensor:
        return fields

    def decode(self, z: Tensor) -> Tensor:
        return z

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(n) for n in field_shape)
