"""Observation operators: maps from physical fields to measurements, with declared capabilities.

An operator reads a batch of physical fields ``{name: [B, *shape]}`` (physical units, the grid of
the PDE family) and returns measurements ``[B, m]``. It declares what it can do, so that a method
needing a capability the operator lacks fails at once:

- ``linear``: ``A(fields)`` is linear; then ``adjoint(y)`` maps ``[B, m]`` back to fields.
- ``differentiable``: gradients flow through ``__call__`` (false for black boxes).
- ``mask``: the operator selects grid entries (``masks()`` gives a boolean mask per field), the
  structure that projection / inpainting needs.

Every operator carries a Gaussian noise model ``y = A(fields) + noise_std * eps``; ``noise_std``
is in the physical units of the measurements. :class:`Observations` pairs an operator with the
measured values ``y`` and its provenance (problem and instances); it is written into / read from an
open HDF5 file or group with the observation coordinates (``write`` / ``read``, also used by
posterior files) or saved to / loaded from a file of its own; :func:`check_provenance` compares
the provenance with a prior.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

Tensor = torch.Tensor
Fields = Mapping[str, Tensor]

#: HDF5 attributes of an observations file (and of a posterior file, which holds its observations)
OPERATOR_ATTR = "diffpde_observations"
PROVENANCE_ATTR = "diffpde_provenance"


class ObservationOperator(abc.ABC):
    """Base class: ``op(fields) -> [B, m]`` measurements of the fields ``op.fields``."""

    linear: bool = False
    differentiable: bool = True
    mask: bool = False

    def __init__(self, fields: Sequence[str], noise_std: float = 0.0) -> None:
        if not np.isfinite(noise_std) or noise_std < 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.fields = tuple(fields)
        self.noise_std = float(noise_std)

    @property
    @abc.abstractmethod
    def num_measurements(self) -> int:
        """Number of measurements ``m`` per instance."""

    @abc.abstractmethod
    def __call__(self, fields: Fields) -> Tensor:
        """Noise-free measurements ``[B, m]`` of a batch of physical fields."""

    def adjoint(self, y: Tensor) -> dict[str, Tensor]:
        """Adjoint ``A^T y`` as fields (linear operators only)."""
        raise TypeError(f"{type(self).__name__} is not linear and has no adjoint")

    def masks(self) -> dict[str, Tensor]:
        """Boolean mask of the observed entries per field (mask operators only)."""
        raise TypeError(f"{type(self).__name__} has no mask structure")

    def measure(self, fields: Fields, generator: torch.Generator | None = None) -> Tensor:
        """Noisy measurements ``A(fields) + noise_std * eps``."""
        y = self(fields)
        if self.noise_std > 0:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
            y = y + self.noise_std * noise
        return y

    def _get(self, fields: Fields, name: str) -> Tensor:
        if name not in fields:
            raise KeyError(f"{type(self).__name__} observes field {name!r}, which is not among {sorted(fields)}")
        return fields[name]

    def describe(self) -> str:
        caps = [c for c in ("linear", "differentiable", "mask") if getattr(self, c)]
        return f"{type(self).__name__}({', '.join(self.fields)}; m={self.num_measurements}; noise_std={self.noise_std:g}; {', '.join(caps) or 'black box'})"

    def to_dict(self) -> dict:
        raise TypeError(f"{type(self).__name__} cannot be saved")


def require(op: ObservationOperator, method: str, *, linear: bool = False, differentiable: bool = False,
            mask: bool = False) -> None:
    """Raise a clear error when ``op`` lacks a capability that ``method`` needs."""
    needs = {"linear": linear, "differentiable": differentiable, "mask": mask}
    missing = [k for k, v in needs.items() if v and not getattr(op, k)]
    if missing:
        raise TypeError(f"method {method!r} needs a {' and '.join(missing)} observation operator; "
                        f"got {op.describe()}")


class MaskObservation(ObservationOperator):
    """Observes the entries of ``field`` where ``mask`` is true (in row-major order)."""

    linear = True
    mask = True

    def __init__(self, field: str, mask: Tensor | np.ndarray, noise_std: float = 0.0) -> None:
        super().__init__((field,), noise_std)
        self.field = field
        self.mask_ = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if not self.mask_.any():
            raise ValueError(f"mask for field {field!r} observes nothing")
        self.index = torch.nonzero(self.mask_.flatten()).flatten()

    @property
    def num_measurements(self) -> int:
        return int(self.index.numel())

    def _check(self, t: Tensor) -> None:
        if tuple(t.shape[1:]) != tuple(self.mask_.shape):
            raise ValueError(f"field {self.field!r} has shape {list(t.shape)}, the mask expects [B, {', '.join(map(str, self.mask_.shape))}]")

    def __call__(self, fields: Fields) -> Tensor:
        t = self._get(fields, self.field)
        self._check(t)
        return t.reshape(t.shape[0], -1)[:, self.index.to(t.device)]

    def adjoint(self, y: Tensor) -> dict[str, Tensor]:
        out = torch.zeros(y.shape[0], self.mask_.numel(), dtype=y.dtype, device=y.device)
        out[:, self.index.to(y.device)] = y
        return {self.field: out.reshape(y.shape[0], *self.mask_.shape)}

    def masks(self) -> dict[str, Tensor]:
        return {self.field: self.mask_}

    def coordinates(self) -> np.ndarray:
        """Grid indices ``[m, ndim]`` of the observed entries."""
        return np.stack(np.unravel_index(self.index.numpy(), tuple(self.mask_.shape)), axis=-1)

    def to_dict(self) -> dict:
        return {"type": "mask", "field": self.field, "shape": list(self.mask_.shape),
                "indices": self.index.tolist(), "noise_std": self.noise_std}


class SparsePoints(MaskObservation):
    """Point measurements of ``field`` at grid nodes given by integer ``indices`` ``[m, ndim]``.

    Use :meth:`random` for a random fraction of nodes, :meth:`at_coordinates` for physical
    coordinates (snapped to the nearest node; points outside the domain are an error).
    """

    def __init__(self, field: str, shape: Sequence[int], indices: np.ndarray | Tensor, noise_std: float = 0.0) -> None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1, len(shape))
        if len(idx) == 0:
            raise ValueError("SparsePoints needs at least one point")
        if (idx < 0).any() or (idx >= np.asarray(shape)).any():
            raise ValueError(f"SparsePoints: indices outside the grid {tuple(shape)}")
        mask = np.zeros(tuple(shape), dtype=bool)
        mask[tuple(idx.T)] = True
        if mask.sum() != len(idx):
            raise ValueError("SparsePoints: repeated points")
        super().__init__(field, mask, noise_std)

    @classmethod
    def random(cls, field: str, shape: Sequence[int], fraction: float | None = None, *, count: int | None = None,
               seed: int = 0, noise_std: float = 0.0) -> "SparsePoints":
        """``count`` (or ``round(fraction * size)``) distinct nodes drawn uniformly with ``seed``."""
        size = int(np.prod(shape))
        if count is None:
            if fraction is None or not 0 < fraction <= 1:
                raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
            count = max(1, int(round(fraction * size)))
        if not 0 < count <= size:
            raise ValueError(f"count must be in [1, {size}], got {count}")
        flat = np.random.default_rng(seed).choice(size, size=count, replace=False)
        return cls(field, shape, np.stack(np.unravel_index(np.sort(flat), tuple(shape)), -1), noise_std)

    @classmethod
    def at_coordinates(cls, field: str, coords: Mapping[str, np.ndarray], dims: Sequence[str],
                       points: np.ndarray, noise_std: float = 0.0, tol: float = 1e-9) -> "SparsePoints":
        """Points ``[m, ndim]`` in physical coordinates (axis order ``dims``) snapped to the nearest node."""
        dims = (dims,) if isinstance(dims, str) else tuple(dims)
        unknown = [d for d in dims if d not in coords]
        if unknown:
            raise ValueError(f"dims {dims}: {', '.join(map(repr, unknown))} is not a dim of field {field!r}, "
                             f"whose dims are {tuple(coords)}")
        if len(set(dims)) != len(dims) or len(dims) != len(coords):
            raise ValueError(f"dims {dims} must name each dim of field {field!r} once; its dims are {tuple(coords)}")
        points = np.asarray(points, dtype=np.float64)
        if points.ndim > 2 or points.size % len(dims) or (points.ndim == 2 and points.shape[1] != len(dims)):
            raise ValueError(f"observation points must be [m, {len(dims)}] (one column per dim {dims}), "
                             f"got shape {list(points.shape)}")
        points = points.reshape(-1, len(dims))
        if not np.isfinite(points).all():
            raise ValueError("observation coordinates contain NaN or inf")
        idx = []
        for k, d in enumerate(dims):
            c = np.asarray(coords[d], dtype=np.float64)
            h = c[1] - c[0]
            lo, hi = c[0] - tol, c[-1] + tol
            if ((points[:, k] < lo) | (points[:, k] > hi)).any():
                bad = points[(points[:, k] < lo) | (points[:, k] > hi)][0]
                raise ValueError(f"observation point {bad.tolist()} lies outside the domain: {d} in [{c[0]:g}, {c[-1]:g}]")
            idx.append(np.clip(np.rint((points[:, k] - c[0]) / h), 0, len(c) - 1).astype(np.int64))
        return cls(field, [len(coords[d]) for d in dims], np.stack(idx, -1), noise_std)


class SensorColumns(MaskObservation):
    """Sensors at fixed positions along ``axis`` recording every entry of the other axes.

    Example: Burgers trajectories ``u[t, x]`` observed at a few fixed ``x`` over all ``t`` is
    ``SensorColumns("u", (nt, nx), positions=[3, 40, 90], axis=1)``.
    """

    def __init__(self, field: str, shape: Sequence[int], positions: Sequence[int], axis: int = -1,
                 noise_std: float = 0.0) -> None:
        shape = tuple(shape)
        if not -len(shape) <= axis < len(shape):
            raise ValueError(f"sensor axis {axis} does not exist: field {field!r} has {len(shape)} axes "
                             f"(shape {shape}), so axis must be in [{-len(shape)}, {len(shape) - 1}]")
        axis = axis % len(shape)
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0 or (pos < 0).any() or (pos >= shape[axis]).any():
            raise ValueError(f"sensor positions must lie in [0, {shape[axis]}) along axis {axis}, got {pos.tolist()}")
        mask = np.zeros(shape, dtype=bool)
        index = [slice(None)] * len(shape)
        index[axis] = pos
        mask[tuple(index)] = True
        super().__init__(field, mask, noise_std)


class LinearObservation(ObservationOperator):
    """A linear map of one field given by a matrix ``[m, size]`` or a pair of callables.

    ``forward(t: [B, *shape]) -> [B, m]`` and ``adjoint(y: [B, m]) -> [B, *shape]``; with a matrix
    both are derived from it.
    """

    linear = True

    def __init__(self, field: str, shape: Sequence[int], matrix: Tensor | np.ndarray | None = None, *,
                 forward: Callable[[Tensor], Tensor] | None = None, adjoint: Callable[[Tensor], Tensor] | None = None,
                 num_measurements: int | None = None, noise_std: float = 0.0) -> None:
        super().__init__((field,), noise_std)
        self.field, self.shape = field, tuple(shape)
        if matrix is not None:
            self.matrix = torch.as_tensor(np.asarray(matrix), dtype=torch.float64)
            if self.matrix.ndim != 2 or self.matrix.shape[1] != int(np.prod(self.shape)):
                raise ValueError(f"matrix must be [m, {int(np.prod(self.shape))}], got {list(self.matrix.shape)}")
            self._m = self.matrix.shape[0]
            self._forward = lambda t: t.reshape(t.shape[0], -1) @ self.matrix.to(t).T
            self._adjoint = lambda y: (y @ self.matrix.to(y)).reshape(y.shape[0], *self.shape)
        else:
            if forward is None or adjoint is None or num_measurements is None:
                raise ValueError("LinearObservation needs a matrix, or forward, adjoint and num_measurements")
            self._m, self._forward, self._adjoint = int(num_measurements), forward, adjoint

    @property
    def num_measurements(self) -> int:
        return self._m

    def __call__(self, fields: Fields) -> Tensor:
        return self._forward(self._get(fields, self.field))

    def adjoint(self, y: Tensor) -> dict[str, Tensor]:
        return {self.field: self._adjoint(y)}


class CallableObservation(ObservationOperator):
    """An arbitrary function of the fields: ``fn(fields) -> [B, m]``; a black box unless declared."""

    def __init__(self, fn: Callable[[Fields], Tensor], fields: Sequence[str], num_measurements: int, *,
                 differentiable: bool = False, noise_std: float = 0.0) -> None:
        super().__init__(fields, noise_std)
        self.fn, self._m, self.differentiable = fn, int(num_measurements), bool(differentiable)

    @property
    def num_measurements(self) -> int:
        return self._m

    def __call__(self, fields: Fields) -> Tensor:
        for name in self.fields:
            self._get(fields, name)
        if self.differentiable:
            return self.fn(fields)
        with torch.no_grad():
            return self.fn({k: v.detach() for k, v in fields.items()})


class StackedObservation(ObservationOperator):
    """Several operators measured together; ``y`` is their concatenation."""

    def __init__(self, operators: Sequence[ObservationOperator]) -> None:
        if not operators:
            raise ValueError("StackedObservation needs at least one operator")
        stds = {op.noise_std for op in operators}
        fields = tuple(dict.fromkeys(f for op in operators for f in op.fields))
        super().__init__(fields, 0.0)
        self.operators = tuple(operators)
        self.linear = all(op.linear for op in operators)
        self.differentiable = all(op.differentiable for op in operators)
        self.mask = all(op.mask for op in operators) and len({op.fields[0] for op in operators}) == len(operators)
        self.noise_stds = torch.cat([torch.full((op.num_measurements,), op.noise_std, dtype=torch.float64)
                                     for op in operators])
        self.noise_std = stds.pop() if len(stds) == 1 else float("nan")

    @property
    def num_measurements(self) -> int:
        return sum(op.num_measurements for op in self.operators)

    def __call__(self, fields: Fields) -> Tensor:
        return torch.cat([op(fields) for op in self.operators], dim=-1)

    def measure(self, fields: Fields, generator: torch.Generator | None = None) -> Tensor:
        return torch.cat([op.measure(fields, generator) for op in self.operators], dim=-1)

    def _split(self, y: Tensor) -> list[Tensor]:
        return list(torch.split(y, [op.num_measurements for op in self.operators], dim=-1))

    def adjoint(self, y: Tensor) -> dict[str, Tensor]:
        if not self.linear:
            return super().adjoint(y)
        out: dict[str, Tensor] = {}
        for op, part in zip(self.operators, self._split(y)):
            for k, v in op.adjoint(part).items():
                out[k] = out[k] + v if k in out else v
        return out

    def masks(self) -> dict[str, Tensor]:
        if not self.mask:
            return super().masks()
        return {op.fields[0]: op.masks()[op.fields[0]] for op in self.operators}

    def to_dict(self) -> dict:
        return {"type": "stack", "operators": [op.to_dict() for op in self.operators]}


def operator_from_dict(d: Mapping) -> ObservationOperator:
    """Rebuild a saved mask-type operator (``to_dict``)."""
    kind = d.get("type")
    if kind == "mask":
        shape = tuple(d["shape"])
        mask = np.zeros(int(np.prod(shape)), dtype=bool)
        mask[np.asarray(d["indices"], dtype=np.int64)] = True
        return MaskObservation(d["field"], mask.reshape(shape), d.get("noise_std", 0.0))
    if kind == "stack":
        return StackedObservation([operator_from_dict(o) for o in d["operators"]])
    raise ValueError(f"cannot rebuild an observation operator of type {kind!r}")


def _provenance(value: Mapping | None) -> dict | None:
    """Check the layout of an observations provenance record and return it as plain JSON types."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"provenance must be a dict or None, got {type(value).__name__}")
    unknown = sorted(set(value) - {"problem", "data", "indices"})
    if unknown:
        raise ValueError(f"unknown provenance key(s) {unknown}; known: problem, data, indices")
    problem = value.get("problem")
    if problem is not None:
        if not isinstance(problem, Mapping) or "name" not in problem:
            raise ValueError(f"provenance problem must be a dict with name, resolution and parameters, got {problem!r}")
        problem = {"name": problem["name"], "resolution": problem.get("resolution"),
                   "parameters": dict(problem.get("parameters") or {})}
    data = value.get("data")
    if data is not None and not isinstance(data, str):
        raise TypeError(f"provenance data must be a path (str), got {type(data).__name__}")
    indices = value.get("indices")
    if indices is not None:
        array = np.asarray(indices)
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"provenance indices must be a list of integers, got {indices!r}")
        indices = [int(i) for i in array]
    try:
        return json.loads(json.dumps({"problem": problem, "data": data, "indices": indices}))
    except TypeError as err:
        raise TypeError(f"provenance must be JSON-serialisable: {err}") from None


