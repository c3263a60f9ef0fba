"""What every PDE family provides, and the registry ``diffpde.pdes.get(name, ...)``.

A family (one module in ``diffpde/pdes/``) subclasses :class:`PDE`, declares its fields and grid,
and implements

- ``sample_inputs(n, seed) -> dict[str, np.ndarray]``: the random inputs of ``n`` instances
  (arrays ``[n, *field.shape]``), reproducible from ``seed``;
- ``solve(...)``: its classical numerical solver (signature per family, documented there);
- ``generate(seed) -> dict[str, np.ndarray]``: every stored field of one instance, inputs and
  solution, float64, as the dataset generator calls it (one seed per sample);
- ``residual(fields) -> torch.Tensor``: a differentiable residual in physical units on batches
  ``{name: [B, *field.shape]}``; the docstring says which equation it is;
- ``describe(fields) -> str``: a one-line text description of the family (and of an instance);
- optionally ``features(fields) -> dict[str, float]`` and a ``caption_vocabulary``
  (:mod:`diffpde.pdes.captions`): the numbers that describe one instance and the words to state
  them, from which :meth:`PDE.caption` writes several phrasings per instance (``has_captions``);
- ``symmetries`` and ``odd_fields``: the exact symmetries of its instances and the fields that
  change sign under them (the maps are :data:`diffpde.data.augment.SYMMETRIES`).
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class Field:
    """One stored field of a PDE family.

    name:  channel name (``"a"``, ``"u"``, ``"w0"``, ...).
    role:  ``"input"`` (coefficient, source, initial condition) or ``"output"`` (solution).
    shape: array shape of one sample (e.g. ``(n, n)``, or ``(nt, nx)`` for a trajectory).
    dims:  names of the axes, matching ``shape`` (e.g. ``("y", "x")`` or ``("t", "x")``).
    description: a few words in the language of the field.
    """

    name: str
    role: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.role not in ("input", "output"):
            raise ValueError(f"field {self.name!r}: role must be 'input' or 'output', got {self.role!r}")
        if len(self.shape) != len(self.dims):
            raise ValueError(f"field {self.name!r}: shape {self.shape} and dims {self.dims} differ in length")


@dataclass(frozen=True)
class Grid:
    """Coordinates of the discretisation.

    kind: ``"vertex"`` (``x_i = i/(n-1)`` on [0, 1], boundary nodes included) or
          ``"periodic"`` (``x_i = i/n`` on [0, 1)).
    coords: axis name -> 1D coordinate array (space axes, and ``"t"`` for trajectories).
    """

    kind: str
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)

    def spacing(self, axis: str) -> float:
        """Uniform spacing of ``axis`` (the true grid spacing residuals are scaled by)."""
        c = np.asarray(self.coords[axis])
        return float(c[1] - c[0])


def check_seed(seed: Any, problem: str) -> int:
    """``seed`` as an int, or a one-line ``ValueError`` naming it unless it is an integer >= 0."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        shown = int(seed) if isinstance(seed, np.integer) else repr(seed)
        raise ValueError(f"{problem}: seed must be a non-negative integer, got {shown}")
    return int(seed)


def _seed_checked(method: Callable) -> Callable:
    """Wrap ``generate(seed)`` or ``sample_inputs(n, seed)`` so that a bad seed (or ``n``) fails at once."""
    if method.__name__ == "generate":

        @functools.wraps(method)
        def generate(self, seed, *args, **kwargs):
            return method(self, check_seed(seed, self.name), *args, **kwargs)

        return generate

    @functools.wraps(method)
    def sample_inputs(self, n, seed, *args, **kwargs):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{self.name}: number of samples must be a non-negative integer, got {n!r}")
        return method(self, int(n), check_seed(seed, self.name), *args, **kwargs)

    return sample_inputs


