"""Super-resolution training pairs: a fine field and its coarse version brought back to the fine grid.

Grid axes are of two kinds (:func:`axis_kinds`):

- ``"periodic"``: ``x_i = i/n`` on [0, 1) (the space axes of periodic families);
- ``"interval"``: uniform points with both ends stored (the time axis ``t_j = j T/(nt-1)``, vertex
  grids).

Downsampling by an integer factor ``f`` (:func:`downsample`):

- interval axes: the stored points ``0, f, 2f, ...`` are kept, so the coarse grid is a sub-grid of
  the fine one (the last point survives when ``f`` divides ``n - 1``; the time axis of a
  trajectory is subsampled, never filtered);
- periodic axes: ``"subsample"`` (default, ``n`` divisible by ``f``) or ``"spectral"`` (Fourier
  truncation to the modes of the coarse grid, the L2 projection). Subsampling is the default
  because a classical solver returns point values on its grid (collocation): the coarse fields
  that super-resolution is applied to (a solver's solution or a sample at resolution ``n``) are
  point values, and on subsampled pairs the coarse values are the fine values at the shared
  points, on both kinds of axes alike. On a field resolved by the coarse grid the two agree to
  its truncation error; truncation is there for spectral data.

Upsampling by ``f`` (:func:`upsample`), per axis one of

- ``"nearest"``: the nearest coarse point (ties to the earlier one);
- ``"linear"``: linear interpolation (periodic axes wrap around);
- ``"spectral"``: on periodic axes Fourier zero-padding (the trigonometric interpolant, exact for
  fields band-limited to the coarse grid, the Nyquist mode split evenly), on interval axes the
  cosine interpolant (Fourier zero-padding of the even extension, the type-I DCT), which avoids
  the jump a periodic extension of a non-periodic axis would make.

An interval axis of ``n`` points upsamples to ``f (n - 1) + 1`` points; points past the last
coarse one (a ``shape`` that asks for more) are extrapolated: held by nearest and linear,
mirrored by spectral.

:class:`SuperResolutionPairs` is the torch ``Dataset`` of training pairs over a diffpde HDF5 file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .normalize import Normalizer

Tensor = torch.Tensor

__all__ = ["KINDS", "METHODS", "axis_kinds", "fourier_resample", "downsample", "upsample", "coarse_mask",
           "coarse_shape", "fine_shape", "second_difference", "detail", "box_mean", "SCALES", "conditions",
           "cond_names", "SuperResolutionPairs"]

KINDS = ("periodic", "interval")
METHODS = ("nearest", "linear", "spectral")


def axis_kinds(dims: Sequence[str], grid_kind: str) -> tuple[str, ...]:
    """Kind of each axis of a field: ``"t"`` and axes of non-periodic grids are ``"interval"``."""
    return tuple("periodic" if grid_kind == "periodic" and d != "t" else "interval" for d in dims)


def _per_axis(value: Any, n: int, what: str) -> tuple:
    if isinstance(value, (str, int, np.integer)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{what}: need one entry per axis ({n}), got {list(value)}")
    return value


def _check(x: Tensor, factors: Sequence[int], kinds: Sequence[str]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    kinds = tuple(kinds)
    factors = tuple(int(f) for f in _per_axis(factors, len(kinds), "factors"))
    if x.ndim < len(kinds):
        raise ValueError(f"a field with {len(kinds)} axes ({list(kinds)}) needs at least {len(kinds)} dims, "
                         f"got {tuple(x.shape)}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or min(factors) < 1:
        raise ValueError(f"axis kinds must be in {KINDS} and factors >= 1, got {list(kinds)}, {list(factors)}")
    return factors, kinds


def coarse_shape(shape: Sequence[int], factors: Sequence[int], kinds: Sequence[str]) -> tuple[int, ...]:
    """Shape after :func:`downsample` by ``factors``."""
    return tuple(n // f if k == "periodic" else (n - 1) // f + 1 for n, f, k in zip(shape, factors, kinds))


def fine_shape(shape: Sequence[int], factors: Sequence[int], kinds: Sequence[str]) -> tuple[int, ...]:
    """Default shape of :func:`upsample` by ``factors``: ``n f`` (periodic), ``f (n - 1) + 1`` (interval)."""
    return tuple(n * f if k == "periodic" else f * (n - 1) + 1 for n, f, k in zip(shape, factors, kinds))


def fourier_resample(x: Tensor, n: int, dim: int = -1) -> Tensor:
    """Real periodic ``x`` resampled to ``n`` points along ``dim`` by Fourier truncation or zero-padding.

    Upsampling returns the trigonometric interpolant (the Nyquist mode of an even input split
    evenly between ``+-m/2``), exact for any field band-limited to the input grid; downsampling
    keeps the modes ``|k| <= n/2`` (of the coarse Nyquist mode its cosine part, the part the coarse
    grid sees). Works in the dtype of ``x`` (float64 for exactness tests).
    """
    m = x.shape[dim]
    if n == m:
        return x
    spec = torch.fft.rfft(x, dim=dim)
    spec = spec.movedim(dim, -1)
    out = spec.new_zeros(*spec.shape[:-1], n // 2 + 1)
    if n > m:
        out[..., :m // 2 + 1] = spec
        if m % 2 == 0:
            out[..., m // 2] *= 0.5
    else:
        out[..., :n // 2 + 1] = spec[..., :n // 2 + 1]
        if n % 2 == 0:
            out[..., n // 2] = 2 * out[..., n // 2].real
    return torch.fft.irfft(out.movedim(-1, dim) * (n / m), n=n, dim=dim)


def downsample(x: Tensor, factors: Sequence[int] | int, kinds: Sequence[str], periodic: str = "subsample") -> Tensor:
    """Coarse version of ``x`` over its trailing ``len(kinds)`` axes, ``factors`` per axis (module docstring).

    ``periodic``: ``"subsample"`` or ``"spectral"`` (truncation) on periodic axes; interval axes
    are always subsampled.
    """
    factors, kinds = _check(x, factors, kinds)
    if periodic not in ("subsample", "spectral"):
        raise ValueError(f"periodic downsampling must be 'subsample' or 'spectral', got {periodic!r}")
    for i, (f, k) in enumerate(zip(factors, kinds)):
        dim = x.ndim - len(kinds) + i
        n = x.shape[dim]
        if f == 1:
            continue
        if k == "periodic":
            if n % f:
                raise ValueError(f"periodic axis {i} of {n} points is not divisible by the factor {f}")
            if periodic == "spectral":
                x = fourier_resample(x, n // f, dim)
                continue
        x = x[(slice(None),) * dim + (slice(None, None, f),)]
    return x


def _interp(n: int, n_out: int, f: int, periodic: bool, nearest: bool, device) -> tuple[Tensor, Tensor, Tensor]:
    """Indices ``lo``, ``hi`` and weights ``w`` (of ``hi``) of fine points ``i`` at coarse coordinate ``i/f``."""
    pos = torch.arange(n_out, dtype=torch.float64) / f
    if not periodic:
        pos = pos.clamp(max=n - 1)
    if nearest:
        lo = torch.ceil(pos - 0.5).long()
        lo = lo % n if periodic else lo.clamp(max=n - 1)
        return lo.to(device), lo.to(device), torch.zeros(n_out, dtype=torch.float64)
    lo = pos.floor().long()
    if not periodic:
        lo = lo.clamp(max=max(n - 2, 0))
    w = pos - lo
    hi = (lo + 1) % n if periodic else (lo + 1).clamp(max=n - 1)
    return (lo % n).to(device), hi.to(device), w


def _cosine_upsample(x: Tensor, f: int, n_out: int, dim: int) -> Tensor:
    """Cosine (even-extension Fourier) interpolant of an interval axis, ``n_out`` points at spacing ``1/f``."""
    n = x.shape[dim]
    if n == 1:
        return x.expand(*x.shape[:dim], n_out, *x.shape[dim + 1:]) if dim >= 0 else x
    ext = torch.cat([x, x.flip(dim).narrow(dim, 1, n - 2)], dim) if n > 2 else x
    period = 2 * (n - 1)
    fine = fourier_resample(ext, f * period, dim)
    reps = math.ceil(n_out / fine.shape[dim])
    if reps > 1:
        fine = torch.cat([fine] * reps, dim)
    return fine.narrow(dim, 0, n_out)


def upsample(x: Tensor, factors: Sequence[int] | int, kinds: Sequence[str], method: str | Sequence[str] = "linear",
             shape: Sequence[int] | None = None) -> Tensor:
    """``x`` interpolated onto the grid ``factors`` times finer over its trailing ``len(kinds)`` axes.

    method: ``"nearest"``, ``"linear"`` or ``"spectral"`` (module docstring), one for all axes or
            one per axis (e.g. ``("linear", "spectral")`` for ``(t, x)``).
    shape:  the fine shape (default :func:`fine_shape`); an interval axis may ask for more points
            than ``f (n - 1) + 1`` (extrapolated), a periodic one only for ``n f``.
    """
    factors, kinds = _check(x, factors, kinds)
    methods = _per_axis(method, len(kinds), "method")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown interpolation {bad}; choose from {METHODS}")
    lead = x.ndim - len(kinds)
    default = fine_shape(x.shape[lead:], factors, kinds)
    shape = default if shape is None else tuple(int(s) for s in shape)
    for i, (f, k, m, n_out) in enumerate(zip(factors, kinds, methods, shape)):
        dim = lead + i
        n = x.shape[dim]
        if k == "periodic" and n_out != n * f:
            raise ValueError(f"periodic axis {i}: {n} points times {f} is {n * f}, not {n_out}")
        if f == 1 and n_out == n:
            continue
        if m == "spectral":
            x = fourier_resample(x, n_out, dim) if k == "periodic" else _cosine_upsample(x, f, n_out, dim)
            continue
        lo, hi, w = _interp(n, n_out, f, k == "periodic", m == "nearest", x.device)
        if m == "nearest":
            x = x.index_select(dim, lo)
        else:
            w = w.to(x.dtype if x.is_floating_point() else torch.float32).to(x.device)
            w = w.reshape((-1,) + (1,) * (x.ndim - dim - 1))
            x = x.index_select(dim, lo) * (1 - w) + x.index_select(dim, hi) * w
    return x


def coarse_mask(shape: Sequence[int], factors: Sequence[int], kinds: Sequence[str] | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """``[*shape]``: 1 at the fine points that are coarse points (indices divisible by the factor), else 0."""
    factors = tuple(int(f) for f in _per_axis(factors, len(shape), "factors"))
    axes = [(torch.arange(n, device=device) % f == 0) for n, f in zip(shape, factors)]
    mask = axes[0]
    for a in axes[1:]:
        mask = mask[..., None] & a
    return mask.to(dtype)


def second_difference(x: Tensor, dim: int, kind: str) -> Tensor:
    """``x[i-1] - 2 x[i] + x[i+1]`` along ``dim``; wraps on periodic axes, takes the neighbour's at interval ends."""
    n = x.shape[dim]
    if kind == "periodic":
        return x.roll(1, dim) - 2 * x + x.roll(-1, dim)
    if n < 3:
        return torch.zeros_like(x)
    inner = x.narrow(dim, 0, n - 2) - 2 * x.narrow(dim, 1, n - 2) + x.narrow(dim, 2, n - 2)
    return torch.cat([inner.narrow(dim, 0, 1), inner, inner.narrow(dim, n - 3, 1)], dim)


