"""Posterior files: what ``diffpde sample --out`` writes, and reading it back.

HDF5, ``format = "diffpde.posterior"``, written to a temporary name and renamed::

    /                   attrs: format, format_version, prior, data, indices (JSON), method, solver,
                               steps, schedule, n_samples, seed, batch, observe, diagnostics (JSON of
                               the diagnostics that are not per instance), diffpde_observations (JSON
                               of the operator), diffpde_provenance (JSON, when known)
    /values             [B, m] the observations (physical units); with the root attributes and
                        /coordinates this is also an observations file (``Observations.load``)
    /coordinates/<f>    [m_f, ndim] grid indices of the observed nodes of field f
    /samples/<f>        [B, K, *grid] posterior samples (physical units, float32)
    /mean/<f>, /std/<f> [B, *grid]
    /truth/<f>          [B, *grid] (when the observations were made from a dataset)
    /diagnostics/<d>    [B, ...] per-instance diagnostics (misfit, pde_residual, noise_std [B, m])
    /metrics/<f>/<m>    [B] metrics against the truth (when known)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .observations import OPERATOR_ATTR, PROVENANCE_ATTR, Observations
from .tasks import Posterior

__all__ = ["POSTERIOR_FORMAT", "POSTERIOR_FORMAT_VERSION", "PosteriorFile", "read_posterior", "write_posterior"]

POSTERIOR_FORMAT = "diffpde.posterior"
POSTERIOR_FORMAT_VERSION = 1


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def write_posterior(path: str | os.PathLike, posterior: Posterior, observations: Observations, *,
                    truth: Mapping[str, torch.Tensor] | None = None,
                    metrics: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                    attrs: Mapping[str, Any] | None = None) -> str:
    """Write the posterior file described in the module docstring and return its path.

    ``truth`` ``{field: [B, *grid]}`` and ``metrics`` ``{field: {metric: [B]}}`` are optional;
    ``attrs`` are stored as root attributes (strings and numbers as they are, the rest as JSON).
    Diagnostics whose first axis is the batch are stored per instance, the others as JSON.
    """
    import h5py

    path = os.fspath(path)
    tmp = f"{path}.tmp"
    b = observations.batch_size
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = POSTERIOR_FORMAT
            f.attrs["format_version"] = POSTERIOR_FORMAT_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            observations.write(f)
            mean, std = posterior.mean, posterior.std
            for name, s in posterior.samples.items():
                f.create_dataset(f"samples/{name}", data=_numpy(s).astype(np.float32), compression="gzip")
                f.create_dataset(f"mean/{name}", data=_numpy(mean[name]))
                f.create_dataset(f"std/{name}", data=_numpy(std[name]))
                if truth is not None and name in truth:
                    f.create_dataset(f"truth/{name}", data=_numpy(torch.as_tensor(truth[name])))
            scalars = {}
            for key, value in posterior.diagnostics.items():
                if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == b:
                    f.create_dataset(f"diagnostics/{key}", data=_numpy(value))
                else:
                    scalars[key] = _scalar(value)
            f.attrs["diagnostics"] = json.dumps(scalars)
            for name, values in (metrics or {}).items():
                for metric, v in values.items():
                    f.create_dataset(f"metrics/{name}/{metric}", data=_numpy(torch.as_tensor(v)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@dataclass
class PosteriorFile:
    """The contents of a posterior file: the posterior, its observations, truth, metrics and attributes."""

    posterior: Posterior
    observations: Observations
    truth: dict[str, torch.Tensor] | None = None
    metrics: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def read_posterior(path: str | os.PathLike) -> PosteriorFile:
    """Read a file written by :func:`write_posterior` (samples as float64 tensors)."""
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"cannot read posterior file {path!r}: {err}") from None
    with f:
        if f.attrs.get("format") != POSTERIOR_FORMAT:
            raise ValueError(f"{path!r} is not a diffpde posterior file (format {f.attrs.get('format')!r})")

        def group(name: str) -> dict[str, torch.Tensor]:
            return {k: torch.as_tensor(v[()]) for k, v in f[name].items()} if name in f else {}

        samples = {k: v.to(torch.float64) for k, v in group("samples").items()}
        diagnostics: dict[str, Any] = json.loads(f.attrs.get("diagnostics", "{}"))
        diagnostics.update(group("diagnostics"))
        observations = Observations.read(f, repr(path))
        metrics = {name: {m: torch.as_tensor(v[()]) for m, v in g.items()} for name, g in f["metrics"].items()} \
            if "metrics" in f else {}
        skip = {"diagnostics", OPERATOR_ATTR, PROVENANCE_ATTR}
        attrs = {k: _attr(v) for k, v in f.attrs.items() if k not in skip}
        return PosteriorFile(Posterior(samples, diagnostics), observations, group("truth") or None, metrics, attrs)
