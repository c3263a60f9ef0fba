"""Fresh (untrained) priors from a model config and the data: what ``Prior.from_config`` and
``Prior.from_dataset`` do.

A model section ``{"network": {...}, "precond": {...}, "representation": {...}}`` names each
part by its registered ``"type"`` (:mod:`.registry`); what the data decides (the network's
channels, the number of scalar parameters, the data's ``sigma_data``) is filled in here and may
not be contradicted by the config.

An optional ``"conditioning"`` section adds encoders of conditions as context tokens
(:mod:`.conditioning`)::

    conditioning:
      dim: 64                                   # token width = network.context_dim (either may be given)
      text: {type: text, model: all-MiniLM-L6-v2}   # or {type: hash_text}: tiny, random, trained
      frames: {field: w, axis: t, index: 0, patch_size: [4, 4]}
      params: {}                                # one token per scalar parameter (the prior's param_names)
      cfg_dropout: {text: 0.1, frames: 0.1}     # condition dropout in training (classifier-free guidance)

Each kind's ``type`` defaults to its name; ``dim``, a frame encoder's ``dims`` (the names of the
field's axes, from the problem) and a parameter encoder's ``names`` are filled in here.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch

from ..data.normalize import Normalizer
from .conditioning import KINDS, Conditioning
from .precond import measure_sigma_data
from .prior import Prior
from .registry import REGISTRY, build

Tensor = torch.Tensor

__all__ = ["prior_from_config", "prior_from_dataset"]


def _get(section: Any, key: str, default: Any = None) -> Any:
    """``section[key]`` for a mapping, ``section.key`` for a dataclass such as ``ModelConfig``."""
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def prior_from_config(
    model: Mapping[str, Any] | Any,
    *,
    fields: Sequence[str],
    grid_shape: Sequence[int],
    cond_fields: Sequence[str] = (),
    param_names: Sequence[str] = (),
    normalizer: Normalizer | Mapping[str, Any] | None = None,
    problem: Any = None,
    sigma_data: float | None = None,
    data: Any = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    dims: Sequence[str] | None = None,
    cond_data: Any = None,
) -> Prior:
    """A fresh prior from a model section ``{"network", "precond", "representation"}``.

    ``model`` is a mapping or an object with those attributes (``training.config.ModelConfig``).
    The network's ``in_channels``/``out_channels`` (latent channels), ``cond_channels`` and
    ``num_params`` are filled in from the fields; its ``type`` defaults to ``unet1d`` or
    ``unet2d`` by the grid. ``sigma_data`` of the preconditioner is, in order: the value in
    ``model["precond"]``, the ``sigma_data`` argument, measured on ``data`` (normalised
    samples ``[N, C, *grid]`` of the generated fields, encoded by the representation, see
    :func:`~diffpde.models.precond.measure_sigma_data`), or the preconditioner's default.
    The representation is fitted first (:meth:`~.representation.Representation.fit`: the
    wavelet's subband statistics are measured on ``data``); ``dims`` names the grid axes
    (default: the problem's, when the representation or a frame encoder needs them). The
    ``conditioning`` section (see the module docstring) sets the network's ``context_dim``.
    """
    representation = build("representation", _get(model, "representation") or {"type": "identity"})
    grid_shape = tuple(int(n) for n in grid_shape)
    if dims is None and representation.needs_dims:
        dims = _field_dims(problem, fields)
    representation.fit((len(fields), *grid_shape), data=data if isinstance(data, Tensor) else None, dims=dims)
    latent = representation.latent_shape((len(fields), *grid_shape))
    cond_representation = None
    if cond_fields and representation.kind != "identity":
        # the conditioning fields go to the latent grid through their own instance of the representation
        cond_representation = build("representation", representation.config() | {"mean": None, "std": None,
                                                                                  "grid": None})
        cond_representation.fit((len(cond_fields), *grid_shape),
                                data=cond_data if isinstance(cond_data, Tensor) else None, dims=dims)
        cond_latent = cond_representation.latent_shape((len(cond_fields), *grid_shape))
        if tuple(cond_latent[1:]) != tuple(latent[1:]):
            raise ValueError(f"conditioning fields on the {representation.kind} representation have the latent grid "
                             f"{list(cond_latent[1:])}, the generated fields {list(latent[1:])}")
    cond_channels = len(cond_fields) if cond_representation is None else cond_latent[0]
    net_cfg = dict(_get(model, "network") or {})
    net_cfg.setdefault("type", "unet1d" if len(latent) == 2 else "unet2d")
    derived = {"in_channels": latent[0], "out_channels": latent[0], "cond_channels": cond_channels,
               "num_params": len(param_names)}
    section = _get(model, "conditioning")
    conditioning = None
    if section:
        frame_fields = (section.get("frames") or {}).get("field", (section.get("frames") or {}).get("fields"))
        if dims is None and problem is not None and frame_fields:
            dims = _field_dims(problem, [frame_fields] if isinstance(frame_fields, str) else frame_fields)
        conditioning = conditioning_from_config(section, net_cfg, param_names=param_names, dims=dims)
        derived["num_params"] = 0 if "params" in conditioning else len(param_names)
    for k, v in derived.items():
        if k in net_cfg and net_cfg[k] != v:
            raise ValueError(f"model.network.{k}={net_cfg[k]} contradicts the data ({v}); leave it out")
        net_cfg[k] = v
    pre_cfg = dict(_get(model, "precond") or {"type": "edm"})
    if "sigma_data" not in pre_cfg:
        if sigma_data is None and data is not None:
            if isinstance(data, Tensor):
                data = representation.encode(data)
            sigma_data = measure_sigma_data(data)
        if sigma_data is not None:
            pre_cfg["sigma_data"] = float(sigma_data)
    precond = build("preconditioner", pre_cfg, net=build("network", net_cfg))
    return Prior(precond, fields, grid_shape, cond_fields=cond_fields, param_names=param_names,
                 normalizer=normalizer, representation=representation, problem=problem,
                 sigma_min=sigma_min, sigma_max=sigma_max, conditioning=conditioning,
                 cond_representation=cond_representation)


def conditioning_from_config(section: Mapping[str, Any], net_cfg: dict[str, Any], *, param_names: Sequence[str] = (),
                             dims: Sequence[str] | None = None) -> Conditioning:
    """Build the encoders of a ``conditioning`` section and set ``net_cfg["context_dim"]`` to their width.

    The width is ``section["dim"]`` or the network's ``context_dim`` (they must agree), else the
    network's ``hidden_size``, else 128.
    """
    if not isinstance(section, Mapping):
        raise ValueError(f"model.conditioning must be a mapping of condition kinds, got {section!r}")
    section = dict(section)
    unknown = [k for k in section if k not in (*KINDS, "dim", "cfg_dropout")]
    if unknown:
        raise ValueError(f"model.conditioning: unknown key(s) {unknown}; known: {[*KINDS, 'dim', 'cfg_dropout']}")
    width, have = section.pop("dim", None), net_cfg.get("context_dim")
    if width is not None and have and have != width:
        raise ValueError(f"model.conditioning.dim={width} contradicts model.network.context_dim={have}")
    width = int(width or have or net_cfg.get("hidden_size") or 128)
    network = REGISTRY.get("network", {}).get(net_cfg.get("type"))
    if network is not None and "context_dim" not in inspect.signature(network.__init__).parameters:
        raise ValueError(f"model.conditioning needs a network with cross-attention to context tokens (type: dit); "
                         f"the network {net_cfg.get('type')!r} has none")
    net_cfg["context_dim"] = width
    dropout = section.pop("cfg_dropout", None) or {}
    encoders = {}
    for kind, cfg in section.items():
        cfg = dict(cfg or {})
        cfg.setdefault("type", kind)
        if cfg.get("dim", width) != width:
            raise ValueError(f"model.conditioning.{kind}.dim={cfg['dim']} differs from the token width {width}")
        cfg["dim"] = width
        if kind == "frames":
            if "field" in cfg:
                cfg["fields"] = cfg.pop("field")
            if isinstance(cfg.get("fields"), str):
                cfg["fields"] = [cfg["fields"]]
            if "dims" not in cfg and dims is not None:
                cfg["dims"] = list(dims)
        if kind == "params":
            if not param_names:
                raise ValueError("model.conditioning.params: the prior has no scalar parameters (param_names)")
            if cfg.setdefault("names", list(param_names)) != list(param_names):
                raise ValueError(f"model.conditioning.params.names={cfg['names']} differs from the prior's "
                                 f"parameters {list(param_names)}")
        try:
            encoders[kind] = build("condition", cfg)
        except (ValueError, TypeError) as e:
            raise ValueError(f"model.conditioning.{kind}: {e}") from None
    return Conditioning(encoders, dropout)


def _field_dims(problem: Any, fields: Sequence[str]) -> tuple[str, ...] | None:
    """Names of the grid axes of ``fields`` of ``problem`` (a ``PDE`` or its config), or ``None``."""
    if problem is None:
        return None
    if isinstance(problem, Mapping):
        from .. import pdes

        problem = pdes.get(problem["name"], problem["resolution"], **problem.get("parameters", {}))
    names = {tuple(problem.field(n).dims) for n in fields}
    if len(names) > 1:
        raise ValueError(f"the fields {list(fields)} of {problem.name!r} name their axes differently: {sorted(names)}")
    return names.pop()


def prior_from_dataset(
    dataset: Any,
    model: Mapping[str, Any] | Any,
    *,
    fields: Sequence[str] | None = None,
    cond_fields: Sequence[str] = (),
    param_names: Sequence[str] = (),
    max_samples: int = 1024,
    **kwargs: Any,
) -> Prior:
    """A fresh prior for a normalised :class:`~diffpde.data.dataset.FieldDataset`.

    Takes the normaliser, grid shape and problem from the dataset and measures ``sigma_data``
    on the generated channels of its first ``max_samples`` items. ``fields`` defaults to the
    dataset's fields other than ``cond_fields``; both must be among the dataset's fields.
    ``kwargs`` go to :func:`prior_from_config`.
    """
    if getattr(dataset, "normalizer", None) is None:
        raise ValueError("Prior.from_dataset needs a normalised dataset (FieldDataset(..., normalize=True))")
    names = tuple(dataset.field_names)
    fields = tuple(n for n in names if n not in cond_fields) if fields is None else tuple(fields)
    missing = [n for n in (*fields, *cond_fields) if n not in names]
    if missing:
        raise KeyError(f"field(s) {missing} are not in the dataset; it has {list(names)}")
    idx = [names.index(n) for n in fields]
    n = min(len(dataset), max_samples)
    data = torch.stack([dataset[i][idx] for i in range(n)]) if n else None
    if cond_fields and n:   # what the conditioning fields' own representation measures its statistics on
        cidx = [names.index(c) for c in cond_fields]
        kwargs.setdefault("cond_data", torch.stack([dataset[i][cidx] for i in range(n)]))
    info = getattr(dataset, "info", None)
    kwargs.setdefault("problem", getattr(info, "config", None))
    if hasattr(info, "field") and "dims" not in kwargs:
        kwargs["dims"] = tuple(info.field(fields[0]).dims)
    return prior_from_config(model, fields=fields, grid_shape=dataset.field_shape, cond_fields=cond_fields,
                             param_names=param_names, normalizer=dataset.normalizer, data=data, **kwargs)
