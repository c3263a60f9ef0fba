"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA copy of a module: ``shadow <- decay_t * shadow + (1 - decay_t) * params`` per update.

    model:  the module to average (its unwrapped form; DDP/compile wrappers are not wanted here).
    decay:  decay per update, in [0, 1).
    warmup: use ``decay_t = min(decay, (1 + t) / (10 + t))`` at update ``t``, so that the early,
            random weights are forgotten quickly.

    ``shadow`` is a frozen float32 deep copy of the module in eval mode, usable wherever the model
    is (sampling, export). Buffers are copied, not averaged. ``state_dict`` / ``load_state_dict``
    hold only tensors (the update count and the decay as 0-d tensors), so the state is stored as
    safetensors (the trainer's checkpoints hold it as ``ema.safetensors``).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """Decay used by the next update."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards the weights of ``model`` (same architecture)."""
        decay = self.current_decay()
        params = dict(model.named_parameters())
        shadow_params, model_params = [], []
        for name, p in self.shadow.named_parameters():
            shadow_params.append(p)
            model_params.append(params[name].detach().to(p.dtype))
        if shadow_params:
            torch._foreach_lerp_(shadow_params, model_params, 1.0 - decay)
        buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(buffers[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": torch.tensor(self.num_updates), "decay": torch.tensor(self.decay, dtype=torch.float64),
                **{f"shadow.{k}": v for k, v in self.shadow.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = {k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")}
        missing, unexpected = self.shadow.load_state_dict(shadow, strict=False)
        if missing or unexpected or "num_updates" not in state:
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
