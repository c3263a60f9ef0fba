"""Score networks, preconditioning, representations and the saved prior.

- :mod:`.registry`: ``register`` / ``register_to_config`` and ``build(family, config)``: every
  network, preconditioner and representation records its constructor arguments, so its
  ``config()`` round-trips through JSON by its ``"type"`` name.
- :mod:`.precond`: ``EDMPrecond``, ``VPPrecond``, ``VEPrecond``, ``FlowPrecond`` turn a network
  ``net(x_in, c_noise, cond=None, params=None)`` into a denoiser ``D(x, sigma) -> x0_hat``.
- :mod:`.unet` / :mod:`.unet1d`: ``UNet2D`` (diffusers) and ``UNet1D`` (our own).
- :mod:`.dit`: ``DiT``, a diffusion transformer on 1D, 2D and 3D grids (adaLN-Zero, cross-attention).
- :mod:`.conditioning`: encoders of text (``TextEncoder``: a Hugging Face model, by default the
  offline all-MiniLM-L6-v2; ``HashTextEncoder``: tiny), given frames (``FrameEncoder``) and scalar
  parameters (``ParamEncoder``) to context tokens, and ``Conditioning``, their set with condition dropout.
- :mod:`.representation`: ``Identity``; :mod:`.wavelet`: ``Wavelet`` (WDNO's wavelet coefficients).
- :mod:`.prior`: ``Prior``, the self-describing bundle; :mod:`.construct` makes fresh priors from a
  model config or a dataset, :mod:`.persistence` saves and loads them (safetensors + JSON,
  local or from the Hugging Face Hub).
"""

from __future__ import annotations

from .conditioning import Conditioning, FrameEncoder, HashTextEncoder, ParamEncoder, TextEncoder
from .dit import DiT
from .precond import EDMPrecond, FlowPrecond, Preconditioner, VEPrecond, VPPrecond, measure_sigma_data
from .registry import REGISTRY, Configurable, build, register, register_to_config
from .representation import Identity, Representation
from .unet import UNet2D
from .unet1d import UNet1D
from .wavelet import Wavelet


def __getattr__(name: str):
    # Prior imports samplers and diffpde.data; load it lazily to keep `import diffpde.models` light.
    if name == "Prior":
        from .prior import Prior

        return Prior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Preconditioner", "EDMPrecond", "VPPrecond", "VEPrecond", "FlowPrecond", "measure_sigma_data",
    "UNet2D", "UNet1D", "DiT", "Conditioning", "TextEncoder", "HashTextEncoder", "FrameEncoder", "ParamEncoder",
    "Representation", "Identity", "Wavelet", "REGISTRY", "Configurable", "build", "register",
    "register_to_config", "Prior",
]
