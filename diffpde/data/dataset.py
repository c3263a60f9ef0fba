"""The torch ``Dataset`` over a diffpde HDF5 file: fields stacked as channels, normalised.

Captions. A file may hold ``/captions``, strings ``[n_samples, K]`` (UTF-8; ``K`` phrasings of each
sample, ``""`` where a sample has fewer); :attr:`FieldDataset.captions` reads them and
:class:`CaptionedDataset` yields them with the fields, for text-conditioned training.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..pdes import PDE, Grid
from . import hdf5
from .hdf5 import DatasetFileError
from .normalize import Normalizer


_INHERITED: list[h5py.File] = []


class FieldDataset(Dataset):
    """Samples of a dataset file as channels-first float32 tensors ``[C, *shape]``.

    path:        a complete dataset file (:mod:`diffpde.data.hdf5`).
    fields:      the fields stacked as channels, in order (default: all fields of the file); they
                 must share one shape, except that a field on fewer axes (an initial condition ``u0``
                 over ``x`` beside trajectories over ``(t, x)``) is repeated along the axes it lacks.
    normalize:   apply ``(x - mean) / std`` with each field's statistics stored in the file (over
                 all samples and grid points); :meth:`denormalize` inverts it.
    indices:     the samples to use (default: all), e.g. a train/test split.
    in_memory:   read the selected samples once at construction (fast for small datasets).
    allow_incomplete: read the finished samples of an unfinished file (needs ``normalize=False``).

    The HDF5 file is opened lazily in the process that reads it, so the dataset can be used with a
    ``DataLoader`` with ``num_workers > 0``.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str] | None = None,
        *,
        normalize: bool = True,
        indices: Sequence[int] | None = None,
        in_memory: bool = False,
        allow_incomplete: bool = False,
    ) -> None:
        self.path = Path(path)
        with hdf5.open_file(self.path) as f:
            self.info = hdf5.info_of(f, allow_incomplete=allow_incomplete)
            available = hdf5.done_indices(f)
        if isinstance(fields, str):
            raise TypeError(f"{self.path}: fields must be a sequence of names, got the string {fields!r}")
        names = self.info.field_names if fields is None else tuple(fields)
        if not names:
            raise ValueError(f"{self.path}: no fields selected")
        missing = [n for n in names if n not in self.info.field_names]
        if missing:
            raise KeyError(f"{self.path} ({self.info.problem}): no field(s) {missing}; fields in the file: "
                           f"{', '.join(self.info.field_names)}")
        shapes = {n: self.info.field(n).shape for n in names}
        full = max(names, key=lambda n: len(shapes[n]))
        full_dims = tuple(self.info.field(full).dims)
        self._expand: dict[str, tuple[int, ...]] = {}   # fields on fewer axes: where their axes sit in full_dims
        for n in names:
            dims = tuple(self.info.field(n).dims)
            if shapes[n] == shapes[full] and dims == full_dims:
                continue
            where = tuple(full_dims.index(d) if d in full_dims else -1 for d in dims)
            ok = (len(dims) < len(full_dims) and -1 not in where and list(where) == sorted(where)
                  and all(shapes[n][i] == shapes[full][w] for i, w in enumerate(where)))
            if not ok:
                raise ValueError(f"{self.path} ({self.info.problem}): fields of different shapes cannot be stacked as "
                                 "channels: " + ", ".join(f"{m} {shapes[m]} {list(self.info.field(m).dims)}" for m in names))
            self._expand[n] = where
        self.field_names = names
        self.field_shape = shapes[full]
        self.field_dims = full_dims
        if indices is None:
            self.indices = available
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            bad = np.setdiff1d(self.indices, available)
            if bad.size:
                raise IndexError(f"{self.path}: sample indices {bad[:10].tolist()} are out of range or not written "
                                 f"({self.info.n_samples} samples, {len(available)} done)")
        self.normalizer: Normalizer | None = None
        if normalize:
            if self.info.stats is None:
                raise ValueError(f"{self.path}: no statistics in an incomplete file; use normalize=False")
            self.normalizer = Normalizer.from_stats(self.info.stats, names, len(self.field_shape))
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._memory: torch.Tensor | None = None
        if in_memory:
            self._memory = torch.stack([self._read(int(i)) for i in self.indices]) if len(self.indices) else \
                torch.empty((0, len(names), *self.field_shape))
            self.close()

    # -- description -----------------------------------------------------------------------------

    @property
    def grid(self) -> Grid:
        return self.info.grid

    @cached_property
    def problem(self) -> PDE:
        """The PDE family instance the data was made with (from the stored config)."""
        from .generate import resolve_problem

        config = self.info.config
        pde = resolve_problem(config["name"], config["resolution"], config.get("parameters", {}))
        for name in self.field_names:
            if pde.field(name).shape != self.info.field(name).shape:
                raise ValueError(f"{self.path}: field {name!r} has shape {self.info.field(name).shape} but "
                                 f"{pde!r} declares {pde.field(name).shape}")
        return pde

    @cached_property
    def captions(self) -> np.ndarray | None:
        """Captions of every sample of the file, ``[n_samples, K]`` strings (``""``: none), or ``None``."""
        with hdf5.open_file(self.path) as f:
            if "captions" not in f:
                return None
            dset = f["captions"]
            if dset.dtype.kind not in "OSU":
                raise DatasetFileError(f"{self.path}: /captions must hold strings, got dtype {dset.dtype}")
            values = dset.asstr()[()] if dset.dtype.kind in "OS" else dset[()]
        values = np.asarray(values, dtype=object)
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[0] != self.info.n_samples:
            raise DatasetFileError(f"{self.path}: /captions must have shape [n_samples = {self.info.n_samples}, K], "
                                   f"got {values.shape}")
        return values

    def captions_of(self, k: int) -> tuple[str, ...]:
        """The (non-empty) phrasings of item ``k``; ``KeyError`` when the file holds no captions."""
        captions = self.captions
        if captions is None:
            raise KeyError(f"{self.path} holds no captions (/captions); write them with `diffpde generate`")
        return tuple(c for c in captions[int(self.indices[k])] if c)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item, ``(C, *field_shape)``."""
        return (len(self.field_names), *self.field_shape)

    # -- transforms ------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``[..., C, *shape]`` -> normalised (identity when ``normalize=False``)."""
        return x if self.normalizer is None else self.normalizer.normalize(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[..., C, *shape]`` -> physical units (identity when ``normalize=False``)."""
        return x if self.normalizer is None else self.normalizer.denormalize(x)

    # -- items -----------------------------------------------------------------------------------

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if self._file is not None:  # inherited through fork: keep it alive, never touch or close it here
                _INHERITED.append(self._file)
            self._file = hdf5.open_file(self.path)
            self._pid = os.getpid()
        return self._file

    def _read(self, index: int) -> torch.Tensor:
        group = self._handle()["fields"]
        x = torch.from_numpy(np.stack([self._full(n, group[n][index]) for n in self.field_names]).astype(np.float32))
        return self.normalize(x)

    def _full(self, name: str, value: np.ndarray) -> np.ndarray:
        """``value`` of field ``name`` repeated along the axes it lacks (itself when it has them all)."""
        where = self._expand.get(name)
        if where is None:
            return value
        shape = [1] * len(self.field_shape)
        for i, w in enumerate(where):
            shape[w] = value.shape[i]
        return np.broadcast_to(value.reshape(shape), self.field_shape)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        if self._memory is not None:
            return self._memory[k]
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for a dataset of {len(self)} samples")
        return self._read(int(self.indices[k]))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # never carry an HDF5 handle into another process
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __repr__(self) -> str:
        return (f"FieldDataset({str(self.path)!r}, problem={self.info.problem!r}, fields={self.field_names}, "
                f"n={len(self)}, shape={self.shape}, normalized={self.normalizer is not None})")


class CaptionedDataset(Dataset):
    """Items ``{"x": fields [C, *shape], "captions": (phrasing, ...)}`` of a :class:`FieldDataset` with captions.

    Batches of it are made by :func:`collate_captioned` (``{"x": [B, C, *shape], "captions": [B tuples]}``).
    """

    def __init__(self, base: FieldDataset) -> None:
        if base.captions is None:
            raise KeyError(f"{base.path} holds no captions (/captions); write them with `diffpde generate`")
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> dict:
        return {"x": self.base[k], "captions": self.base.captions_of(k)}


def collate_captioned(items: Sequence[dict]) -> dict:
    """Stack the fields of :class:`CaptionedDataset` items; keep their captions as a list of tuples."""
    return {"x": torch.stack([item["x"] for item in items]), "captions": [item["captions"] for item in items]}
