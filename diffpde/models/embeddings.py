"""Small embeddings shared by the networks: noise level and scalar PDE parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def sinusoidal_embedding(c_noise: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding ``[cos(c w_k), sin(c w_k)]`` of float ``c_noise`` ``[B]`` -> ``[B, dim]``.

    Frequencies ``w_k = max_period ** (-k / (dim/2))`` for ``k = 0 .. dim/2 - 1`` (so the fastest is 1).
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    arg = c_noise.to(torch.float32).reshape(-1, 1) * freqs
    return torch.cat([arg.cos(), arg.sin()], dim=-1)


class ParamEmbedding(nn.Module):
    """MLP ``[B, P] -> [B, dim]`` of scalar PDE parameters, added to the noise embedding.

    The last layer starts at zero, so a fresh network ignores the parameters until it learns to
    use them (and a network trained without them is unchanged by adding the embedding).
    """

    def __init__(self, num_params: int, dim: int) -> None:
        super().__init__()
        self.num_params = int(num_params)
        self.mlp = nn.Sequential(nn.Linear(num_params, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, params: Tensor) -> Tensor:
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"params must have shape [B, {self.num_params}], got {tuple(params.shape)}")
        return self.mlp(params)


def check_inputs(x: Tensor, cond: Tensor | None, params: Tensor | None, *, spatial_dims: int,
                 in_channels: int, cond_channels: int, num_params: int, name: str) -> None:
    """Raise a clear error when ``x``, ``cond`` or ``params`` do not fit the network."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: x must have shape [B, {in_channels}, {', '.join(['...'] * spatial_dims)}], got {tuple(x.shape)}")
    if cond_channels:
        if cond is None:
            raise ValueError(f"{name}: expects cond with {cond_channels} channels, got None")
        if cond.shape[0] != x.shape[0] or cond.shape[1] != cond_channels or cond.shape[2:] != x.shape[2:]:
            raise ValueError(f"{name}: cond must have shape [{x.shape[0]}, {cond_channels}, {', '.join(map(str, x.shape[2:]))}], got {tuple(cond.shape)}")
    elif cond is not None:
        raise ValueError(f"{name}: was built with cond_channels=0 but got cond of shape {tuple(cond.shape)}")
    if num_params:
        if params is None:
            raise ValueError(f"{name}: expects params [B, {num_params}], got None")
        if params.shape != (x.shape[0], num_params):
            raise ValueError(f"{name}: params must have shape [{x.shape[0]}, {num_params}], got {tuple(params.shape)}")
    elif params is not None:
        raise ValueError(f"{name}: was built with num_params=0 but got params of shape {tuple(params.shape)}")
