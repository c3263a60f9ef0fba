"""Wavelet representation of whole fields (WDNO): diffuse discrete wavelet coefficients.

``Wavelet`` (``{"type": "wavelet", "wavelet": "bior2.4", "mode": "periodization", "levels": 1,
"axes": ["t", "x"]}``) transforms the fields over one, two or three of their grid axes with
ptwt's ``wavedec`` / ``wavedec2`` / ``fswavedec3`` (one level at a time; the separable 3D
transform, because the 3D convolution with ``L^3`` taps rounds 2-4 times worse in float32) and
stacks the subbands as channels; ``decode`` is the exact, differentiable inverse (ptwt's
``waverec`` / ``waverec2`` / ``fswaverec3``).

Modes: ``"periodization"`` (the periodised transform, ``ceil(n / 2)`` coefficients per axis and
level, equal to PyWavelets' ``mode="periodization"``; ptwt lacks it, so the signal is shifted,
tiled and transformed in ptwt's ``"periodic"`` mode, of which one period is kept), and ptwt's
padding modes ``"zero"``, ``"constant"``, ``"symmetric"``, ``"reflect"`` and ``"periodic"``,
whose coefficients grow to ``(n + L - 1) // 2`` per level (``L``: filter length) and are cropped
back on decode. Odd sizes are fine in every mode (periodization repeats the last sample, as
PyWavelets does, and decode drops it). Reconstruction is exact to round-off with the filters as
PyWavelets tabulates them: about 1e-15 (float64) for haar, db*, coif*, bior1.x-3.x; its sym* and
bior4.4+ filters carry about 12 digits (defects of 1e-12 to 3e-11); ``dmey`` is not a
perfect-reconstruction filter bank at all (a warning says so).

Latent layout. With ``J`` levels over ``d`` axes the subbands of one field are, in this order,

- ``A{J}``: the approximation at level ``J``;
- for ``j = J, ..., 1``, the details ``D{j}-{key}`` with ``key`` over the transformed axes in
  the order of ``axes``, ``a`` (low pass) or ``d`` (high pass) per axis, sorted (2D: ``ad``,
  ``da``, ``dd``; 3D: ``aad`` ... ``ddd``; 1D: ``d``), as PyWavelets' ``wavedecn`` names them.

Every subband is brought to the grid of the coarsest level: a level-``j`` detail band is split
into its ``r^d`` polyphase components (``r = 2^(J - j)``, offsets in row-major order, as
``pixel_unshuffle``), so the stacking is a bijection (``2^(d J)`` channels per field when the
sizes divide evenly); bands that do not fill the coarse grid are zero-padded. The latent is
``[B, C * channels_per_field, *latent_grid]``, field-major (all channels of the first field,
then the next), with the untransformed grid axes kept as they are, and zero-padded at the end of
every axis to ``size`` and to a multiple of ``multiple`` (what the network needs). With one level
each channel is one subband, as in WDNO.

Normalisation. Each (field, subband) is shifted and scaled by its mean and standard deviation
measured on the (normalised) training fields by :meth:`Wavelet.fit`; they are stored in the
config (``mean``, ``std``, field-major, subbands in the order above), so they are saved and
loaded with the prior. Padding stays zero in the normalised frame and is ignored by decode.

What is WDNO's and what is not: WDNO (Hu et al., ICLR 2025) transforms (t, x) trajectories with
``pytorch_wavelets`` (2D, periodization) or (t, x, y) with ptwt (3D), stacks ``1 + 3J`` (2D)
subbands as channels, repeating coarse-level coefficients ``2^i`` times to the finest band's size
(a redundant stacking, not a bijection), zero-pads to a fixed 64 x 64, and divides each subband by
constants written in its evaluation script for four wavelets. Here: any ptwt wavelet and mode, any
level count, any axes by name, polyphase stacking instead of repetition, padding from the
configuration, statistics measured on the data.
"""

from __future__ import annotations

import difflib
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .registry import register, register_to_config
from .representation import Representation

Tensor = torch.Tensor

__all__ = ["Wavelet", "MODES"]

#: boundary modes: the periodised transform and ptwt's padding modes.
MODES = ("periodization", "zero", "constant", "symmetric", "reflect", "periodic")