@dataclass
class Observations:
    """Measured values ``y`` ``[B, m]`` (physical units) of the operator ``operator``.

    ``provenance`` records where the observations come from, so that they are not used with
    another problem or scored against other instances (see :func:`check_provenance`)::

        {"problem": {"name", "resolution", "parameters"},   # PDE.config() of the observed data
         "data": "test.h5",                                 # the dataset file (informative)
         "indices": [0, 3, 7]}                              # the dataset instance of each row of y

    Any entry may be ``None``; ``provenance=None`` records nothing.
    """

    operator: ObservationOperator
    values: Tensor
    provenance: dict | None = None

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.values)
        if v.ndim == 1:
            v = v.unsqueeze(0)
        if v.ndim != 2 or v.shape[1] != self.operator.num_measurements:
            raise ValueError(f"observations must be [B, {self.operator.num_measurements}], got {list(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError("observations contain NaN or inf")
        self.values = v
        self.provenance = _provenance(self.provenance)
        indices = (self.provenance or {}).get("indices")
        if indices is not None and len(indices) != v.shape[0]:
            raise ValueError(f"provenance lists {len(indices)} instance indices {indices} but the observations "
                             f"hold {v.shape[0]} instance(s)")

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    def write(self, group: Any) -> None:
        """Write the observations into an open h5py ``File`` or ``Group``.

        Attributes ``OPERATOR_ATTR`` (the operator as JSON) and ``PROVENANCE_ATTR`` (JSON, when
        recorded), the dataset ``values`` ``[B, m]`` (physical units) and, for every mask
        operator, ``coordinates/<field>`` ``[m_f, ndim]``: the grid indices of its observed nodes
        (``<field>.1``, ``<field>.2``, ... for further operators of the same field). Nothing is
        written when the operator cannot be saved. :meth:`read` reads it back.
        """
        operator = json.dumps(self.operator.to_dict())      # an unsaveable operator fails before any write
        group.attrs[OPERATOR_ATTR] = operator
        if self.provenance is not None:
            group.attrs[PROVENANCE_ATTR] = json.dumps(self.provenance)
        group.create_dataset("values", data=self.values.detach().cpu().numpy())
        ops = self.operator.operators if isinstance(self.operator, StackedObservation) else (self.operator,)
        seen: dict[str, int] = {}
        for op in ops:
            if isinstance(op, MaskObservation):
                k = seen[op.field] = seen.get(op.field, -1) + 1
                name = op.field if k == 0 else f"{op.field}.{k}"
                group.create_dataset(f"coordinates/{name}", data=op.coordinates())

    @classmethod
    def read(cls, group: Any, where: str = "the file") -> "Observations":
        """Read observations written by :meth:`write` from an open h5py ``File`` or ``Group``;
        ``where`` names it in the error when it holds none."""
        if OPERATOR_ATTR not in group.attrs or "values" not in group:
            raise ValueError(f"{where} is not a diffpde observations file")
        op = operator_from_dict(json.loads(group.attrs[OPERATOR_ATTR]))
        provenance = group.attrs.get(PROVENANCE_ATTR)
        provenance = json.loads(provenance) if provenance is not None else None
        return cls(op, torch.as_tensor(group["values"][()]), provenance)

    def save(self, path: str | os.PathLike) -> None:
        """Write the observations (:meth:`write`) to a new HDF5 file ``path``.

        The file is written under a temporary name in the target directory and renamed into place:
        on any error nothing is left behind and an existing file at ``path`` is untouched.
        """
        import h5py

        path = os.fspath(path)
        self.operator.to_dict()                             # an unsaveable operator fails before any file
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OSError(f"cannot write observations file {path!r}: directory {directory!r} does not exist")
        # a fresh name beside the target (same file system, so the rename is atomic); h5py creates it
        # with the user's umask, as the final file should have
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                self.write(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Observations":
        """Read a file written by :meth:`save` (operator, values and provenance, if recorded);
        a posterior file (``diffpde sample --out``) holds its observations the same way."""
        import h5py

        path = os.fspath(path)
        try:
            f = h5py.File(path, "r")
        except (OSError, FileNotFoundError) as err:
            raise OSError(f"cannot read observations file {path!r}: {err}") from None
        with f:
            return cls.read(f, repr(path))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _show(parameters: Mapping, key: str) -> str:
    return repr(parameters[key]) if key in parameters else "(not recorded)"


def _describe_problem(p: Mapping) -> str:
    return f"{p.get('name')} at resolution {p.get('resolution')}"


def check_provenance(observations: Observations, problem_config: Mapping | Any | None,
                     indices: Sequence[int] | None = None) -> None:
    """Check that ``observations`` belong to the prior's problem and, if given, to the instances ``indices``.

    ``problem_config``: the prior's ``{"name", "resolution", "parameters"}`` (``Prior.problem_config``,
    or a ``PDE``, whose ``config()`` is used); ``None`` skips the problem check (a prior without a
    PDE family). ``indices``: the dataset instances the observations are about to be scored
    against; ``None`` skips that check.

    Raises ``ValueError`` naming the first difference: problem name, resolution, a parameter (or
    one recorded on one side only), or the instance indices. Observations without provenance
    pass with a ``UserWarning`` (nothing can be checked).
    """
    record = observations.provenance
    if record is None:
        warnings.warn("the observations record no provenance (problem, instances): cannot check that they "
                      "belong to this prior's problem and to the instances they are scored against",
                      UserWarning, stacklevel=2)
        return
    if problem_config is not None and not isinstance(problem_config, Mapping):
        problem_config = problem_config.config()
    made, now = record.get("problem"), _json(problem_config) if problem_config is not None else None
    if made is not None and now is not None:
        if (made.get("name"), made.get("resolution")) != (now.get("name"), now.get("resolution")):
            raise ValueError(f"the observations were made on {_describe_problem(made)}, but the prior's problem is "
                             f"{_describe_problem(now)}")
        ours, theirs = made.get("parameters") or {}, now.get("parameters") or {}
        for key in sorted(set(ours) | set(theirs)):
            if key not in ours or key not in theirs or ours[key] != theirs[key]:
                raise ValueError(f"the observations were made on {made.get('name')} with parameter {key} = "
                                 f"{_show(ours, key)}, but the prior's problem has {key} = {_show(theirs, key)}")
    recorded = record.get("indices")
    if indices is not None and recorded is not None:
        wanted = [int(i) for i in indices]
        if wanted != recorded:
            raise ValueError(f"the observations were made of instance(s) {recorded}"
                             f"{' of ' + record['data'] if record.get('data') else ''}, but are used with "
                             f"instance(s) {wanted}")
