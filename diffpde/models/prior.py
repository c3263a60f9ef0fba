"""A trained diffusion prior as one self-describing object: ``Prior``.

A prior bundles

- the **preconditioned network** (:mod:`.precond`), a denoiser in the normalised VE frame;
- the **representation** (:mod:`.representation`) the network diffuses in;
- the **normaliser** (:class:`diffpde.data.normalize.Normalizer`) of the physical fields,
  covering the generated fields and the conditioning fields;
- the **problem** (``{"name", "resolution", "parameters"}`` as ``PDE.config()`` gives it), the
  names of the generated fields (channels of ``x``), of the conditioning fields (channels of
  ``cond``) and of the scalar parameters (columns of ``params``), and the grid shape;
- the default noise range ``sigma_min``/``sigma_max`` for sampling.

Frames: physical fields ``{name: [B, *grid]}`` --normalise--> stacked ``[B, C, *grid]``
--encode--> ``z`` (what is diffused); :meth:`Prior.encode_fields` and :meth:`Prior.decode_fields`
go back and forth, differentiably. Conditioning fields are normalised (not encoded) and handed to
the network as extra channels. Scalar ``params`` are passed to the network as they are.

On disk (:meth:`save_pretrained`): ``model.safetensors`` (all weights) and ``config.json``
(everything else). :meth:`from_pretrained` reads only these two files and never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.normalize import Normalizer
from . import build_network
from .precond import Preconditioner, build_precond, measure_sigma_data
from .representation import Representation, build_representation

Tensor = torch.Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "diffpde.prior"
FORMAT_VERSION = 1

__all__ = ["Prior", "WEIGHTS_NAME", "CONFIG_NAME"]


def _get(section: Any, key: str, default: Any = None) -> Any:
    """``section[key]`` for a mapping, ``section.key`` for a dataclass such as ``ModelConfig``."""
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


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
        self.precond = precond
        self.representation = representation if representation is not None else build_representation(None)
        if isinstance(normalizer, Mapping):
            normalizer = Normalizer.from_dict(normalizer)
        self.normalizer = normalizer
        if normalizer is not None:
            if normalizer.field_ndim != len(self.grid_shape):
                raise ValueError(f"normaliser has field_ndim={normalizer.field_ndim} but the grid {self.grid_shape} has {len(self.grid_shape)} axes")
            self._field_norm = normalizer.select(self.fields)
            self._cond_norm = normalizer.select(self.cond_fields) if self.cond_fields else None
        else:
            self._field_norm = self._cond_norm = None
        if problem is not None and not isinstance(problem, Mapping):
            problem = problem.config()
        self.problem_config: dict[str, Any] | None = (
            json.loads(json.dumps(problem, default=_to_json)) if problem is not None else None)
        self.sigma_min = float(precond.sigma_min if sigma_min is None else sigma_min)
        self.sigma_max = float(precond.sigma_max if sigma_max is None else sigma_max)
        self._problem = None

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
            self._problem = pdes.get(c["name"], c["resolution"], **c.get("parameters", {}))
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

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
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

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
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
    ) -> "Prior":
        """A fresh (untrained) prior from a model section ``{"network", "precond", "representation"}``.

        ``model`` is a mapping or an object with those attributes (``training.config.ModelConfig``).
        The network's ``in_channels``/``out_channels`` (latent channels), ``cond_channels`` and
        ``num_params`` are filled in from the fields; its ``type`` defaults to ``unet1d`` or
        ``unet2d`` by the grid. ``sigma_data`` of the preconditioner is, in order: the value in
        ``model["precond"]``, the ``sigma_data`` argument, measured on ``data`` (normalised
        samples ``[N, C, *grid]`` of the generated fields, encoded by the representation, see
        :func:`measure_sigma_data`), or the preconditioner's default.
        """
        representation = build_representation(_get(model, "representation"))
        grid_shape = tuple(int(n) for n in grid_shape)
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
        precond = build_precond(pre_cfg, build_network(net_cfg))
        return cls(precond, fields, grid_shape, cond_fields=cond_fields, param_names=param_names,
                   normalizer=normalizer, representation=representation, problem=problem,
                   sigma_min=sigma_min, sigma_max=sigma_max)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        model: Mapping[str, Any] | Any,
        *,
        fields: Sequence[str] | None = None,
        cond_fields: Sequence[str] = (),
        param_names: Sequence[str] = (),
        max_samples: int = 1024,
        **kwargs: Any,
    ) -> "Prior":
        """A fresh prior for a normalised :class:`~diffpde.data.dataset.FieldDataset`.

        Takes the normaliser, grid shape and problem from the dataset and measures ``sigma_data``
        on the generated channels of its first ``max_samples`` items. ``fields`` defaults to the
        dataset's fields other than ``cond_fields``; both must be among the dataset's fields.
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
        return cls.from_config(model, fields=fields, grid_shape=dataset.field_shape, cond_fields=cond_fields,
                               param_names=param_names, normalizer=dataset.normalizer, data=data, **kwargs)

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
        return self._cond_norm.normalize(c) if self._cond_norm is not None else c

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

    # -- denoising and sampling ------------------------------------------------------------------

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None, params: Tensor | None = None) -> Tensor:
        """The preconditioned denoiser on normalised inputs (what the losses train)."""
        return self.precond(x, sigma, cond=cond, params=params)

    def denoiser(self, cond: Mapping[str, Tensor] | Tensor | None = None,
                 params: Mapping[str, Any] | Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """A :mod:`samplers` denoiser ``D(z, sigma) -> z0_hat`` in the normalised frame.

        ``cond`` (physical units) and ``params`` are bound here; a batch of 1 is broadcast to the
        batch of ``z``. Gradients flow when enabled (guidance needs them).
        """
        c = self.encode_cond(cond)
        p = self.encode_params(params)

        def denoise(z: Tensor, sigma: Tensor) -> Tensor:
            b = z.shape[0]
            cb = _broadcast(c, b, "cond")
            pb = _broadcast(p, b, "params")
            return self.precond(z, sigma, cond=cb, params=pb).to(z.dtype)

        return denoise

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
            cond, params: as for :meth:`denoiser`.
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
            z = samplers.sample(self.denoiser(cond, params), x, sigmas, solver=solver, generator=generator, **options)
        finally:
            self.train(was_training)
        out = self.decode_fields(z)
        if return_latent:
            out["_latent"] = z
        return out

    # -- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed).

        Each file is written to a temporary name in the directory and renamed over the old one.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp_weights = _temp_name(directory, WEIGHTS_NAME)
        tmp_config = _temp_name(directory, CONFIG_NAME)
        try:
            save_file(tensors, str(tmp_weights), metadata={"format": "pt", "diffpde": FORMAT})
            with open(tmp_weights, "rb") as f:
                os.fsync(f.fileno())
            with open(tmp_config, "w") as f:
                json.dump(config, f, indent=2, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_weights, directory / WEIGHTS_NAME)
            os.replace(tmp_config, directory / CONFIG_NAME)
        finally:
            for tmp in (tmp_weights, tmp_config):
                if tmp.exists():
                    tmp.unlink()
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "Prior":
        """Load a prior written by :meth:`save_pretrained` (safetensors + JSON only; nothing unpickled)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no prior at {directory}: not a directory")
        config = read_config(directory)
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"prior {directory}: missing weights file {WEIGHTS_NAME}")
        try:
            net = build_network(config["network"])
            precond = build_precond(config["precond"], net)
            prior = cls(
                precond,
                config["fields"],
                config["grid_shape"],
                cond_fields=config.get("cond_fields", ()),
                param_names=config.get("param_names", ()),
                normalizer=config.get("normalizer"),
                representation=build_representation(config.get("representation")),
                problem=config.get("problem"),
                sigma_min=config.get("sigma_min"),
                sigma_max=config.get("sigma_max"),
            )
        except KeyError as e:
            raise ValueError(f"prior {directory}: {CONFIG_NAME} lacks the key {e}") from None
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"prior {directory}: corrupt weights file {WEIGHTS_NAME}: {e}") from None
        _check_state(prior.state_dict(), state, directory)
        prior.load_state_dict(state, strict=True)
        return prior.to(device)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a saved prior."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"prior {directory}: missing {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"prior {directory}: corrupt {CONFIG_NAME}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"prior {directory}: {CONFIG_NAME} is not a diffpde prior config (format != {FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"prior {directory}: format version {config['format_version']} is newer than this diffpde "
                         f"understands ({FORMAT_VERSION})")
    return config


def _check_state(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], directory: Path) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"prior {directory}: weights do not match the config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"prior {directory}: parameter {k!r} has shape {tuple(state[k].shape)} in "
                             f"{WEIGHTS_NAME} but the config builds {tuple(v.shape)}")


def _to_json(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays in problem parameters."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"problem parameter {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _temp_name(directory: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(path)


def _broadcast(t: Tensor | None, batch: int, what: str) -> Tensor | None:
    if t is None or t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]} but the state has batch {batch} (use 1 to broadcast)")
