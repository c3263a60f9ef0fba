"""2D score network: a diffusers ``UNet2DModel`` with PDE conditioning, any grid size and periodic convs.

``UNet2D(x, c_noise, cond=None, params=None)``:

- ``cond`` (known fields, ``[B, cond_channels, H, W]``) is concatenated to ``x`` as extra input
  channels; the output has ``out_channels`` channels only.
- ``params`` (scalar PDE parameters, ``[B, num_params]``) go through a small MLP
  (:class:`~diffpde.models.embeddings.ParamEmbedding`) whose output is added to the noise
  embedding, via ``UNet2DModel(class_embed_type="identity")`` and ``class_labels``.
- ``c_noise`` is a float ``[B]`` passed as diffusers' ``timestep`` (sinusoidal embedding).
- H and W need not be divisible by ``2 ** (levels - 1)``: the input is padded up to the next
  multiple (about half on each side) and the output cropped back. The padding is circular when
  ``periodic=True`` and reflecting otherwise (replicating when the field is too small to reflect).
- ``periodic=True`` also switches every padded ``Conv2d`` inside the UNet to
  ``padding_mode="circular"``, so that the whole network is equivariant under circular shifts of
  the input by multiples of ``2 ** (levels - 1)`` pixels (the stride of the deepest level) when
  H and W are divisible by it. (Padding the input alone would not do this: each conv would
  still zero-pad.) On a grid that must be padded, the network is only approximately periodic.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ParamEmbedding, check_inputs
from .registry import Configurable, register, register_to_config

Tensor = torch.Tensor


def pad_to_multiple(x: Tensor, multiple: int, mode: str) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad the trailing spatial dims of ``x`` up to a multiple of ``multiple``.

    ``mode``: ``"circular"``, ``"reflect"`` (falls back to ``"replicate"`` when a pad exceeds
    the size) or ``"zeros"``. Returns the padded tensor and the index that crops it back.
    """
    spatial = x.shape[2:]
    before_after = []
    crop = [slice(None), slice(None)]
    for n in spatial:
        total = (-n) % multiple
        lo = total // 2
        before_after.append((lo, total - lo))
        crop.append(slice(lo, lo + n))
    if all(p == (0, 0) for p in before_after):
        return x, tuple(crop)
    pads = [p for pair in reversed(before_after) for p in pair]   # F.pad wants the last dim first
    if mode == "zeros":
        return F.pad(x, pads), tuple(crop)
    if mode == "reflect" and any(max(p) >= n for p, n in zip(before_after, spatial)):
        mode = "replicate"
    if mode == "circular" and any(max(p) > n for p, n in zip(before_after, spatial)):
        raise ValueError(f"grid {tuple(spatial)} is too small to pad circularly to a multiple of {multiple}")
    return F.pad(x, pads, mode=mode), tuple(crop)


def make_convs_periodic(module: nn.Module) -> int:
    """Set ``padding_mode="circular"`` on every padded ``Conv1d``/``Conv2d`` in ``module``; return their count."""
    n = 0
    for m in module.modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
            continue
        if isinstance(m.padding, str):
            raise ValueError(f"cannot make {m} periodic: string padding {m.padding!r}")
        if any(p > 0 for p in m.padding):
            m.padding_mode = "circular"
            n += 1
    return n


@register("network", "unet2d")
class UNet2D(Configurable, nn.Module):
    """Score network for fields on a 2D grid, built on diffusers ``UNet2DModel``.

    Arguments:
        in_channels:       channels of the diffused state ``x`` (= ``out_channels`` normally).
        out_channels:      channels of the output ``F``.
        cond_channels:     channels of the known fields ``cond`` concatenated to the input.
        num_params:        number of scalar PDE parameters ``params`` ``[B, P]``.
        block_out_channels: width per level; each must be divisible by ``norm_num_groups``.
        layers_per_block:  ResNet blocks per level.
        attention_levels:  per level, whether the level has self-attention; the middle block has
                           attention iff the deepest level does.
        norm_num_groups:   GroupNorm groups.
        periodic:          circular padding everywhere (see module docstring).
        dropout:           dropout in the ResNet blocks.
        attention_head_dim: channels per attention head.

    Registered as network ``"unet2d"``: ``config()`` records these arguments and
    ``UNet2D.from_config(config)`` (or ``build("network", config)``) rebuilds the network.
    """

    spatial_dims = 2

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        num_params: int = 0,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        norm_num_groups: int = 8,
        periodic: bool = False,
        dropout: float = 0.0,
        attention_head_dim: int = 8,
    ) -> None:
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        attention_levels = tuple(bool(a) for a in attention_levels)
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(f"attention_levels {attention_levels} must have one entry per level of {block_out_channels}")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"block widths {bad} are not divisible by norm_num_groups={norm_num_groups}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.cond_channels, self.num_params = int(cond_channels), int(num_params)
        self.periodic = bool(periodic)
        self.multiple = 2 ** (len(block_out_channels) - 1)
        from diffusers import UNet2DModel  # imported here: diffusers takes seconds to import

        time_embed_dim = 4 * block_out_channels[0]
        self.unet = UNet2DModel(
            in_channels=self.in_channels + self.cond_channels,
            out_channels=self.out_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            add_attention=attention_levels[-1],
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            dropout=dropout,
            time_embedding_dim=time_embed_dim,
            class_embed_type="identity" if self.num_params else None,
        )
        self.param_embedding = ParamEmbedding(self.num_params, time_embed_dim) if self.num_params else None
        if self.periodic:
            make_convs_periodic(self.unet)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, params: Tensor | None = None) -> Tensor:
        """``x`` ``[B, in_channels, H, W]``, ``c_noise`` float ``[B]`` -> ``[B, out_channels, H, W]``."""
        check_inputs(x, cond, params, spatial_dims=2, in_channels=self.in_channels,
                     cond_channels=self.cond_channels, num_params=self.num_params, name="UNet2D")
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        h, crop = pad_to_multiple(h, self.multiple, "circular" if self.periodic else "reflect")
        labels = self.param_embedding(params.to(x.dtype)) if self.param_embedding is not None else None
        c_noise = torch.as_tensor(c_noise, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        out = self.unet(h, c_noise, class_labels=labels).sample
        return out[crop]