def _detail_keys(d: int) -> tuple[str, ...]:
    """Detail subband keys over ``d`` axes in sorted order (``"ad"``, ``"da"``, ``"dd"`` for 2D)."""
    return tuple("".join(k) for k in itertools.product("ad", repeat=d))[1:]


def _as_wavelet(name: str) -> Any:
    """The PyWavelets discrete wavelet ``name``, or a ``ValueError`` naming the known ones."""
    import pywt

    known = pywt.wavelist(kind="discrete")
    if not isinstance(name, str) or name not in known:
        near = difflib.get_close_matches(str(name), known, n=3)
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        raise ValueError(f"unknown wavelet {name!r}{hint}; discrete wavelets of PyWavelets: families "
                         f"{', '.join(pywt.families(short=True))} (see pywt.wavelist(kind='discrete'))")
    wavelet = pywt.Wavelet(name)
    signal = np.random.default_rng(0).standard_normal(4 * wavelet.dec_len)
    defect = np.abs(pywt.idwt(*pywt.dwt(signal, wavelet, mode="periodization"), wavelet,
                              mode="periodization") - signal).max() / np.abs(signal).max()
    if defect > 1e-9:
        warnings.warn(f"wavelet {name!r} is not a perfect-reconstruction filter bank in PyWavelets: decode(encode(x)) "
                      f"differs from x by about {defect:.0e} relative", UserWarning, stacklevel=4)
    return wavelet


# -- one level over the last d axes ---------------------------------------------------------------


def _ptwt_dec(x: Tensor, wavelet: Any, mode: str, d: int) -> tuple[Tensor, dict[str, Tensor]]:
    import ptwt

    if d == 1:
        a, det = ptwt.wavedec(x, wavelet, mode=mode, level=1)
        return a, {"d": det}
    if d == 2:
        a, (da, ad, dd) = ptwt.wavedec2(x, wavelet, mode=mode, level=1)  # ptwt's (horizontal, vertical, diagonal)
        return a, {"ad": ad, "da": da, "dd": dd}
    a, det = ptwt.fswavedec3(x, wavelet, mode=mode, level=1)  # separable: 2-4x smaller float32 round-off
    return a, dict(det)


def _ptwt_rec(a: Tensor, details: dict[str, Tensor], wavelet: Any, d: int) -> Tensor:
    import ptwt

    if d == 1:
        return ptwt.waverec([a, details["d"]], wavelet)
    if d == 2:
        return ptwt.waverec2([a, ptwt.WaveletDetailTuple2d(details["da"], details["ad"], details["dd"])], wavelet)
    return ptwt.fswaverec3([a, dict(details)], wavelet)


