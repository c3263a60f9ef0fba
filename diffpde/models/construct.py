"""Fresh (untrained) priors from a model config and the data: what ``Prior.from_config`` and
``Prior.from_dataset`` do.

A model section ``{"network": {...}, "precond": {...}, "representation": {...}}`` names each
part by its registered ``"type"`` (:mod:`.registry`); what the data decides (the network's
channels, the number of scalar parameters, the data's ``sigma_data``) is filled in here and may
not be contradicted by the config.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..data.normalize import Normalizer
from .precond import measure_sigma_data
from .prior import Prior
from .registry import build

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
    (default: the problem's, when the representation needs them).
    """
    representation = build("representation", _get(model, "representation") or {"type": "identity"})
    grid_shape = tuple(int(n) for n in grid_shape)
    if dims is None and representation.needs_dims:
        dims = _field_dims(problem, fields)
    representation.fit((len(fields), *grid_shape), data=data if isinstance(data, Tensor) else None, dims=dims)
    latent = representation.latent_shape((len(fields), *grid_shape))
    net_cfg = dict(_get(model, "network") or {})
    net_cfg.setdefault("type", "unet1d" if len(latent) == 2 else "unet2d")
    derived = {"in_channels": latent[0], "out_channels": latent[0], "cond_channels": len(cond_fields),
               "num_params": len(param_names)}
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
                 sigma_min=sigma_min, sigma_max=sigma_max)


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
    info = getattr(dataset, "info", None)
    kwargs.setdefault("problem", getattr(info, "config", None))
    if hasattr(info, "field") and "dims" not in kwargs:
        kwargs["dims"] = tuple(info.field(fields[0]).dims)
    return prior_from_config(model, fields=fields, grid_shape=dataset.field_shape, cond_fields=cond_fields,
                             param_names=param_names, normalizer=dataset.normalizer, data=data, **kwargs)
