"""A trained diffusion prior as one self-describing object: ``Prior``.

A prior bundles

- the **preconditioned network** (:mod:`.precond`), a denoiser in the normalised VE frame;
- the **representation** (:mod:`.representation`) the network diffuses in;
- the **normaliser** (:class:`diffpde.data.normalize.Normalizer`) of the physical fields,
  covering the generated fields and the conditioning fields;
- the **problem** (``{"name", "resolution", "parameters"}`` as ``PDE.config()`` gives it), the
  names of the generated fields (channels of ``x``), of the conditioning fields (channels of
  ``cond``) and of the scalar parameters (columns of ``params``), and the grid shape;
- the default noise range ``sigma_min``/``sigma_max`` for sampling;
- optionally the **conditioning encoders** (:mod:`.conditioning`): text, given frames and scalar
  parameters as context tokens of the network (a DiT's cross-attention), with the probabilities of
  condition dropout it was trained with (what classifier-free guidance needs).

Frames: physical fields ``{name: [B, *grid]}`` --normalise--> stacked ``[B, C, *grid]``
--encode--> ``z`` (what is diffused); :meth:`Prior.encode_fields` and :meth:`Prior.decode_fields`
go back and forth, differentiably. Conditioning fields are normalised (not encoded) and handed to
the network as extra channels. Scalar ``params`` are passed to the network as they are (or to the
parameter encoder as tokens). Given frames (the first frame of a trajectory, say) are normalised
with the statistics of their fields; captions are strings.

Conditions are bound into the denoiser: ``prior.denoiser(cond, params, text=..., frames=...)``; with
``guidance_scale=w`` the denoiser is classifier-free guided (:mod:`samplers.cfg`):
``D_u + w (D_c - D_u)`` from one network call on the doubled batch, whose second half has every
context token masked (exactly the network's unconditional ``context=None`` path).

Persistence (:meth:`save_pretrained`, :meth:`from_pretrained`: ``model.safetensors`` +
``config.json``, local or on the Hugging Face Hub, checked on load) lives in :mod:`.persistence`,
construction from a model config or a dataset (:meth:`from_config`, :meth:`from_dataset`) in
:mod:`.construct`; the classmethods here delegate to them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..data.normalize import Normalizer
from .conditioning import Conditioning, conditioned_call
from .persistence import CONFIG_NAME, FORMAT, WEIGHTS_NAME, load_prior, save_prior
from .precond import Preconditioner
from .representation import Identity, Representation

Tensor = torch.Tensor

__all__ = ["Prior", "WEIGHTS_NAME", "CONFIG_NAME"]


class Prior(nn.Module):
    """A diffusion prior over PDE fields: network, preconditioning, representation, normaliser, problem.

    Arguments:
        precond:        the preconditioned network (its ``net`` must have ``config()``).
        fields:         names of the generated fields, in channel order.
        grid_shape:     shape of one field, e.g. ``(64, 64)``.
        cond_fields:    names of the conditioning fields (channels of ``cond``).
        param_names:    names of the scalar parameters (columns of ``params``).
        normalizer:     a ``Normalizer`` (or its ``to_dict()``) with statistics of every field in
                        ``fields`` and ``cond_fields``; ``None`` means the data is used as it is.
        representation: default :class:`Identity`.
        problem:        a ``PDE`` instance or its ``config()`` dict; ``None`` for data without one.
        sigma_min, sigma_max: default sampling range (default: the preconditioner's).
        conditioning:   a :class:`~.conditioning.Conditioning` (or its ``config()``): encoders of
                        text, frames (of fields among ``fields`` and ``cond_fields``) and scalar
                        parameters; needs a network with ``context_dim`` equal to their width.
    """

    def __init__(
        self,
        precond: Preconditioner,
        fields: Sequence[str],
        grid_shape: Sequence[int],
        *,
        cond_fields: Sequence[str] = (),
        param_names: Sequence[str] = (),
        normalizer: Normalizer | Mapping[str, Any] | None = None,
        representation: Representation | None = None,
        problem: Any = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        conditioning: Conditioning | Mapping[str, Any] | None = None,
        cond_representation: Representation | None = None,
    ) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.cond_fields = tuple(cond_fields)
        self.param_names = tuple(param_names)
        if not self.fields:
            raise ValueError("a prior needs at least one generated field")
        both = set(self.fields) & set(self.cond_fields)
        if both or len(set(self.fields)) < len(self.fields) or len(set(self.cond_fields)) < len(self.cond_fields):
            raise ValueError(f"field names must be unique and not both generated and given: {self.fields}, {self.cond_fields}")
        self.grid_shape = tuple(int(n) for n in grid_shape)
        if not self.grid_shape or min(self.grid_shape) < 1:
            raise ValueError(f"grid_shape must hold positive sizes, got {self.grid_shape}")
        self.precond = precond
        self.representation = representation if representation is not None else Identity()
        # the conditioning fields enter the network on the latent grid: through their own instance of the
        # representation (its own statistics) when that is not the identity
        self.cond_representation = cond_representation if cond_representation is not None else Identity()
        if isinstance(conditioning, Mapping):
            conditioning = Conditioning.from_config(conditioning)
        self.conditioning = conditioning
        if isinstance(normalizer, Mapping):
            normalizer = Normalizer.from_dict(normalizer)
        self.normalizer = normalizer
        if normalizer is not None:
            if normalizer.field_ndim != len(self.grid_shape):
                raise ValueError(f"the normaliser has field_ndim={normalizer.field_ndim} but grid_shape "
                                 f"{list(self.grid_shape)} has {len(self.grid_shape)} axes")
            self._field_norm = normalizer.select(self.fields)
            self._cond_norm = normalizer.select(self.cond_fields) if self.cond_fields else None
        else:
            self._field_norm = self._cond_norm = None
        self._check_network()
        self._check_conditioning()
        if problem is not None and not isinstance(problem, Mapping):
            problem = problem.config()
        if problem is not None and not {"name", "resolution"} <= set(problem):
            raise ValueError(f"problem must name 'name' and 'resolution', got {dict(problem)}")
        self.problem_config: dict[str, Any] | None = (
            json.loads(json.dumps(problem, default=_to_json)) if problem is not None else None)
        self.sigma_min = float(precond.sigma_min if sigma_min is None else sigma_min)
        self.sigma_max = float(precond.sigma_max if sigma_max is None else sigma_max)
        if not 0 < self.sigma_min < self.sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}")
        self._problem = None

    def _check_network(self) -> None:
        """The network's channels, scalar parameters and grid dimension fit the fields and the grid."""
        net, latent = self.precond.net, self.latent_shape
        tokenised = self.conditioning is not None and "params" in self.conditioning
        rep = getattr(self.representation, "config_type", "") or type(self.representation).__name__
        fields = f"{len(self.fields)} field(s) {list(self.fields)} on the {rep} representation"
        expect = {
            "spatial_dims": (len(latent) - 1, f"grid_shape {list(self.grid_shape)} gives {len(latent) - 1}-D latents"),
            "in_channels": (latent[0], f"{fields} give {latent[0]} latent channel(s)"),
            "out_channels": (latent[0], f"{fields} give {latent[0]} latent channel(s)"),
            "cond_channels": (self.cond_latent_channels, f"the conditioning fields are {list(self.cond_fields)}"
                              + ("" if self.cond_representation.kind == "identity" else
                                 f" on the {self.cond_representation.kind} representation")),
            "num_params": (0 if tokenised else len(self.param_names),
                           f"the scalar parameters are {list(self.param_names)}"
                           + (" (encoded as context tokens)" if tokenised else "")),
        }
        for attr, (want, why) in expect.items():
            have = getattr(net, attr, None)
            if have is not None and have != want:
                raise ValueError(f"the network has {attr}={have} but {why}")

    def _check_conditioning(self) -> None:
        """The encoders fit the network's context width, the fields, the grid and the parameters."""
        c = self.conditioning
        self._frame_norm = None
        if c is None:
            return
        width = getattr(self.precond.net, "context_dim", None)
        kind = getattr(self.precond.net, "config_type", "") or type(self.precond.net).__name__
        if not width:
            raise ValueError(f"the network {kind!r} takes no context tokens, but the prior has {list(c.kinds)} "
                             "conditioning (use a DiT with context_dim > 0)")
        if width != c.dim:
            raise ValueError(f"the network has context_dim={width} but the conditioning encoders give "
                             f"{c.dim}-wide tokens")
        if "frames" in c:
            enc = c["frames"]
            known = (*self.fields, *self.cond_fields)
            missing = [f for f in enc.fields if f not in known]
            if missing:
                raise ValueError(f"frames: field(s) {missing} are not fields of the prior ({list(known)})")
            if len(enc.dims) != len(self.grid_shape):
                raise ValueError(f"frames: dims {list(enc.dims)} name {len(enc.dims)} axes but grid_shape "
                                 f"{list(self.grid_shape)} has {len(self.grid_shape)}")
            if self.normalizer is not None:   # the fields' statistics on the frame's axes
                stats = self.normalizer.select(enc.fields)
                self._frame_norm = Normalizer(stats.fields, stats.mean, stats.std, enc.spatial_dims)
        if "params" in c and tuple(c["params"].names) != self.param_names:
            raise ValueError(f"params: the encoder takes {list(c['params'].names)} but the prior's parameters are "
                             f"{list(self.param_names)}")

    # -- description -----------------------------------------------------------------------------

    @property
    def net(self) -> nn.Module:
        return self.precond.net

    @property
    def sigma_data(self) -> float:
        return self.precond.sigma_data

    @property
    def field_shape(self) -> tuple[int, ...]:
        """Shape of one stacked sample of physical fields, ``(C, *grid)``."""
        return (len(self.fields), *self.grid_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one diffused sample ``z`` (without batch)."""
        return self.representation.latent_shape(self.field_shape)

    @property
    def problem(self):
        """The PDE instance (``diffpde.pdes.get(name, resolution, **parameters)``)."""
        if self._problem is None:
            if self.problem_config is None:
                raise ValueError("this prior was built without a problem (PDE family)")
            from .. import pdes

            c = self.problem_config
            problem = pdes.get(c["name"], c["resolution"], **c.get("parameters", {}))
            known = {f.name: tuple(f.shape) for f in problem.fields}
            full_dims = tuple(problem.field(self.fields[0]).dims) if self.fields[0] in known else ()
            for name in (*self.fields, *self.cond_fields):
                if name not in known:
                    raise ValueError(f"prior field {name!r} is not a field of the problem {c['name']!r} "
                                     f"(its fields: {list(known)})")
                if name in self.cond_fields and _repeated_along(problem.field(name), full_dims, self.grid_shape):
                    continue   # a conditioning field on fewer axes (u0 over x), repeated along the others
                if known[name] != self.grid_shape:
                    raise ValueError(f"grid_shape {list(self.grid_shape)} differs from the shape "
                                     f"{list(known[name])} of field {name!r} of {c['name']!r} at resolution {c['resolution']}")
            self._problem = problem
        return self._problem

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def config(self) -> dict[str, Any]:
        """Everything but the weights, JSON-serialisable (what ``config.json`` holds)."""
        if not hasattr(self.net, "config"):
            raise TypeError(f"network {type(self.net).__name__} has no config(); the prior cannot describe itself")
        from .. import __version__

        out = {
            "format": FORMAT,
            "format_version": 1 if self.conditioning is None else 2,   # the oldest format that reads it
            "diffpde_version": __version__,
            "network": self.net.config(),
            "precond": self.precond.config(),
            "representation": self.representation.config(),
            "normalizer": self.normalizer.to_dict() if self.normalizer is not None else None,
            "problem": self.problem_config,
            "fields": list(self.fields),
            "cond_fields": list(self.cond_fields),
            "param_names": list(self.param_names),
            "grid_shape": list(self.grid_shape),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }
        if self.conditioning is not None:
            out["conditioning"] = self.conditioning.config()
        if self.cond_fields and self.cond_representation.kind != "identity":
            out["cond_representation"] = self.cond_representation.config()
        return out

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, model: Mapping[str, Any] | Any, **kwargs: Any) -> "Prior":
        """A fresh (untrained) prior from a model section; see :func:`.construct.prior_from_config`."""
        from .construct import prior_from_config

        return prior_from_config(model, **kwargs)

    @classmethod
    def from_dataset(cls, dataset: Any, model: Mapping[str, Any] | Any, **kwargs: Any) -> "Prior":
        """A fresh prior for a normalised dataset; see :func:`.construct.prior_from_dataset`."""
        from .construct import prior_from_dataset

        return prior_from_dataset(dataset, model, **kwargs)

    # -- frames ----------------------------------------------------------------------------------

    def _stack(self, values: Mapping[str, Any] | Tensor, names: Sequence[str], what: str) -> Tensor:
        """Stack ``{name: [B, *grid]}`` (or ``[*grid]``) to ``[B, C, *grid]`` float32 on the prior's device."""
        if isinstance(values, Tensor):
            t = values.to(self.device, torch.float32)
            if t.ndim == len(self.grid_shape) + 1:
                t = t.unsqueeze(0)
            if tuple(t.shape[1:]) != (len(names), *self.grid_shape):
                raise ValueError(f"{what} must have shape [B, {len(names)}, {', '.join(map(str, self.grid_shape))}] "
                                 f"(channels {list(names)}), got {tuple(values.shape)}")
            return t
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(f"{what}: missing field(s) {missing}; got {list(values)}")
        out = []
        for n in names:
            t = torch.as_tensor(values[n]).to(self.device, torch.float32)
            if tuple(t.shape) == self.grid_shape:
                t = t.unsqueeze(0)
            if tuple(t.shape[1:]) != self.grid_shape:
                raise ValueError(f"{what}: field {n!r} must have shape [B, {', '.join(map(str, self.grid_shape))}], got {tuple(t.shape)}")
            out.append(t)
        batch = {t.shape[0] for t in out}
        if len(batch) > 1:
            b = max(batch)
            if batch - {1, b}:
                raise ValueError(f"{what}: fields have different batch sizes {sorted(batch)}")
            out = [t.expand(b, *t.shape[1:]) for t in out]
        return torch.stack(out, dim=1)

    def encode_fields(self, fields: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Physical fields ``{name: [B, *grid]}`` (or stacked ``[B, C, *grid]``) -> normalised ``z``."""
        x = self._stack(fields, self.fields, "fields")
        if self._field_norm is not None:
            x = self._field_norm.normalize(x)
        return self.representation.encode(x)

    def decode_fields(self, z: Tensor) -> dict[str, Tensor]:
        """Diffused ``z`` ``[B, *latent]`` -> physical fields ``{name: [B, *grid]}`` (differentiable)."""
        x = self.representation.decode(z)
        if self._field_norm is not None:
            x = self._field_norm.denormalize(x)
        return {n: x[:, i] for i, n in enumerate(self.fields)}

    def encode_cond(self, cond: Mapping[str, Tensor] | Tensor | None) -> Tensor | None:
        """Physical conditioning fields -> normalised ``[B, Cc, *grid]`` (``None`` if there are none)."""
        if not self.cond_fields:
            if cond is not None and len(cond):
                raise ValueError(f"this prior takes no conditioning fields, got {list(cond) if isinstance(cond, Mapping) else tuple(cond.shape)}")
            return None
        if cond is None:
            raise ValueError(f"this prior needs the conditioning field(s) {list(self.cond_fields)}")
        c = self._stack(cond, self.cond_fields, "cond")
        return self.cond_latent(self._cond_norm.normalize(c) if self._cond_norm is not None else c)

    @property
    def cond_latent_channels(self) -> int:
        """Channels the conditioning fields take on the network's grid."""
        if not self.cond_fields:
            return 0
        return self.cond_representation.latent_shape((len(self.cond_fields), *self.grid_shape))[0]

    def cond_latent(self, c: Tensor | None) -> Tensor | None:
        """Normalised conditioning fields ``[B, Cc, *grid]`` -> what the network takes (the latent grid)."""
        return None if c is None else self.cond_representation.encode(c)

    def encode_params(self, params: Mapping[str, Any] | Tensor | Sequence[float] | None) -> Tensor | None:
        """Scalar parameters ``{name: value or [B]}`` or ``[B, P]`` / ``[P]`` -> float32 ``[B, P]``."""
        if not self.param_names:
            if params is not None and len(params):
                raise ValueError("this prior takes no scalar parameters")
            return None
        if params is None:
            raise ValueError(f"this prior needs the parameter(s) {list(self.param_names)}")
        if isinstance(params, Mapping):
            missing = [n for n in self.param_names if n not in params]
            if missing:
                raise KeyError(f"params: missing {missing}; got {list(params)}")
            cols = [torch.as_tensor(params[n], dtype=torch.float32).reshape(-1) for n in self.param_names]
            b = max(c.numel() for c in cols)
            p = torch.stack([c.expand(b) for c in cols], dim=1)
        else:
            p = torch.as_tensor(params, dtype=torch.float32)
            p = p.reshape(1, -1) if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[1] != len(self.param_names):
            raise ValueError(f"params must have shape [B, {len(self.param_names)}] ({list(self.param_names)}), got {tuple(p.shape)}")
        return p.to(self.device)

    # -- conditions: text, frames, parameters as tokens ----------------------------------------------

    def _encoder(self, kind: str):
        if self.conditioning is None or kind not in self.conditioning:
            have = list(self.conditioning.kinds) if self.conditioning is not None else []
            raise ValueError(f"this prior has no {kind!r} conditioning (its conditions: {have or 'none'})")
        return self.conditioning[kind]

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame the frame encoder takes (the grid without the frame axis)."""
        enc = self._encoder("frames")
        if enc.axis is None:
            return self.grid_shape
        axis = enc.dims.index(enc.axis)
        return tuple(n for i, n in enumerate(self.grid_shape) if i != axis)

    def frames_of(self, fields: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The frames of the frame encoder (e.g. ``w`` at ``t = 0``) cut out of fields ``{name: [B, *grid]}``."""
        enc = self._encoder("frames")
        out = {}
        for name in enc.fields:
            if name not in fields:
                raise KeyError(f"frames_of: missing field {name!r}; got {list(fields)}")
            t = torch.as_tensor(fields[name])
            t = t.unsqueeze(0) if tuple(t.shape) == self.grid_shape else t
            if tuple(t.shape[1:]) != self.grid_shape:
                raise ValueError(f"frames_of: field {name!r} must have shape "
                                 f"[B, {', '.join(map(str, self.grid_shape))}], got {tuple(t.shape)}")
            out[name] = t if enc.axis is None else t.select(1 + enc.dims.index(enc.axis), enc.index)
        return out

    def encode_frames(self, frames: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Physical frames ``{name: [B, *frame_shape]}`` (or stacked ``[B, C, *frame_shape]``) -> normalised.

        The frame of a single field may also be ``[B, *frame_shape]``; batch 1 may be left out
        (``[C, *frame_shape]``, or ``frame_shape`` alone for a single field).
        Full fields are cut with :meth:`frames_of`.
        """
        enc = self._encoder("frames")
        shape, c = self.frame_shape, len(enc.fields)
        what = f"frames must have shape [B, {c} ({', '.join(enc.fields)}), {', '.join(map(str, shape))}]"
        if isinstance(frames, Mapping):
            missing = [n for n in enc.fields if n not in frames]
            if missing:
                raise KeyError(f"frames: missing field(s) {missing}; got {list(frames)} "
                               "(cut full fields with frames_of)")
            parts = []
            for name in enc.fields:
                t = torch.as_tensor(frames[name]).to(self.device, torch.float32)
                t = t.unsqueeze(0) if tuple(t.shape) == shape else t
                if tuple(t.shape[1:]) != shape:
                    raise ValueError(f"frames: field {name!r} must have shape [B, {', '.join(map(str, shape))}], got "
                                     f"{tuple(t.shape)} (cut full fields with frames_of)")
                parts.append(t)
            b = max(t.shape[0] for t in parts)
            x = torch.stack([t.expand(b, *shape) if t.shape[0] == 1 else t for t in parts], dim=1)
        else:
            x = torch.as_tensor(frames).to(self.device, torch.float32)
            if x.ndim == len(shape) and c == 1:
                x = x[None, None]
            elif x.ndim == len(shape) + 1:
                x = x.unsqueeze(1) if c == 1 else x.unsqueeze(0)
            if tuple(x.shape[1:]) != (c, *shape):
                raise ValueError(f"{what}, got {tuple(frames.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("frames hold NaN or inf")
        return self._frame_norm.normalize(x) if self._frame_norm is not None else x

    def encode_context(self, text: str | Sequence[str] | None = None,
                       frames: Mapping[str, Tensor] | Tensor | None = None,
                       params: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Context tokens ``[B, L, D]`` and mask ``[B, L]`` of captions, physical frames and encoded
        ``params`` (:meth:`encode_params`; used when the prior encodes parameters as tokens), or
        ``(None, None)`` when none is given."""
        if self.conditioning is None:
            if text is not None or frames is not None:
                raise ValueError("this prior has no conditioning encoders; it takes no text or frames")
            return None, None
        return self.conditioning(text=text, frames=None if frames is None else self.encode_frames(frames),
                                 params=params if "params" in self.conditioning else None)

    # -- denoising and sampling ------------------------------------------------------------------

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None, params: Tensor | None = None, *,
                text: Sequence[str] | None = None, frames: Tensor | None = None,
                keep: Mapping[str, Tensor] | None = None) -> Tensor:
        """The preconditioned denoiser on normalised inputs (what the losses train).

        ``text`` (captions), ``frames`` (normalised ``[B, C, *frame_shape]``) and ``params`` are
        encoded by the conditioning encoders; ``keep`` ``{kind: bool [B]}`` drops a condition for
        the samples where it is false (condition dropout).
        """
        return conditioned_call(self.precond, self.conditioning, x, sigma, cond, params, text=text, frames=frames,
                                keep=keep)

    def denoiser(self, cond: Mapping[str, Tensor] | Tensor | None = None,
                 params: Mapping[str, Any] | Tensor | None = None, *, text: str | Sequence[str] | None = None,
                 frames: Mapping[str, Tensor] | Tensor | None = None,
                 guidance_scale: float | Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """A :mod:`samplers` denoiser ``D(z, sigma) -> z0_hat`` in the normalised frame.

        ``cond`` (physical units), ``params``, ``text`` (a caption or one per sample) and ``frames``
        (physical, see :meth:`encode_frames`) are bound here, encoded once (constants of the
        denoiser, without gradient); a batch of 1 is broadcast to the batch of ``z``. A condition
        kind of the prior that is not given is left out (as if dropped in training).
        ``guidance_scale=w``: classifier-free guidance ``D_u + w (D_c - D_u)``
        (:class:`samplers.cfg.ClassifierFreeGuidance`), the unconditional branch being the same
        network with every context token masked, both in one call on the doubled batch; ``w = 0``
        and ``w = 1`` call one branch only. Gradients in ``z`` flow when enabled (guidance needs them).
        """
        c = self.encode_cond(cond)
        p = self.encode_params(params)
        tokenised = self.conditioning is not None and "params" in self.conditioning
        with torch.no_grad():
            context, mask = self.encode_context(text, frames, p)
        if guidance_scale is not None and context is None:
            raise ValueError("guidance_scale needs a condition to guide by (text, frames, or parameters as tokens)")
        self._warn_untrained(text, frames, p, guidance_scale)
        net_params = None if tokenised else p

        def switched(z: Tensor, sigma: Tensor, conditional: Tensor | None = None) -> Tensor:
            # conditional (bool [B]): where the context applies; a doubled batch [z, z] (classifier-free
            # guidance's two branches) repeats the conditions of a batch of B//2.
            b, tile = z.shape[0], conditional is not None
            ctx = m = None
            if context is not None:
                ctx, m = _broadcast(context, b, "the conditions", tile), _broadcast(mask, b, "the conditions", tile)
                if conditional is not None:
                    m = m & conditional.to(m.device).reshape(-1, 1).bool()
            return self.precond(z, sigma, cond=_broadcast(c, b, "cond", tile),
                                params=_broadcast(net_params, b, "params", tile), context=ctx,
                                context_mask=m).to(z.dtype)

        if guidance_scale is None:
            def denoise(z: Tensor, sigma: Tensor) -> Tensor:
                return switched(z, sigma)

            return denoise
        from samplers.cfg import ClassifierFreeGuidance

        return ClassifierFreeGuidance(switched, guidance_scale)

    def _warn_untrained(self, text: Any, frames: Any, params: Tensor | None, guidance_scale: Any) -> None:
        """Warn when sampling asks for a branch the network never saw in training (dropout probability 0)."""
        c = self.conditioning
        if c is None:
            return
        given = {"text": text is not None, "frames": frames is not None, "params": params is not None}
        never = [k for k in c.kinds if c.cfg_dropout[k] == 0]
        absent = [k for k in never if not given[k]]
        if absent:
            warnings.warn(f"sampling without {absent}: this prior was trained with them always present "
                          "(cfg_dropout 0), so its output without them is untrained", UserWarning, stacklevel=3)
        elif never and guidance_scale is not None and not (isinstance(guidance_scale, (int, float))
                                                           and guidance_scale == 1):
            warnings.warn(f"classifier-free guidance: this prior never dropped {never} in training (cfg_dropout 0), "
                          "so its unconditional branch is untrained", UserWarning, stacklevel=3)

    def sigmas(self, steps: int, schedule: str | Sequence[float] | Tensor = "karras",
               sigma_min: float | None = None, sigma_max: float | None = None, **schedule_options: Any) -> Tensor:
        """The sigma grid (float64, ending in 0) of ``schedule`` between the prior's sigma range."""
        from samplers import schedules

        if not isinstance(schedule, str):
            return schedules.custom(schedule)
        if schedule == "vp":
            return schedules.get_schedule("vp", steps, **schedule_options)
        return schedules.get_schedule(schedule, steps, sigma_min=self.sigma_min if sigma_min is None else sigma_min,
                                      sigma_max=self.sigma_max if sigma_max is None else sigma_max, **schedule_options)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        solver: str = "dpmpp_2m",
        steps: int = 32,
        schedule: str | Sequence[float] | Tensor = "karras",
        generator: torch.Generator | None = None,
        cond: Mapping[str, Tensor] | Tensor | None = None,
        params: Mapping[str, Any] | Tensor | None = None,
        *,
        text: str | Sequence[str] | None = None,
        frames: Mapping[str, Tensor] | Tensor | None = None,
        guidance_scale: float | Tensor | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        schedule_options: Mapping[str, Any] | None = None,
        return_latent: bool = False,
        **options: Any,
    ) -> dict[str, Tensor]:
        """Draw ``n`` samples: ``{name: [n, *grid]}`` in physical units.

        Arguments:
            solver:    a name in ``samplers.SOLVERS``.
            steps:     number of solver steps on the grid ``schedule`` (a name in
                       ``samplers.schedules.SCHEDULES`` or an explicit sigma grid ending in 0).
            generator: draws the initial noise (and the solver's noise, for stochastic solvers).
            cond, params, text, frames, guidance_scale: as for :meth:`denoiser`.
            options:   passed to ``samplers.sample`` (``hooks``, ``callback``, ``stats``, solver options).
            return_latent: also return the final ``z`` under the key ``"_latent"``.
        The network runs in eval mode (dropout off) and is put back in its previous mode after.
        """
        import samplers

        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        sigmas = self.sigmas(steps, schedule, sigma_min, sigma_max, **dict(schedule_options or {}))
        device = self.device
        shape = (int(n), *self.latent_shape)
        if generator is None:
            noise = torch.randn(shape, device=device)
        else:
            noise = torch.randn(shape, generator=generator, device=generator.device).to(device)
        x = noise * float(sigmas[0])
        was_training = self.training
        self.eval()
        try:
            denoiser = self.denoiser(cond, params, text=text, frames=frames, guidance_scale=guidance_scale)
            z = samplers.sample(denoiser, x, sigmas, solver=solver, generator=generator, **options)
        finally:
            self.train(was_training)
        out = self.decode_fields(z)
        if return_latent:
            out["_latent"] = z
        return out

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``; see :func:`.persistence.save_prior`."""
        return save_prior(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> "Prior":
        """Load a saved prior from a directory or a Hugging Face Hub repo id ``"org/name"``, checked.

        A local directory that exists wins over a repo of the same name; ``revision``,
        ``cache_dir`` and ``local_files_only`` go to the Hub download (config.json and
        model.safetensors only). Nothing is unpickled. See :func:`.persistence.load_prior`.
        """
        return load_prior(name_or_path, device, revision=revision, cache_dir=cache_dir,
                          local_files_only=local_files_only)


def _repeated_along(field: Any, full_dims: Sequence[str], grid_shape: Sequence[int]) -> bool:
    """Whether ``field`` lives on a proper subset of the axes ``full_dims`` (in order, same sizes), so that it
    is given repeated along the axes it lacks (as :class:`~diffpde.data.dataset.FieldDataset` stacks it)."""
    dims = tuple(field.dims)
    if not full_dims or len(dims) >= len(full_dims) or not set(dims) <= set(full_dims):
        return False
    where = [list(full_dims).index(d) for d in dims]
    return where == sorted(where) and all(field.shape[i] == grid_shape[w] for i, w in enumerate(where))


def _to_json(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays in problem parameters."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"problem parameter {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _broadcast(t: Tensor | None, batch: int, what: str, tile: bool = False) -> Tensor | None:
    """``t`` ``[n, ...]`` for a state of ``batch``: as it is (``n == batch``), expanded (``n == 1``), or
    repeated twice when ``tile`` and ``batch == 2 n`` (the two branches of classifier-free guidance)."""
    if t is None or t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    if tile and batch == 2 * t.shape[0]:
        return torch.cat([t, t])
    raise ValueError(f"{what} has batch {t.shape[0]} but the state has batch {batch} (use 1 to broadcast)")