SCALES = ("local", "global", "none")


def box_mean(x: Tensor, radius: int, kinds: Sequence[str]) -> Tensor:
    """Mean of ``x`` over the ``(2 radius + 1)``-point box around each point of the trailing axes
    (periodic axes wrap; interval axes average over the points inside)."""
    lead = x.ndim - len(kinds)
    for i, k in enumerate(kinds):
        dim, n = lead + i, x.shape[lead + i]
        if k == "periodic":
            x = sum(x.roll(j, dim) for j in range(-radius, radius + 1)) / (2 * radius + 1)
            continue
        c = torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.cumsum(dim)], dim)
        idx = torch.arange(n, device=x.device)
        hi, lo = (idx + radius + 1).clamp(max=n), (idx - radius).clamp(min=0)
        count = (hi - lo).to(x.dtype).reshape((-1,) + (1,) * (x.ndim - dim - 1))
        x = (c.index_select(dim, hi) - c.index_select(dim, lo)) / count
    return x


def detail(coarse: Tensor, dim: int, kind: str, method: str) -> Tensor:
    """What interpolating ``coarse`` along ``dim`` with ``method`` is expected to miss, on the coarse grid.

    Fourier interpolation on a periodic axis misses the modes above the coarse Nyquist mode; the
    coarse field's top octave (its modes ``|k| > n/4``) estimates them (a field resolved by the
    grid has next to none). The other interpolants miss about ``h^2 u''/8`` between two points
    (linear interpolation's midpoint error): the second difference over 8.
    """
    n = coarse.shape[dim]
    if kind == "periodic" and method == "spectral" and n >= 4:
        return coarse - fourier_resample(fourier_resample(coarse, n // 2, dim), n, dim)
    return second_difference(coarse, dim, kind) / 8


def conditions(coarse: Tensor, factors: Sequence[int], kinds: Sequence[str], method: str | Sequence[str],
               shape: Sequence[int] | None = None, scale: str = "local",
               radius: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """What a super-resolution prior is given about the fine field, from ``coarse`` ``[B, *grid]`` alone.

    Returns ``(up, cond, s)``, all on the fine grid:

    - ``up`` ``[B, *fine]``: ``coarse`` upsampled with ``method`` (the base the residual is added to);
    - ``cond`` ``[B, C, *fine]``: ``up``, the coarse mask (:func:`coarse_mask`, it tells the factors
      and where the coarse points are) and, unless ``scale="none"``, per axis the :func:`detail`
      the interpolation along it misses (zero on axes that are not refined), upsampled and
      divided by ``s``;
    - ``s`` ``[B, *fine]``: the size of the interpolation error to expect: the rms of those details
      over a box of ``2 radius + 1`` coarse points around each point (``"local"``) or over the
      whole grid (``"global"``), plus a floor of 1e-3 of the global value; 1 with ``"none"``. A
      residual divided by ``s`` has about the same size wherever and at whatever level it is (fine
      scales that decay, shocks that form, grids that resolve them or not), so a prior trained on
      coarse levels applies beyond its finest one.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    factors, kinds = _check(coarse, factors, kinds)
    methods = _per_axis(method, len(kinds), "method")
    up = upsample(coarse, factors, kinds, methods, shape)
    fine = up.shape[-len(kinds):]
    mask = coarse_mask(fine, factors, dtype=up.dtype, device=up.device)
    parts = [up, mask.expand_as(up)]
    if scale == "none":
        return up, torch.stack(parts, 1), torch.ones_like(up)
    lead = coarse.ndim - len(kinds)
    details = [detail(coarse, lead + i, k, m) if f > 1 else torch.zeros_like(coarse)
               for i, (f, k, m) in enumerate(zip(factors, kinds, methods))]
    energy = sum(d.square() for d in details)
    total = energy.flatten(1).mean(1).reshape(-1, *([1] * (coarse.ndim - 1)))
    floor = 1e-3 * total.sqrt() + 1e-12 * coarse.flatten(1).square().mean(1).sqrt().reshape(total.shape) + 1e-30
    s = (box_mean(energy, radius, kinds) if scale == "local" else total.expand_as(energy)).sqrt() + floor
    s = upsample(s, factors, kinds, "linear", fine)
    parts += [upsample(d, factors, kinds, methods, fine) / s for d in details]
    return up, torch.stack(parts, 1), s


# -- the dataset ---------------------------------------------------------------------------------

_downsample, _upsample = downsample, upsample   # the dataset's arguments of the same names shadow them


def cond_names(field: str, dims: Sequence[str], scale: str = "local") -> tuple[str, ...]:
    """Names of the channels of ``cond`` from :func:`conditions`."""
    details = tuple(f"{field}_detail_{d}" for d in dims) if scale != "none" else ()
    return (f"{field}_coarse", "coarse_mask") + details


class SuperResolutionPairs(Dataset):
    """Training pairs of a conditional prior ``p(fine | coarse)`` drawn from a high-resolution dataset.

    Item ``k`` (``0 <= k < n_samples * pairs_per_sample``) is a deterministic draw seeded by
    ``(seed, k)``: sample ``k % n_samples``, a level ``l`` from ``levels``, factors from
    ``factors`` (one per axis, e.g. ``(2, 2)``, ``(1, 2)``, ``(2, 1)`` for ``(t, x)``), and a crop.
    Then

    - ``fine``   = the source field downsampled by ``2**l`` on every axis (level ``l``);
    - ``coarse`` = ``fine`` downsampled by the factors;
    - the conditions = :func:`conditions` of ``coarse`` on the grid of ``fine`` (the upsampled
      coarse field ``<field>_coarse``, the ``coarse_mask``, the scaled details ``<field>_detail_<dim>``);
    - the target = ``(fine - up) / s`` (``target="residual"``, field ``<field>_residual``; ``s`` the
      expected size of the interpolation error, see :func:`conditions`, over boxes of ``radius``) or
      ``fine`` (``target="field"``, field ``<field>``);
    - one window of ``crop`` points of each is cut at the same place (periodic axes wrap around;
      offsets are multiples of the factor, so a window starts on a coarse point), so all items
      have one size and a batch mixes levels and factors.

    The conditions are computed on the whole field of the level before cropping, as they are at
    sampling time. An item is the float32 tensor ``[1 + C, *crop]`` (target, conditions),
    normalised by :attr:`normalizer` (the target's statistics measured on ``stats_items`` items,
    the coarse field's those of the source field stored in the file, the mask and the scaled
    details as they are) -- the layout of a :class:`~diffpde.data.dataset.FieldDataset` item
    with ``fields + cond_fields`` as channels, so the trainer's batches fit.
    """

    def __init__(
        self,
        path: str | Path,
        field: str = "u",
        *,
        levels: Sequence[int] = (0, 1, 2),
        factors: Sequence[Sequence[int]] = ((2, 2), (1, 2), (2, 1)),
        crop: Sequence[int] = (32, 32),
        upsample: str | Sequence[str] = ("linear", "spectral"),
        downsample: str = "subsample",
        target: str = "residual",
        scale: str = "local",
        radius: int = 8,
        pairs_per_sample: int = 64,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        stats_items: int = 1024,
    ) -> None:
        from .dataset import FieldDataset

        source = FieldDataset(path, (field,), normalize=False, indices=indices, in_memory=True)
        self.path, self.field, self.source_info = Path(path), field, source.info
        dims = tuple(source.info.field(field).dims)
        self.dims, self.kinds = dims, axis_kinds(dims, source.info.grid.kind)
        nd = len(dims)
        self.levels = tuple(int(l) for l in levels)
        self.factors = tuple(tuple(int(f) for f in _per_axis(fs, nd, "factors")) for fs in factors)
        self.crop = tuple(int(c) for c in _per_axis(crop, nd, "crop"))
        self.upsample = tuple(_per_axis(upsample, nd, "upsample"))
        self.downsample, self.target, self.scale, self.radius = downsample, target, scale, int(radius)
        if target not in ("residual", "field") or scale not in SCALES:
            raise ValueError(f"target must be 'residual' or 'field' and scale one of {SCALES}, "
                             f"got {target!r}, {scale!r}")
        if target == "field" and scale != "none":
            raise ValueError(f"scale={scale!r} scales a residual; use scale='none' with target='field'")
        if not self.levels or min(self.levels) < 0 or not self.factors or any(min(f) < 1 for f in self.factors):
            raise ValueError(f"need levels >= 0 and factors >= 1, got {self.levels}, {self.factors}")
        if pairs_per_sample < 1 or len(source) == 0:
            raise ValueError(f"need pairs_per_sample >= 1 and a non-empty dataset, "
                             f"got {pairs_per_sample}, {len(source)}")
        self.pairs_per_sample, self.seed, self.n_samples = int(pairs_per_sample), int(seed), len(source)
        raw = torch.stack([source[i][0] for i in range(len(source))]).to(torch.float64)
        self.pyramid = {l: _downsample(raw, 2**l, self.kinds, self.downsample) for l in self.levels}
        for l, fine in self.pyramid.items():
            small = [(n, c) for n, c in zip(fine.shape[1:], self.crop) if n < c]
            if small:
                raise ValueError(f"level {l} has grid {tuple(fine.shape[1:])}, smaller than the crop {self.crop}")
        stats = source.info.stats[field]
        self.target_name = f"{field}_residual" if target == "residual" else field
        self.cond_names = cond_names(field, dims, scale)
        self.normalizer: Normalizer | None = None
        step = max(1, len(self) // stats_items)
        draws = torch.stack([self.raw_item(k)[0] for k in range(0, len(self), step)]).to(torch.float64)
        mean, std = float(draws.mean()), float(draws.std())
        if target == "field":
            mean, std = float(stats["mean"]), float(stats["std"])
        n_extra = len(self.cond_names) - 1
        self.normalizer = Normalizer((self.target_name, *self.cond_names),
                                     (mean, float(stats["mean"])) + (0.0,) * n_extra,
                                     (std, float(stats["std"])) + (1.0,) * n_extra, nd)

    # -- description (what Prior.from_dataset and the trainer read) --------------------------------

    info = None   # no PDE family's fields: the prior's fields are the target and the conditions

    @property
    def field_names(self) -> tuple[str, ...]:
        return (self.target_name, *self.cond_names)

    @property
    def field_shape(self) -> tuple[int, ...]:
        return self.crop

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.field_names), *self.crop)

    @property
    def problem(self):
        """The PDE family of the source data."""
        from .generate import resolve_problem

        c = self.source_info.config
        return resolve_problem(c["name"], c["resolution"], c.get("parameters", {}))

    def spec(self) -> dict[str, Any]:
        """How the pairs are made, JSON-serialisable (stored with a super-resolution prior)."""
        return {"field": self.field, "target": self.target, "scale": self.scale, "radius": self.radius,
                "dims": list(self.dims), "kinds": list(self.kinds), "levels": list(self.levels),
                "factors": [list(f) for f in self.factors],
                "crop": list(self.crop), "upsample": list(self.upsample), "downsample": self.downsample,
                "source": {"path": str(self.path), "problem": self.source_info.config,
                           "grid_shape": list(self.source_info.field(self.field).shape)}}

    # -- items -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_samples * self.pairs_per_sample

    def draw(self, k: int) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
        """``(sample, level, factors, crop offsets)`` of item ``k``."""
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} pairs")
        rng = np.random.default_rng([self.seed, k])
        level = self.levels[int(rng.integers(len(self.levels)))]
        factors = self.factors[int(rng.integers(len(self.factors)))]
        shape = self.pyramid[level].shape[1:]
        offsets = []
        for n, c, f, kind in zip(shape, self.crop, factors, self.kinds):
            room = n if kind == "periodic" else n - c + 1
            offsets.append(f * int(rng.integers(max(1, -(-room // f)))))
        return k % self.n_samples, level, factors, tuple(offsets)

    def whole(self, sample: int, level: int, factors: tuple[int, ...]) -> Tensor:
        """Target and conditions of a whole field of a level, ``[1 + C, *grid]`` float64, physical units."""
        fine = self.pyramid[level][sample]
        coarse = _downsample(fine, factors, self.kinds, self.downsample)
        up, cond, s = conditions(coarse[None], factors, self.kinds, self.upsample, fine.shape, self.scale, self.radius)
        target = (fine - up[0]) / s[0] if self.target == "residual" else fine
        return torch.cat([target[None], cond[0]])

    def raw_item(self, k: int) -> Tensor:
        """Item ``k`` in physical units: ``[1 + C, *crop]`` (target, conditions)."""
        i, level, factors, offsets = self.draw(k)
        item = self.whole(i, level, factors)
        for d, (o, c, kind) in enumerate(zip(offsets, self.crop, self.kinds)):
            n = item.shape[d + 1]
            idx = (o + torch.arange(c)) % n if kind == "periodic" else torch.arange(o, o + c)
            item = item.index_select(d + 1, idx)
        return item.to(torch.float32)

    def __getitem__(self, k: int) -> Tensor:
        item = self.raw_item(int(k))
        return item if self.normalizer is None else self.normalizer.normalize(item)

    def __repr__(self) -> str:
        return (f"SuperResolutionPairs({str(self.path)!r}, field={self.field!r}, levels={self.levels}, "
                f"factors={self.factors}, crop={self.crop}, target={self.target!r}, scale={self.scale!r}, "
                f"n={len(self)})")
