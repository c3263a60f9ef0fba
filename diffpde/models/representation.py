"""Representations: the space a prior diffuses in, ``encode(fields) -> z``, ``decode(z) -> fields``.

``fields`` is the stacked, normalised tensor ``[B, C, *grid]`` (channel order = the prior's
field names); ``z`` is what the network sees. ``decode`` is differentiable so that observation
and PDE losses on physical fields can guide sampling in ``z``.

:class:`Identity` gives pixel-space diffusion (DiffusionPDE); :class:`~.wavelet.Wavelet` the
wavelet coefficients of whole trajectories (WDNO); a trained autoencoder (latent diffusion, as
in Text2PDE) comes later. Each registers itself (``@register("representation", name)``) and
records its arguments (``@register_to_config``), so ``build("representation", config)`` finds
it. A fresh prior calls :meth:`Representation.fit` with the fields' shape, the names of their
grid axes and the normalised training data, so a representation can measure what it needs
(the wavelet's subband statistics) and record it in its config.
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

    #: whether :meth:`fit` needs the names of the grid axes (``dims``) it was not given yet.
    needs_dims: bool = False

    #: whether ``encode`` and ``decode`` are affine with ``decode(encode(x)) = x``: then adding
    #: ``encode(x + d) - encode(x)`` to ``z`` changes ``decode(z)`` by exactly ``d``, which is how the
    #: ``projection`` method overwrites observed values in any such representation.
    affine: bool = False

    def fit(self, field_shape: Sequence[int], data: Tensor | None = None, dims: Sequence[str] | None = None) -> None:
        """Adapt to the fields of a fresh prior: their shape ``(C, *grid)``, normalised training
        samples ``[N, C, *grid]`` (or ``None``) and the names of the grid axes. Identity needs nothing."""


@register("representation", "identity")
class Identity(Representation):
    """Diffusion directly on the (normalised) fields: ``z = fields``."""

    affine = True

    @register_to_config
    def __init__(self) -> None:
        super().__init__()

    def encode(self, fields: Tensor) -> Tensor:
        return fields

    def decode(self, z: Tensor) -> Tensor:
        return z

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(n) for n in field_shape)