def _coefficient_size(n: int, filter_length: int, mode: str) -> int:
    """Coefficients per axis after one level on ``n`` samples (PyWavelets' ``dwt_coeff_len``)."""
    return -(-n // 2) if mode == "periodization" else (n + filter_length - 1) // 2


def _dwt(x: Tensor, wavelet: Any, mode: str, d: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One level over the last ``d`` axes of ``x``: approximation and ``{key: detail}``."""
    if mode != "periodization":
        return _ptwt_dec(x, wavelet, mode, d)
    L = wavelet.dec_len
    shift = L // 2 - 1  # aligns ptwt's periodic-mode coefficients with PyWavelets' periodization
    halves = []
    for ax in range(x.ndim - d, x.ndim):
        n = x.shape[ax]
        if n % 2:  # PyWavelets' periodization repeats the last sample of an odd axis
            x = torch.cat([x, x.narrow(ax, n - 1, 1)], dim=ax)
            n += 1
        x = torch.roll(x, -shift, dims=ax)
        tiles = max(1, -(-(L - 2) // n))  # ptwt's circular padding (L - 2 per side) must not exceed the length
        if tiles > 1:
            x = torch.cat([x] * tiles, dim=ax)
        halves.append(n // 2)
    a, details = _ptwt_dec(x, wavelet, "periodic", d)

    def period(c: Tensor) -> Tensor:  # the coefficients repeat with period n / 2 along each axis
        for i, h in enumerate(halves):
            c = c.narrow(c.ndim - d + i, 0, h)
        return c

    return period(a), {k: period(v) for k, v in details.items()}


def _idwt(a: Tensor, details: dict[str, Tensor], wavelet: Any, mode: str, size: Sequence[int]) -> Tensor:
    """Inverse of :func:`_dwt`: the signal of ``size`` (last ``d`` axes) from one level of coefficients."""
    d = len(size)
    if mode != "periodization":
        x = _ptwt_rec(a, details, wavelet, d)
    else:
        L = wavelet.dec_len
        shift = L // 2 - 1
        for i, n in enumerate(size):
            ax = a.ndim - d + i
            even = n + n % 2
            tiles = max(1, -(-(L - 2) // even))
            k = (tiles * even + L - 1) // 2  # the coefficient count of ptwt's periodic mode on the tiled signal
            index = torch.arange(k, device=a.device) % (even // 2)
            a = a.index_select(ax, index)
            details = {key: v.index_select(ax, index) for key, v in details.items()}
        x = _ptwt_rec(a, details, wavelet, d)
        for i, n in enumerate(size):
            ax = x.ndim - d + i
            even = n + n % 2
            x = torch.roll(x.narrow(ax, 0, even), shift, dims=ax)
    for i, n in enumerate(size):
        x = x.narrow(x.ndim - d + i, 0, n)
    return x


# -- geometry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Band:
    name: str                  # "A2", "D2-ad", ...
    size: tuple[int, ...]      # coefficients along the transformed axes
    factor: int                # polyphase factor per transformed axis, 2^(J - level)


@dataclass(frozen=True)
class _Plan:
    grid: tuple[int, ...]
    axes: tuple[int, ...]          # transformed grid axes, in transform order
    other: tuple[int, ...]         # the other grid axes, in order
    sizes: tuple[tuple[int, ...], ...]  # approximation size per level along ``axes`` (sizes[0]: the grid's)
    bands: tuple[_Band, ...]
    coarse: tuple[int, ...]        # the stacked bands' size along ``axes`` before padding
    latent: tuple[int, ...]        # the latent grid (grid axis order), padded

    @property
    def channels(self) -> int:
        """Latent channels per field."""
        return sum(b.factor ** len(self.axes) for b in self.bands)

    @property
    def order(self) -> tuple[int, ...]:
        """Grid axes with the transformed ones last (the working layout)."""
        return (*self.other, *self.axes)


@register("representation", "wavelet")
class Wavelet(Representation):
    """Discrete wavelet coefficients of the fields, subbands stacked as channels (see the module docstring).

    Arguments:
        wavelet:   a discrete wavelet of PyWavelets (``"haar"``, ``"db4"``, ``"bior2.4"``, ...).
        mode:      one of :data:`MODES`.
        levels:    decomposition levels (>= 1).
        axes:      the transformed grid axes, by name (of the fields' ``dims``) or index, 1 to 3
                   of them, in the order given; default all grid axes (at most 3).
        multiple:  pad every latent axis to a multiple of this (e.g. ``2 ** k`` for a UNet with
                   ``k`` downsamplings).
        size:      the latent grid size per grid axis (at least the natural size), or ``None``.
        normalize: shift and scale each (field, subband) by statistics of the training data.
        dims:      names of the grid axes (filled in by :meth:`fit` from the problem or dataset).
        grid:      the fields' grid shape (filled in by :meth:`fit`).
        mean, std: per (field, subband) statistics (filled in by :meth:`fit`).
    """

    affine = True   # linear transform, then a per-(field, subband) shift and scale

    @register_to_config
    def __init__(
        self,
        wavelet: str = "bior2.4",
        mode: str = "periodization",
        levels: int = 1,
        axes: Sequence[str | int] | None = None,
        multiple: int = 1,
        size: Sequence[int] | None = None,
        normalize: bool = True,
        dims: Sequence[str] | None = None,
        grid: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.wavelet = _as_wavelet(wavelet)
        if mode not in MODES:
            near = difflib.get_close_matches(str(mode), MODES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown wavelet mode {mode!r}{hint}; known: {', '.join(MODES)}")
        self.mode = mode
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise ValueError(f"wavelet levels must be an integer >= 1, got {levels!r}")
        self.levels = levels
        if axes is not None:
            axes = [axes] if isinstance(axes, (str, int)) else list(axes)
            if not 1 <= len(axes) <= 3 or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in axes):
                raise ValueError(f"wavelet axes must be 1 to 3 axis names or indices, got {axes!r}")
        self.axes = tuple(axes) if axes is not None else None
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ValueError(f"wavelet multiple must be an integer >= 1, got {multiple!r}")
        self.multiple = multiple
        self.size = _positive_ints(size, "wavelet size")
        self.normalize = bool(normalize)
        if dims is not None and (not all(isinstance(n, str) for n in dims) or len(set(dims)) < len(dims)):
            raise ValueError(f"wavelet dims must be distinct axis names, got {dims!r}")
        self.dims = tuple(dims) if dims is not None else None
        self.grid = _positive_ints(grid, "wavelet grid")
        if self.dims is not None and self.grid is not None and len(self.dims) != len(self.grid):
            raise ValueError(f"wavelet dims {list(self.dims)} and grid {list(self.grid)} differ in length")
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._set_statistics(mean, std)
        if self.grid is not None:
            self._plan(self.grid)  # fail now on bad axes, sizes or padding
        elif self.dims is not None:
            self._resolve_axes(len(self.dims))

    # -- configuration -------------------------------------------------------------------------

    @property
    def subband_names(self) -> tuple[str, ...]:
        """Names of the subbands of one field, in latent order (needs the number of axes, see :meth:`fit`)."""
        return tuple(b.name for b in self._plan(self._need_grid()).bands)

    @property
    def needs_dims(self) -> bool:
        """Whether ``axes`` are named but the names of the grid axes are not yet known."""
        return self.dims is None and self.axes is not None and any(isinstance(a, str) for a in self.axes)

    @property
    def fitted(self) -> bool:
        """Whether the subband statistics are known (always true with ``normalize=False``)."""
        return not self.normalize or self._mean is not None

    def _set_statistics(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("wavelet mean and std are given together or not at all")
        if mean is not None:
            m = torch.as_tensor(list(mean), dtype=torch.float64)
            s = torch.as_tensor(list(std), dtype=torch.float64)
            if m.ndim != 1 or m.shape != s.shape or not m.numel():
                raise ValueError(f"wavelet mean and std must be lists of equal length, got {len(m)} and {len(s)}")
            if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
                raise ValueError("wavelet mean must be finite and std finite and positive")
            if self.grid is not None and m.numel() % len(self._plan(self.grid).bands):
                raise ValueError(f"wavelet statistics have {m.numel()} entries, not a multiple of the "
                                 f"{len(self._plan(self.grid).bands)} subbands per field")
        else:
            m = s = None
        self.register_buffer("_mean", m, persistent=False)  # in the config, not in the weights
        self.register_buffer("_std", s, persistent=False)

    def fit(self, field_shape: Sequence[int], data: Tensor | None = None, dims: Sequence[str] | None = None,
            batch_size: int = 64) -> None:
        """Bind to fields of shape ``(C, *grid)`` named ``dims`` and measure the subband statistics.

        ``data``: normalised training fields ``[N, C, *grid]``; needed when ``normalize`` is on
        and no statistics were given (given ones are kept). Records ``dims``, ``grid``, ``mean``
        and ``std`` in the config, so the prior saves them.
        """
        channels, *grid = (int(n) for n in field_shape)
        if self.grid is not None and tuple(grid) != self.grid:
            raise ValueError(f"the wavelet representation was built for grid {list(self.grid)}, not {grid}")
        if dims is not None:
            dims = tuple(dims)
            if self.dims is not None and dims != self.dims:
                raise ValueError(f"the wavelet representation names the grid axes {list(self.dims)}, the fields {list(dims)}")
            if len(dims) != len(grid):
                raise ValueError(f"dims {list(dims)} do not name the {len(grid)} axes of grid {grid}")
            known, self.dims = self.dims, dims
            try:
                self._plan(tuple(grid))
            except ValueError:
                self.dims = known
                self._plans.clear()
                raise
        plan = self._plan(tuple(grid))
        self.grid = plan.grid
        self.update_config(dims=list(self.dims) if self.dims is not None else None, grid=list(self.grid))
        if not self.normalize:
            return
        if self._mean is not None:
            if self._mean.numel() != channels * len(plan.bands):
                raise ValueError(f"the wavelet statistics have {self._mean.numel()} entries but {channels} field(s) "
                                 f"x {len(plan.bands)} subbands need {channels * len(plan.bands)}")
            return
        if data is None:
            raise ValueError("the wavelet representation normalises each subband by statistics of the training "
                             "data: pass data (Prior.from_dataset does), give mean and std, or set normalize: false")
        if tuple(data.shape[1:]) != (channels, *grid):
            raise ValueError(f"wavelet fit: data must have shape [N, {channels}, {', '.join(map(str, grid))}], "
                             f"got {tuple(data.shape)}")
        # sums of (coefficient - shift), the shift being the first chunk's mean (no cancellation)
        shift = total = squares = None
        count = torch.zeros(len(plan.bands), dtype=torch.float64)
        with torch.no_grad():
            for chunk in torch.split(data, batch_size):
                bands = [b.transpose(0, 1).reshape(channels, -1).cpu()
                         for b in self._analyse(chunk.to(torch.float64), plan)]
                if shift is None:
                    shift = torch.stack([b.mean(1) for b in bands], 1)
                    total, squares = torch.zeros_like(shift), torch.zeros_like(shift)
                for i, flat in enumerate(bands):
                    flat = flat - shift[:, i:i + 1]
                    total[:, i] += flat.sum(1)
                    squares[:, i] += flat.square().sum(1)
                    count[i] += flat.shape[1]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        mean = mean + shift
        degenerate = std <= 1e-8 * std.max()
        if degenerate.any():
            names = [f"field {c} {plan.bands[i].name}" for c, i in degenerate.nonzero().tolist()]
            warnings.warn(f"wavelet subbands without variance on the data keep scale 1: {names}", UserWarning,
                          stacklevel=2)
            std = torch.where(degenerate, torch.ones_like(std), std)
        self._set_statistics(mean.reshape(-1).tolist(), std.reshape(-1).tolist())
        self.update_config(mean=self._mean.tolist(), std=self._std.tolist())

    # -- geometry ------------------------------------------------------------------------------

    def _need_grid(self) -> tuple[int, ...]:
        if self.grid is None:
            raise ValueError("the wavelet representation does not know the fields' grid yet: call fit(field_shape) "
                             "(Prior.from_config / from_dataset do) or give grid in its config")
        return self.grid

    def _resolve_axes(self, ndim: int) -> tuple[int, ...]:
        if self.axes is None:
            if ndim > 3:
                raise ValueError(f"the wavelet transform covers at most 3 axes; the fields have {ndim}: choose axes")
            return tuple(range(ndim))
        out = []
        for a in self.axes:
            if isinstance(a, str):
                if self.dims is None:
                    raise ValueError(f"wavelet axes {list(self.axes)} are named, but the names of the fields' axes are "
                                     "unknown: build the prior from a problem or dataset, give dims, or give axes by index")
                if a not in self.dims:
                    raise ValueError(f"wavelet axis {a!r} is not an axis of the fields; their axes are {list(self.dims)}")
                out.append(self.dims.index(a))
            else:
                if not -ndim <= a < ndim:
                    raise ValueError(f"wavelet axis {a} is out of range for fields with {ndim} grid axes")
                out.append(a % ndim)
        if len(set(out)) < len(out):
            raise ValueError(f"wavelet axes {list(self.axes)} name an axis twice")
        return tuple(out)

    def _plan(self, grid: tuple[int, ...]) -> _Plan:
        plan = self._plans.get(grid)
        if plan is not None:
            return plan
        if self.dims is not None and len(self.dims) != len(grid):
            raise ValueError(f"fields of grid {list(grid)} do not have the {len(self.dims)} axes {list(self.dims)}")
        axes = self._resolve_axes(len(grid))
        d, L, J = len(axes), self.wavelet.dec_len, self.levels
        sizes = [tuple(grid[a] for a in axes)]
        for level in range(1, J + 1):
            for a, n in zip(axes, sizes[-1]):
                pad = L - 2 + n % 2
                if (self.mode == "reflect" and pad >= n) or (self.mode == "periodic" and pad > n):
                    name = self.dims[a] if self.dims is not None else a
                    raise ValueError(f"wavelet mode {self.mode!r} with {self.wavelet.name} (filter length {L}) needs more "
                                     f"than {pad} samples along axis {name!r} at level {level}, which has {n}: use fewer "
                                     "levels, a shorter wavelet or another mode")
            sizes.append(tuple(_coefficient_size(n, L, self.mode) for n in sizes[-1]))
        bands = [_Band(f"A{J}", sizes[J], 1)]
        for level in range(J, 0, -1):
            bands += [_Band(f"D{level}-{k}", sizes[level], 2 ** (J - level)) for k in _detail_keys(d)]
        coarse = tuple(max(-(-b.size[i] // b.factor) for b in bands) for i in range(d))
        natural = list(grid)
        for a, n in zip(axes, coarse):
            natural[a] = n
        if self.size is not None:
            if len(self.size) != len(grid):
                raise ValueError(f"wavelet size {list(self.size)} needs one entry per grid axis ({len(grid)})")
            small = [i for i, (s, n) in enumerate(zip(self.size, natural)) if s < n]
            if small:
                raise ValueError(f"wavelet size {list(self.size)} is smaller than the latent grid {natural} needs")
            natural = list(self.size)
        latent = tuple(-(-n // self.multiple) * self.multiple for n in natural)
        other = tuple(a for a in range(len(grid)) if a not in axes)
        plan = _Plan(tuple(grid), axes, other, tuple(sizes), tuple(bands), coarse, latent)
        self._plans[grid] = plan
        return plan

    def latent_shape(self, field_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C * channels_per_field, *latent_grid)`` for fields of shape ``(C, *grid)``."""
        channels, *grid = (int(n) for n in field_shape)
        if self.grid is not None and tuple(grid) != self.grid:
            raise ValueError(f"the wavelet representation was built for grid {list(self.grid)}, not {grid}")
        plan = self._plan(tuple(grid))
        if self._mean is not None and self._mean.numel() != channels * len(plan.bands):
            raise ValueError(f"the wavelet statistics cover {self._mean.numel() // len(plan.bands)} field(s), "
                             f"not {channels}")
        return (channels * plan.channels, *plan.latent)

    # -- transforms ----------------------------------------------------------------------------

    def _analyse(self, x: Tensor, plan: _Plan) -> list[Tensor]:
        """Raw subbands ``[B, C, *other, *band size]`` of ``x`` ``[B, C, *grid]``, in latent order."""
        x = x.permute(0, 1, *(2 + a for a in plan.order))
        details = []
        for _ in range(self.levels):
            x, det = _dwt(x, self.wavelet, self.mode, len(plan.axes))
            details.append(det)
        bands = [x]
        for level in range(self.levels, 0, -1):
            bands += [details[level - 1][k] for k in _detail_keys(len(plan.axes))]
        return bands

    def _statistics(self, x: Tensor, channels: int) -> tuple[Tensor, Tensor] | None:
        if not self.normalize:
            return None
        if self._mean is None:
            raise ValueError("the wavelet representation has no subband statistics: call fit(field_shape, data) "
                             "(Prior.from_dataset does) or set normalize: false")
        bands = self._mean.numel() // channels
        if bands * channels != self._mean.numel():
            raise ValueError(f"the wavelet statistics ({self._mean.numel()} entries) do not fit {channels} field(s)")
        return (self._mean.to(x.device, x.dtype).reshape(channels, bands),
                self._std.to(x.device, x.dtype).reshape(channels, bands))

    def encode(self, fields: Tensor) -> Tensor:
        """Normalised fields ``[B, C, *grid]`` -> stacked, normalised subbands ``[B, C * channels, *latent]``."""
        if fields.ndim < 3:
            raise ValueError(f"wavelet encode needs fields [B, C, *grid], got shape {tuple(fields.shape)}")
        b, c, *grid = fields.shape
        if self.grid is not None and tuple(grid) != self.grid:
            raise ValueError(f"the wavelet representation was built for grid {list(self.grid)}, got fields "
                             f"of shape {tuple(fields.shape)}")
        plan = self._plan(tuple(grid))
        stats = self._statistics(fields, c)
        stacked = []
        for i, (band, info) in enumerate(zip(self._analyse(fields, plan), plan.bands)):
            if stats is not None:
                shape = (1, c) + (1,) * (band.ndim - 2)
                band = (band - stats[0][:, i].reshape(shape)) / stats[1][:, i].reshape(shape)
            stacked.append(_to_polyphase(band, info.factor, plan.coarse))
        z = torch.cat(stacked, dim=2)
        z = z.reshape(b, c * plan.channels, *z.shape[3:])
        z = z.permute(0, 1, *(2 + plan.order.index(a) for a in range(len(grid))))  # back to grid axis order
        pads = [p for n, m in zip(reversed(z.shape[2:]), reversed(plan.latent)) for p in (0, m - n)]
        return F.pad(z, pads)

    def _unpack(self, z: Tensor, plan: _Plan) -> list[Tensor]:
        """The subbands in ``z`` (normalised frame, padding dropped), in latent order."""
        if z.ndim != 2 + len(plan.grid) or tuple(z.shape[2:]) != plan.latent or z.shape[1] % plan.channels:
            raise ValueError(f"wavelet decode needs z of shape [B, C * {plan.channels}, "
                             f"{', '.join(map(str, plan.latent))}], got {tuple(z.shape)}")
        b, c = z.shape[0], z.shape[1] // plan.channels
        natural = [plan.coarse[plan.axes.index(a)] if a in plan.axes else n for a, n in enumerate(plan.grid)]
        for ax, n in enumerate(natural):
            z = z.narrow(2 + ax, 0, n)
        z = z.permute(0, 1, *(2 + a for a in plan.order))
        z = z.reshape(b, c, plan.channels, *z.shape[2:])
        bands, start = [], 0
        for info in plan.bands:
            width = info.factor ** len(plan.axes)
            band = _from_polyphase(z[:, :, start:start + width], info.factor, len(plan.axes))
            start += width
            for k, n in enumerate(info.size):
                band = band.narrow(band.ndim - len(plan.axes) + k, 0, n)
            bands.append(band)
        return bands

    def decode(self, z: Tensor) -> Tensor:
        """Stacked subbands ``[B, C * channels, *latent]`` -> fields ``[B, C, *grid]`` (differentiable)."""
        plan = self._plan(self._need_grid())
        bands = self._unpack(z, plan)
        c = bands[0].shape[1]
        stats = self._statistics(z, c)
        if stats is not None:
            for i, band in enumerate(bands):
                shape = (1, c) + (1,) * (band.ndim - 2)
                bands[i] = band * stats[1][:, i].reshape(shape) + stats[0][:, i].reshape(shape)
        x, keys = bands[0], _detail_keys(len(plan.axes))
        for level in range(self.levels, 0, -1):
            first = 1 + (self.levels - level) * len(keys)
            details = dict(zip(keys, bands[first:first + len(keys)]))
            x = _idwt(x, details, self.wavelet, self.mode, plan.sizes[level - 1])
        return x.permute(0, 1, *(2 + plan.order.index(a) for a in range(len(plan.grid))))

    def subbands(self, z: Tensor) -> dict[str, Tensor]:
        """The subbands held in ``z`` (normalised frame) by name (:attr:`subband_names`).

        Each is ``[B, C, *other grid axes, *band size along axes]``: the untransformed grid axes
        in order, then the transformed ones in the order of ``axes``.
        """
        plan = self._plan(self._need_grid())
        return dict(zip((b.name for b in plan.bands), self._unpack(z, plan)))


def _to_polyphase(band: Tensor, r: int, coarse: Sequence[int]) -> Tensor:
    """``[B, C, *other, *size]`` -> ``[B, C, r^d, *other, *coarse]``: zero-pad the last ``d`` axes to
    ``coarse * r`` and split them into their ``r^d`` polyphase components (row-major offsets)."""
    d = len(coarse)
    size = band.shape[band.ndim - d:]
    band = F.pad(band, [p for n, m in zip(reversed(size), reversed(coarse)) for p in (0, m * r - n)])
    lead = band.ndim - d
    band = band.reshape(*band.shape[:lead], *(s for m in coarse for s in (m, r)))
    perm = [0, 1, *(lead + 2 * k + 1 for k in range(d)), *range(2, lead), *(lead + 2 * k for k in range(d))]
    band = band.permute(*perm)
    return band.reshape(band.shape[0], band.shape[1], r ** d, *band.shape[2 + d:])


def _from_polyphase(stack: Tensor, r: int, d: int) -> Tensor:
    """Inverse of :func:`_to_polyphase` (without the crop): ``[B, C, r^d, *other, *coarse]`` ->
    ``[B, C, *other, *(coarse * r)]``."""
    b, c, _, *rest = stack.shape
    no = len(rest) - d
    band = stack.reshape(b, c, *(r,) * d, *rest)
    perm = [0, 1, *range(2 + d, 2 + d + no)]
    for k in range(d):
        perm += [2 + d + no + k, 2 + k]
    return band.permute(*perm).reshape(b, c, *rest[:no], *(m * r for m in rest[no:]))


def _positive_ints(values: Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    if not values or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in values):
        raise ValueError(f"{what} must be a list of positive integers, got {values!r}")
    return tuple(values)
