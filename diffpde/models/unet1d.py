"""1D score network for fields on a line: a small residual UNet of our own.

diffusers' ``UNet1DModel`` is built for audio (it fails for two input channels with its default
config), so this is a compact DDPM-style UNet in 1D:

- residual blocks ``GroupNorm -> SiLU -> Conv1d -> (+ embedding) -> GroupNorm -> SiLU -> Dropout
  -> Conv1d`` with a 1x1 shortcut when the width changes;
- sinusoidal embedding of the float ``c_noise`` through a 2-layer MLP, plus an MLP of the scalar
  PDE ``params`` (same scheme as :class:`~diffpde.models.unet.UNet2D`);
- stride-2 convolutions down, nearest-neighbour upsampling + convolution up, one skip
  connection per level (concatenated);
- ``cond`` concatenated to the input as extra channels; lengths not divisible by
  ``2 ** (levels - 1)`` are padded (circular when ``periodic``, else reflecting) and cropped back;
- ``periodic=True`` makes every convolution pad circularly, so the network commutes with circular
  shifts by multiples of ``2 ** (levels - 1)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ParamEmbedding, check_inputs, sinusoidal_embedding
from .registry import Configurable, register, register_to_config
from .unet import pad_to_multiple

Tensor = torch.Tensor


class ResBlock1D(nn.Module):
    """Residual block with the noise embedding added between the two convolutions."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float, padding_mode: str) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1, padding_mode=padding_mode)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, padding_mode=padding_mode)
        self.shortcut = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


@register("network", "unet1d")
class UNet1D(Configurable, nn.Module):
    """Score network for fields ``[B, C, N]`` on a 1D grid; same call as :class:`UNet2D`.

    Arguments:
        in_channels, out_channels: channels of ``x`` and of the output.
        cond_channels:      channels of the known fields ``cond`` ``[B, Cc, N]``.
        num_params:         number of scalar PDE parameters ``params`` ``[B, P]``.
        block_out_channels: width per level (each divisible by ``norm_num_groups``).
        layers_per_block:   residual blocks per level on the way down (one more on the way up).
        norm_num_groups:    GroupNorm groups.
        periodic:           circular padding in every convolution and for the input padding.
        dropout:            dropout inside the residual blocks.

    Registered as network ``"unet1d"`` (see :class:`~diffpde.models.unet.UNet2D` for the config round trip).
    """

    spatial_dims = 1

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        num_params: int = 0,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        periodic: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(c) for c in block_out_channels)
        bad = [c for c in widths if c % norm_num_groups]
        if bad:
            raise ValueError(f"block widths {bad} are not divisible by norm_num_groups={norm_num_groups}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.cond_channels, self.num_params = int(cond_channels), int(num_params)
        self.periodic = bool(periodic)
        self.multiple = 2 ** (len(widths) - 1)
        pm = "circular" if periodic else "zeros"
        g = norm_num_groups
        self.embed_dim = widths[0]
        emb_dim = 4 * widths[0]
        self.noise_mlp = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.param_embedding = ParamEmbedding(self.num_params, emb_dim) if self.num_params else None

        def block(cin: int, cout: int) -> ResBlock1D:
            return ResBlock1D(cin, cout, emb_dim, g, dropout, pm)

        self.conv_in = nn.Conv1d(self.in_channels + self.cond_channels, widths[0], 3, padding=1, padding_mode=pm)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cur = widths[0]
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList([block(cur if j == 0 else w, w) for j in range(layers_per_block)]))
            cur = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv1d(w, w, 3, stride=2, padding=1, padding_mode=pm))
        self.mid = nn.ModuleList([block(cur, cur), block(cur, cur)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up.append(nn.ModuleList([block(cur + w if j == 0 else w, w) for j in range(layers_per_block + 1)]))
            cur = w
            if i > 0:
                self.upsample.append(nn.Conv1d(w, w, 3, padding=1, padding_mode=pm))
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv1d(cur, self.out_channels, 3, padding=1, padding_mode=pm)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, params: Tensor | None = None) -> Tensor:
        """``x`` ``[B, in_channels, N]``, ``c_noise`` float ``[B]`` -> ``[B, out_channels, N]``."""
        check_inputs(x, cond, params, spatial_dims=1, in_channels=self.in_channels,
                     cond_channels=self.cond_channels, num_params=self.num_params, name="UNet1D")
        c_noise = torch.as_tensor(c_noise, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.noise_mlp(sinusoidal_embedding(c_noise, self.embed_dim).to(x.dtype))
        if self.param_embedding is not None:
            emb = emb + self.param_embedding(params.to(x.dtype))
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        h, crop = pad_to_multiple(h, self.multiple, "circular" if self.periodic else "reflect")
        h = self.conv_in(h)
        skips = []
        for i, blocks in enumerate(self.down):
            for b in blocks:
                h = b(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for b in self.mid:
            h = b(h, emb)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for b in blocks:
                h = b(h, emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[crop]
