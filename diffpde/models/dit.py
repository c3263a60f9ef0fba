"""Diffusion transformer (DiT, Peebles & Xie 2023) for fields or latents on 1D, 2D and 3D grids.

``DiT(x, c_noise, cond=None, params=None, *, context=None, context_mask=None)``, the call of the UNets:

- **patches**: ``x`` ``[B, C, n_1 p_1, ..., n_d p_d]`` (with ``cond`` concatenated as extra input
  channels) is cut into non-overlapping patches of ``patch_size = (p_1, ..., p_d)`` (one size per
  axis; ``d`` = ``len(patch_size)`` is the grid dimension), each flattened and mapped linearly to a
  token of width ``hidden_size``. A grid whose size is not a multiple of the patch is padded (about
  half on each side: circularly when ``periodic``, else by reflection, or by replication where the
  field is too small to reflect) and the output cropped back.
- **positions**: fixed sine-cosine embeddings of the token's patch index along each axis, computed
  from the actual token grid at every call, so a network built or trained on one grid runs on
  another (a larger grid is read as more tokens at the same spacing). The width is shared out
  between the axes (equal even shares, the rest to the first axis).
- **conditioning vector** ``c``: an MLP of the sinusoidal embedding of the preconditioner's float
  ``c_noise``, plus an MLP of the scalar ``params`` (:class:`~.embeddings.ParamEmbedding`), plus an
  MLP of the masked mean of the context tokens; each added at full width.
- **blocks** (adaLN-Zero): ``x + gate * SelfAttention(modulate(LN(x)))``, then, when the network
  has ``context_dim > 0`` and a context is given, ``x + CrossAttention(LN(x), context)``, then
  ``x + gate * MLP(modulate(LN(x)))``; shift, scale and gate come from a linear map of ``c`` that
  starts at zero, and the cross-attention's output projection starts at zero, so every block is the
  identity at initialisation. The final layer (adaptive LN, linear to ``prod(patch) * out_channels``
  per token) starts at zero too, so a fresh network outputs zeros.
- **context**: ``context`` ``[B, L, context_dim]`` tokens (text, an encoded first frame, ...) with
  ``context_mask`` ``[B, L]`` (true or 1 where a token is valid, as Hugging Face's
  ``attention_mask``). Masked tokens change nothing: they are zeroed, left out of the pooled mean
  and hidden from the attention. A sample without a valid token (or ``context=None``) gets no
  context at all: no cross-attention and no pooled vector, the unconditional network.
- attention is :func:`torch.nn.functional.scaled_dot_product_attention`.

Registered as network ``"dit"``; ``config()`` records the arguments and ``build("network", config)``
rebuilds it. Sizes of Text2PDE (Zhou et al. 2025) for its 3D latents ``[16, 6, 16, 16]`` with
patch ``(1, 2, 2)`` and 768-wide RoBERTa tokens: "DiT-S" ``hidden_size=512, depth=24,
num_heads=16`` (146.5 M parameters; Text2PDE's own: 146.3 M) and "DiT-B" ``hidden_size=1024,
depth=28, num_heads=16`` (637.1 M; its own: 636.0 M); see ``configs/darcy_dit.yaml``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ParamEmbedding, check_inputs, sinusoidal_embedding
from .registry import Configurable, register, register_to_config

Tensor = torch.Tensor

__all__ = ["DiT", "sincos_position_embedding", "patchify", "unpatchify", "pad_to_patches"]

#: width of the sinusoidal embedding of ``c_noise`` before its MLP (DiT's frequency_embedding_size).
NOISE_FREQUENCIES = 256


def sincos_position_embedding(grid: Sequence[int], dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sine-cosine embeddings ``[prod(grid), dim]`` of the points of an integer grid (row-major).

    Axis ``i`` gets ``m_i`` channels (``m_i`` even; equal shares of ``dim``, the rest to axis 0):
    ``[sin(k w_j), cos(k w_j)]`` of the index ``k`` along the axis with ``w_j = 10000 ** (-j / (m_i/2))``.
    """
    grid = tuple(int(n) for n in grid)
    d = len(grid)
    share = 2 * (dim // (2 * d))
    if dim % 2 or share == 0:
        raise ValueError(f"a {d}-D position embedding needs an even width of at least {2 * d}, got {dim}")
    widths = [dim - share * (d - 1)] + [share] * (d - 1)
    parts = []
    for axis, (n, m) in enumerate(zip(grid, widths)):
        freqs = torch.exp(-math.log(10000.0) * torch.arange(m // 2, device=device, dtype=torch.float64) / (m // 2))
        arg = torch.arange(n, device=device, dtype=torch.float64)[:, None] * freqs
        emb = torch.cat([arg.sin(), arg.cos()], dim=-1)                  # [n, m]
        shape = [1] * d + [m]
        shape[axis] = n
        parts.append(emb.reshape(shape).expand(*grid, m))
    return torch.cat(parts, dim=-1).reshape(-1, dim).to(torch.float32)


def pad_to_patches(x: Tensor, patch: Sequence[int], mode: str) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad the trailing ``len(patch)`` axes of ``x`` ``[B, C, ...]`` up to multiples of ``patch``.

    About half the padding goes before, half after. ``mode``: ``"circular"`` (at most one period),
    ``"reflect"`` (``"replicate"`` where a pad reaches the size) or ``"zeros"``. Returns the padded
    tensor and the index that crops it back.
    """
    spatial = x.shape[2:]
    pairs = [((-n) % p // 2, (-n) % p - (-n) % p // 2) for n, p in zip(spatial, patch)]
    crop = (slice(None), slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pairs, spatial)))
    if not any(lo or hi for lo, hi in pairs):
        return x, crop
    pads = [q for pair in reversed(pairs) for q in pair]   # F.pad takes the last axis first
    if mode == "zeros":
        return F.pad(x, pads), crop
    if mode == "reflect" and any(max(pair) >= n for pair, n in zip(pairs, spatial)):
        mode = "replicate"
    if mode == "circular" and any(max(pair) > n for pair, n in zip(pairs, spatial)):
        raise ValueError(f"grid {tuple(spatial)} is too small to pad circularly to multiples of {tuple(patch)}")
    return F.pad(x, pads, mode=mode), crop


def patchify(x: Tensor, patch: Sequence[int]) -> Tensor:
    """``[B, C, n_1 p_1, ..., n_d p_d]`` -> tokens ``[B, n_1 ... n_d, C p_1 ... p_d]`` (row-major over patches)."""
    b, c, *spatial = x.shape
    d = len(patch)
    counts = [n // p for n, p in zip(spatial, patch)]
    split = [b, c] + [v for n, p in zip(counts, patch) for v in (n, p)]
    order = [0, *(2 + 2 * i for i in range(d)), 1, *(3 + 2 * i for i in range(d))]
    return x.reshape(split).permute(order).reshape(b, math.prod(counts), c * math.prod(patch))


def unpatchify(tokens: Tensor, counts: Sequence[int], patch: Sequence[int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, prod(counts), C prod(patch)]`` -> ``[B, C, n_1 p_1, ...]``."""
    b, d = tokens.shape[0], len(patch)
    x = tokens.reshape(b, *counts, channels, *patch)
    order = [0, d + 1, *(v for i in range(d) for v in (1 + i, d + 2 + i))]
    return x.permute(order).reshape(b, channels, *(n * p for n, p in zip(counts, patch)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive layer-norm modulation ``x (1 + scale) + shift`` (``shift``, ``scale`` ``[B, 1, D]``)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention of tokens ``x`` ``[B, N, D]`` to ``x`` (self) or to ``context`` ``[B, L, Dc]``."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``mask`` (bool, broadcastable to ``[B, heads, N, L]``): true where a key may be attended."""
        b, n, dim = x.shape
        source = x if context is None else context
        heads = self.num_heads
        q = self.to_q(x).reshape(b, n, heads, dim // heads).transpose(1, 2)
        k, v = self.to_kv(source).reshape(b, source.shape[1], 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, dim))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, optional cross-attention to context tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.cross = Attention(dim, num_heads, context_dim, bias=False) if context_dim else None
        self.norm_cross = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                keep: Tensor | None = None) -> Tensor:
        """``x`` ``[B, N, D]``, ``c`` ``[B, D]``; ``keep`` ``[B, 1, 1]`` zeroes the cross-attention of empty contexts."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            h = self.cross(self.norm_cross(x), context, mask)
            x = x + (h if keep is None else keep * h)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


@register("network", "dit")
class DiT(Configurable, nn.Module):
    """Diffusion transformer for fields ``[B, C, *grid]`` on a ``len(patch_size)``-D grid (see the module docstring).

    Arguments:
        in_channels, out_channels: channels of ``x`` and of the output.
        cond_channels: channels of the known fields ``cond`` concatenated to ``x``.
        num_params:    number of scalar PDE parameters ``params`` ``[B, P]``.
        patch_size:    patch size per grid axis; its length is the grid dimension (1, 2 or 3).
        hidden_size:   token width (divisible by ``num_heads``; even, at least twice the grid dimension).
        depth:         number of blocks.
        num_heads:     attention heads.
        mlp_ratio:     MLP width / token width.
        context_dim:   width of the context tokens of the cross-attention (0: no cross-attention).
        periodic:      pad grids that are not multiples of the patch circularly (else by reflection).

    Registered as network ``"dit"`` (``config()`` / ``build("network", config)``).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        num_params: int = 0,
        patch_size: Sequence[int] = (2, 2),
        hidden_size: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        context_dim: int = 0,
        periodic: bool = False,
    ) -> None:
        super().__init__()
        patch = tuple(patch_size) if isinstance(patch_size, Sequence) and not isinstance(patch_size, str) else ()
        if not 1 <= len(patch) <= 3 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch):
            raise ValueError(f"patch_size must list one positive integer per grid axis (1 to 3 axes), got {patch_size!r}")
        if hidden_size % num_heads or hidden_size < 2 * len(patch) or hidden_size % 2:
            raise ValueError(f"hidden_size={hidden_size} must be even, >= {2 * len(patch)} and divisible by "
                             f"num_heads={num_heads}")
        if depth < 1 or mlp_ratio <= 0 or context_dim < 0:
            raise ValueError(f"need depth >= 1, mlp_ratio > 0 and context_dim >= 0, got {depth}, {mlp_ratio}, {context_dim}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.cond_channels, self.num_params = int(cond_channels), int(num_params)
        self.patch_size, self.spatial_dims = patch, len(patch)
        self.hidden_size, self.context_dim, self.periodic = int(hidden_size), int(context_dim), bool(periodic)
        width = hidden_size
        self.patch_embed = nn.Linear((self.in_channels + self.cond_channels) * math.prod(patch), width)
        self.noise_embed = nn.Sequential(nn.Linear(NOISE_FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width))
        self.param_embedding = ParamEmbedding(self.num_params, width) if self.num_params else None
        self.context_embed = (nn.Sequential(nn.Linear(context_dim, width), nn.SiLU(), nn.Linear(width, width))
                              if context_dim else None)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear_out = nn.Linear(width, math.prod(patch) * self.out_channels)
        self._initialise()

    def _initialise(self) -> None:
        """DiT's initialisation: Xavier linears, N(0, 0.02) noise MLP, zero modulations and output."""
        if self.linear_out.weight.is_meta:   # built on the meta device (to count parameters): no values
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for layer in (self.noise_embed[0], self.noise_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        zero = [self.modulation_out[-1], self.linear_out]
        zero += [b.modulation[-1] for b in self.blocks] + [b.cross.to_out for b in self.blocks if b.cross is not None]
        zero += [e.mlp[-1] if isinstance(e, ParamEmbedding) else e[-1]
                 for e in (self.param_embedding, self.context_embed) if e is not None]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, params: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, in_channels, *grid]``, ``c_noise`` float ``[B]`` -> ``[B, out_channels, *grid]``.

        ``context`` ``[B, L, context_dim]`` and ``context_mask`` ``[B, L]`` (true where valid; default
        all valid) are optional (see the module docstring).
        """
        check_inputs(x, cond, params, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
                     cond_channels=self.cond_channels, num_params=self.num_params, name="DiT")
        b = x.shape[0]
        c_noise = torch.as_tensor(c_noise, dtype=torch.float32, device=x.device).reshape(-1).expand(b)
        c = self.noise_embed(sinusoidal_embedding(c_noise, NOISE_FREQUENCIES).to(x.dtype))
        if self.param_embedding is not None:
            c = c + self.param_embedding(params.to(x.dtype))
        context, mask, keep = self._context(context, context_mask, b, x.dtype)
        if context is not None:
            pooled = context.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)   # masked mean
            c = c + keep[:, 0] * self.context_embed(pooled)
            mask = mask[:, None, None, :] | (keep[:, None] == 0)   # an empty context attends to (zeroed) all
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        h, crop = pad_to_patches(h, self.patch_size, "circular" if self.periodic else "reflect")
        counts = [n // p for n, p in zip(h.shape[2:], self.patch_size)]
        tokens = self.patch_embed(patchify(h, self.patch_size))
        tokens = tokens + sincos_position_embedding(counts, self.hidden_size, x.device).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, c, context, mask, keep)
        shift, scale = self.modulation_out(c)[:, None].chunk(2, dim=-1)
        tokens = self.linear_out(modulate(self.norm_out(tokens), shift, scale))
        return unpatchify(tokens, counts, self.patch_size, self.out_channels)[crop]

    def _context(self, context: Tensor | None, mask: Tensor | None, batch: int,
                 dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Checked context with masked tokens zeroed, its bool mask ``[B, L]`` and ``keep`` ``[B, 1, 1]``
        (0 for a sample without a valid token); ``(None, None, None)`` when there is no context."""
        if context is None:
            if mask is not None:
                raise ValueError("DiT: got context_mask without context")
            return None, None, None
        if not self.context_dim:
            raise ValueError(f"DiT: was built with context_dim=0 but got context of shape {tuple(context.shape)}")
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
            raise ValueError(f"DiT: context must have shape [{batch}, L, {self.context_dim}], got {tuple(context.shape)}")
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        elif mask.shape != context.shape[:2]:
            raise ValueError(f"DiT: context_mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}")
        if context.shape[1] == 0:     # no tokens at all: the unconditional network
            return None, None, None
        mask = mask.to(context.device).bool()
        context = context.to(dtype).masked_fill(~mask[..., None], 0.0)
        keep = mask.any(1).to(dtype)[:, None, None]
        return context, mask, keep