class PDE(abc.ABC):
    """Base class of a PDE family at a given resolution and parameter set.

    A subclass's ``generate`` and ``sample_inputs`` are wrapped on definition so that a seed that is
    not an integer >= 0 raises a one-line ``ValueError`` naming it, in every family.
    """

    name: str = ""
    #: default parameters of the family; ``get(name, **parameters)`` may override these only.
    defaults: Mapping[str, Any] = {}
    #: smallest resolution the family accepts.
    min_resolution: int = 8
    #: exact symmetries of the family's solution map (names understood by
    #: :func:`diffpde.data.augment.augment`): an instance mapped by one is again an instance.
    symmetries: tuple[str, ...] = ()
    #: symmetry name -> the fields that change sign under it (a velocity or a vorticity under a
    #: reflection, every field of a linear problem under ``negate``); fields not listed keep theirs.
    odd_fields: Mapping[str, tuple[str, ...]] = {}
    #: the words captions of this family are written with (a :class:`diffpde.pdes.captions.Vocabulary`);
    #: ``None``: the family writes no captions.
    caption_vocabulary: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("generate", "sample_inputs"):
            method = cls.__dict__.get(name)
            if callable(method) and not hasattr(method, "__wrapped__"):
                setattr(cls, name, _seed_checked(method))

    def __init__(self, resolution: int, **parameters: Any) -> None:
        if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool):
            raise TypeError(f"{self.name}: resolution must be an integer, got {resolution!r}")
        if resolution < self.min_resolution:
            raise ValueError(f"{self.name}: resolution {resolution} is too small (minimum {self.min_resolution})")
        unknown = sorted(set(parameters) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.resolution = int(resolution)
        self.parameters = {**self.defaults, **parameters}

    # -- description -----------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def fields(self) -> tuple[Field, ...]:
        """The stored fields, inputs first."""

    @property
    @abc.abstractmethod
    def grid(self) -> Grid:
        """The grid the fields live on."""

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name}: unknown field {name!r}; fields: {', '.join(f.name for f in self.fields)}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def two_phase_fields(self) -> dict[str, tuple[float, float]]:
        """Fields that take one of two values, ``{name: (low, high)}``.

        Such a field gets the two-phase error rate (the fraction of cells whose phase, split at
        the midpoint, is wrong) among its metrics, the fraction of its high phase among the
        training-time statistics, and a phase boundary in figures. Default: none.
        """
        return {}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description: name, resolution and parameters."""
        return {"name": self.name, "resolution": self.resolution, "parameters": dict(self.parameters)}

    # -- work ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """Random inputs of ``n`` instances, ``{name: [n, *shape]}``, reproducible from ``seed``."""

    @abc.abstractmethod
    def generate(self, seed: int) -> dict[str, np.ndarray]:
        """Every stored field of one instance (inputs and solution), float64, from ``seed``."""

    @abc.abstractmethod
    def residual(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable residual in physical units of a batch ``{name: [B, *shape]}``."""

    def residual_norm(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Root-mean-square of :meth:`residual` per sample, shape ``[B]``."""
        r = self.residual(fields)
        return r.reshape(r.shape[0], -1).pow(2).mean(-1).sqrt()

    @abc.abstractmethod
    def describe(self, fields: Mapping[str, np.ndarray | torch.Tensor] | None = None) -> str:
        """One-line text description of the family (and of an instance when ``fields`` is given)."""

    # -- captions --------------------------------------------------------------------------------

    @property
    def has_captions(self) -> bool:
        """Whether the family computes :meth:`features` and writes captions from them."""
        return self.caption_vocabulary is not None

    def features(self, fields: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """Numbers that describe one instance (its parameters and features of its fields), the
        content of its captions; each family documents its keys. Default: none."""
        raise NotImplementedError(f"{self.name}: this family computes no caption features")

    def caption(self, fields: Mapping[str, np.ndarray | torch.Tensor], rng: Any, n: int = 4) -> list[str]:
        """``n`` phrasings of a caption of one instance, written from :meth:`features`;
        deterministic given ``rng`` (a ``numpy.random.Generator`` or a seed)."""
        from . import captions

        if not self.has_captions:
            raise NotImplementedError(f"{self.name}: this family writes no captions")
        return captions.compose(self.caption_vocabulary, self.features(fields), rng, n)

    def parse_caption(self, text: str, *, precision: bool = False) -> dict[str, Any]:
        """The numbers a caption of this family states, ``{feature: value}`` (see
        :func:`diffpde.pdes.captions.parse`)."""
        from . import captions

        if not self.has_captions:
            raise NotImplementedError(f"{self.name}: this family writes no captions")
        return captions.parse(self.caption_vocabulary, text, precision=precision)

    def one_sample(self, fields: Mapping[str, Any], name: str) -> np.ndarray:
        """Field ``name`` of one instance as a checked float64 array of the field's shape (a leading
        batch axis of length 1 is dropped); a clear ``KeyError`` if it is missing."""
        if name not in fields:
            raise KeyError(f"{self.name}: field {name!r} is needed; got {', '.join(fields) or 'none'}")
        value = fields[name]
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        shape = self.field(name).shape
        return self.check_array(name, arr[0] if arr.shape == (1, *shape) else arr)

    # -- checks shared by the families -----------------------------------------------------------

    def check_array(self, name: str, value: Any, *, batched: bool = False) -> np.ndarray:
        """Return ``value`` as a float64 array of the field's shape, or raise a clear error."""
        shape = self.field(name).shape
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        want = shape if not batched else (arr.shape[0],) + shape
        if arr.shape != want:
            raise ValueError(f"{self.name}: field {name!r} must have shape {want}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.name}: field {name!r} contains NaN or inf")
        return arr

    def check_batch(self, fields: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> list[torch.Tensor]:
        """Fetch ``names`` from a batch dict, checking presence and shape ``[B, *shape]``."""
        out = []
        for name in names:
            if name not in fields:
                raise KeyError(f"{self.name}: residual needs field {name!r}; got {', '.join(fields) or 'none'}")
            t = fields[name]
            shape = self.field(name).shape
            if tuple(t.shape[1:]) != shape:
                raise ValueError(f"{self.name}: field {name!r} must have shape [B, {', '.join(map(str, shape))}], got {list(t.shape)}")
            out.append(t)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"{type(self).__name__}(resolution={self.resolution}{', ' if params else ''}{params})"


_REGISTRY: dict[str, Callable[..., PDE]] = {}


def register(cls: type[PDE]) -> type[PDE]:
    """Class decorator: register a PDE family under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"PDE name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str, resolution: int, **parameters: Any) -> PDE:
    """Instantiate the PDE family ``name`` at ``resolution`` with ``parameters``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown PDE problem {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return cls(resolution, **parameters)


def names() -> list[str]:
    """Names of the registered PDE families."""
    return sorted(_REGISTRY)
