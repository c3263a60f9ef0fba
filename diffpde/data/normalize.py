"""Per-field affine normalisation ``(x - mean) / std`` of channels-first tensors, storable as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Normalizer:
    """Normalises the channels of ``[..., C, *field_shape]`` tensors or arrays, one field per channel.

    fields:     channel names, in channel order.
    mean, std:  per channel, physical units (``std`` of a constant field is stored as 1).
    field_ndim: number of axes of one field (2 for ``[ny, nx]``); the channel axis is the one before.
    """

    fields: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    field_ndim: int

    def __post_init__(self) -> None:
        if not len(self.fields) == len(self.mean) == len(self.std):
            raise ValueError(f"Normalizer: {len(self.fields)} fields but {len(self.mean)} means and {len(self.std)} stds")
        bad = [f for f, s in zip(self.fields, self.std) if not (np.isfinite(s) and s > 0)]
        if bad or not np.isfinite(self.mean).all():
            raise ValueError(f"Normalizer: non-finite mean or non-positive std for field(s) {bad or list(self.fields)}")

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, float]], fields: Sequence[str], field_ndim: int) -> "Normalizer":
        """From per-field statistics ``{name: {"mean": ., "std": .}}`` (as stored in a dataset file)."""
        missing = [f for f in fields if f not in stats]
        if missing:
            raise KeyError(f"Normalizer: no statistics for field(s) {missing}; have {sorted(stats)}")
        std = tuple(float(stats[f]["std"]) if float(stats[f]["std"]) > 0 else 1.0 for f in fields)
        return cls(tuple(fields), tuple(float(stats[f]["mean"]) for f in fields), std, int(field_ndim))

    def select(self, names: Sequence[str]) -> "Normalizer":
        """The normaliser of the channels ``names`` (a subset of ``fields``), in that order."""
        missing = [n for n in names if n not in self.fields]
        if missing:
            raise KeyError(f"Normalizer: no statistics for field(s) {missing}; have {list(self.fields)}")
        idx = [self.fields.index(n) for n in names]
        return Normalizer(tuple(names), tuple(self.mean[i] for i in idx), tuple(self.std[i] for i in idx), self.field_ndim)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "mean": list(self.mean), "std": list(self.std), "field_ndim": self.field_ndim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Normalizer":
        return cls(tuple(d["fields"]), tuple(float(m) for m in d["mean"]), tuple(float(s) for s in d["std"]), int(d["field_ndim"]))

    def _coefficients(self, x: torch.Tensor | np.ndarray):
        axis = x.ndim - self.field_ndim - 1
        if axis < 0 or x.shape[axis] != len(self.fields):
            raise ValueError(f"Normalizer: expected [..., {len(self.fields)} channels ({', '.join(self.fields)}), "
                             f"{self.field_ndim} field axes], got shape {tuple(x.shape)}")
        shape = (len(self.fields),) + (1,) * self.field_ndim
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (torch.tensor(self.mean, dtype=dtype, device=x.device).reshape(shape),
                    torch.tensor(self.std, dtype=dtype, device=x.device).reshape(shape))
        return np.reshape(self.mean, shape), np.reshape(self.std, shape)

    def normalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Physical fields -> normalised (zero mean, unit std over the dataset, per field)."""
        mean, std = self._coefficients(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Normalised -> physical fields; the inverse of :meth:`normalize`."""
        mean, std = self._coefficients(x)
        return x * std + mean
