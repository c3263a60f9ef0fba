"""2D incompressible Navier-Stokes in vorticity form on the periodic unit square.

    w_t + v . grad w = nu Lap w + f,   v = (psi_y, -psi_x),   -Lap psi = w,

on [0, 1)^2 periodic, grid ``x_i = i/n``, fields indexed ``[..., y, x]`` like the other families
(row ``i`` is ``y_i = i/n``, column ``j`` is ``x_j = j/n``; ``X, Y = meshgrid(x, x)``).
With ``v = (v_x, v_y)`` the vorticity is ``w = d v_y/dx - d v_x/dy``. The forcing is FNO's
``f = A (sin(2 pi (x + y)) + cos(2 pi (x + y)))`` with amplitude ``A = forcing`` (default 0.1; 0
switches it off).

Fields (``store``):

- ``"pair"`` (default, the DiffusionPDE pair): ``w0`` (input, ``[n, n]``) and ``w`` (output, the
  vorticity at ``t = T``, ``[n, n]``);
- ``"trajectory"``: ``w0`` and ``w`` (``[nt, n, n]`` on ``t_j = j T/(nt - 1)``,
  ``w[0] = w0``), dims ``("y", "x")`` / ``("t", "y", "x")``.

Random inputs: ``w0`` is a periodic Gaussian random field with covariance
``sigma^2 (-Lap + tau^2)^(-alpha)``, FNO's alpha 2.5, tau 7 and amplitude ``sigma = tau^(alpha - d/2)
= 7^(3/2)`` (FNO's ``GaussianRF`` default for d = 2; :mod:`diffpde.pdes.grf` uses the same
per-mode variance ``sigma^2 (4 pi^2 |k|^2 + tau^2)^(-alpha)``).

Solver: Fourier pseudo-spectral (2/3 dealiasing of the advection term), ETDRK4 in time (the
viscous term exact), see :mod:`diffpde.pdes._spectral`. FNO's reference uses Crank-Nicolson +
Heun with ``dt = 1e-4``; ETDRK4 is fourth order and stable on the imaginary axis, so the step is
set by the Courant condition ``h (max|v_x| + max|v_y|) <= cfl dx`` instead (the speed grows by
``h`` times the speed the forcing induces, per step), checked every 4 steps (steps are halved when
it fails), bounded by ``dt`` if given: ``h (|v_x| + |v_y|) k_max <= 2.1 cfl`` with the dealiased
``k_max = 2 pi n/3`` (ETDRK4's imaginary-axis limit is about 2.8). The default ``cfl = 0.5``
gives a time error of about 1e-7 relative at 64 x 64, T = 1 (self-convergence; tests check 4th order).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ._spectral import (
    cfl_step,
    check_positive,
    check_times,
    dealias_mask_2d,
    integrate,
    laplacian_symbol,
    time_derivative,
    time_interpolator,
    to_numpy,
    wavenumbers_2d,
)
from . import captions as cap
from .base import PDE, Field, Grid, register
from .grf import grf

Forcing = Callable[[float, np.ndarray, np.ndarray], Any] | np.ndarray | torch.Tensor | None


def fno_forcing(n: int, amplitude: float = 0.1) -> np.ndarray:
    """FNO's forcing ``A (sin(2 pi (x + y)) + cos(2 pi (x + y)))`` on the ``[n, n]`` grid ``i/n`` (symmetric in x, y)."""
    x = np.arange(n) / n
    s = 2 * np.pi * (x[:, None] + x[None, :])
    return amplitude * (np.sin(s) + np.cos(s))


class _Spectral2D:
    """Wavenumbers and the vorticity -> velocity map on the ``rfft2`` grid of ``[..., y, x]`` fields.

    ``zero_nyquist``: first derivatives of the Nyquist modes (even ``n``) are not real; zero them on
    both axes alike, so that the residual commutes exactly with the grid's reflections and its
    transpose. The solver does not need it (its nonlinear term is dealiased) and keeps ``False``,
    which leaves its step plan, and so the generated data, as they were.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu", zero_nyquist: bool = False):
        self.n = n
        ky, kx = wavenumbers_2d(n)
        k2 = kx**2 + ky**2
        if zero_nyquist and n % 2 == 0:
            ky, kx = ky.clone(), kx.clone()
            ky[n // 2], kx[:, -1] = 0.0, 0.0
        self.ky, self.kx = ky.to(device), kx.to(device)  # of first derivatives
        self.k2 = k2.to(device)
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / torch.where(self.k2 > 0, self.k2, 1.0), 0.0)
        self.mask = dealias_mask_2d(n).to(device)

    def irfft(self, v: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(v, s=(self.n, self.n))

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_x, v_y) = (psi_y, -psi_x)`` with ``-Lap psi = w`` (mean of ``w`` ignored)."""
        psi = w_hat * self.inv_k2
        return self.irfft(1j * self.ky * psi), self.irfft(-1j * self.kx * psi)

    def advection(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``v . grad w`` on the grid from the spectral vorticity."""
        vx, vy = self.velocity(w_hat)
        return vx * self.irfft(1j * self.kx * w_hat) + vy * self.irfft(1j * self.ky * w_hat)


def solve_navier_stokes(
    w0: torch.Tensor,
    t: np.ndarray,
    nu: float,
    forcing: Forcing = None,
    *,
    dt: float | None = None,
    cfl: float = 0.5,
    checkpoint_every: int = 0,
) -> torch.Tensor:
    """Solve the vorticity equation on [0, 1)^2 periodic; torch, batched, differentiable.

    w0:      ``[..., n, n]`` initial vorticity, ``w0[..., i, j]`` at ``(y, x) = (i/n, j/n)`` (float64).
    t:       ``[nt]`` strictly increasing output times; the solution starts from ``w0`` at ``t[0]``.
    nu:      viscosity (> 0).
    forcing: ``None``; an array ``[n, n]`` (steady) or ``[..., nt, n, n]`` (on the times ``t``,
             interpolated linearly); or a callable ``f(t, X, Y)`` with ``X, Y = meshgrid(x, x)``.
    dt, cfl: internal step bound and Courant number (module docstring).
    checkpoint_every: recompute blocks of that many steps in the backward pass (saves memory).

    Returns ``[..., nt, n, n]``.
    """
    n = w0.shape[-1]
    sp = _Spectral2D(n, w0.device)
    lin = -nu * laplacian_symbol((n, n))
    force = _forcing(forcing, t, n, w0)

    def nonlinear(v: torch.Tensor, time: float) -> torch.Tensor:
        out = -sp.mask * torch.fft.rfft2(sp.advection(v * sp.mask))
        if force is not None:
            out = out + force(time)
        return out

    def speed(v_hat: torch.Tensor) -> float:
        vx, vy = sp.velocity(v_hat)
        return float(vx.abs().max() + vy.abs().max())

    def step_limit(v: torch.Tensor, time: float, steps: int) -> float:
        return cfl_step(speed(v), speed(force(time)) if force is not None else 0.0, n, cfl, steps)

    v = integrate(torch.fft.rfft2(w0), t, lin, nonlinear, step_limit, dt=dt, checkpoint_every=checkpoint_every)
    w = torch.cat([w0[None], sp.irfft(v[1:])], 0)  # w[0] is w0 exactly
    return w.movedim(0, -3)


def _forcing(forcing: Forcing, t: np.ndarray, n: int, w0: torch.Tensor):
    """Turn ``forcing`` into ``time -> rfft2 coefficients``, or ``None``."""
    if forcing is None:
        return None
    if callable(forcing):
        x = np.arange(n) / n
        X, Y = np.meshgrid(x, x)

        def at(time: float) -> torch.Tensor:
            f = torch.as_tensor(forcing(time, X, Y), dtype=torch.float64, device=w0.device)
            if f.shape[-2:] != (n, n):
                raise ValueError(f"navier_stokes: forcing(t, X, Y) must return [..., {n}, {n}], got {list(f.shape)}")
            return torch.fft.rfft2(f)

        return at
    f = torch.as_tensor(forcing, dtype=torch.float64, device=w0.device)
    if not bool(torch.isfinite(f).all()):
        raise ValueError("navier_stokes: forcing contains NaN or inf")
    if f.shape == (n, n):
        f_hat = torch.fft.rfft2(f)
        return lambda time: f_hat
    if f.ndim < 3 or f.shape[-3:] != (len(t), n, n):
        raise ValueError(f"navier_stokes: forcing array must have shape [{n}, {n}] or [..., {len(t)}, {n}, {n}], "
                         f"got {list(f.shape)}")
    return time_interpolator(torch.fft.rfft2(f).movedim(-3, 0), t, "navier_stokes")


def streamfunction(w: np.ndarray) -> np.ndarray:
    """``psi`` with ``-Lap psi = w`` (zero mean) of periodic vorticity ``[..., n, n]`` on [0, 1)^2 (numpy)."""
    n = w.shape[-1]
    k2 = 4 * np.pi**2 * (np.fft.fftfreq(n, 1.0 / n)[:, None] ** 2 + np.fft.rfftfreq(n, 1.0 / n)[None, :] ** 2)
    k2[0, 0] = np.inf
    return np.fft.irfft2(np.fft.rfft2(w) / k2, s=(n, n))


def _going(key: str) -> cap.Word:
    return cap.qualitative(("falling", "rising"), lambda f: "rising" if f[key + "T"] > f[key + "0"] else "falling")


_GOING, _GOING_Z = _going("energy"), _going("enstrophy")
_FORCED = cap.qualitative(("unforced", "forced"), lambda f: "forced" if "forcing" in f else "unforced")

CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("2D incompressible Navier-Stokes flow on the periodic unit square",
                    "{forced} two-dimensional turbulence in a periodic box",
                    "the vorticity of a {forced} 2D periodic flow",
                    "a {forced} incompressible flow on a doubly periodic domain"), words={"forced": _FORCED}),
    ),
    clauses=(
        cap.viscosity(),
        cap.reynolds(),
        cap.final_time(),
        cap.Clause(("forcing amplitude {forcing} at wavenumber {forcing_k}",
                    "a steady forcing of strength {forcing} at wavenumber {forcing_k}",
                    "forced at wavenumber {forcing_k} with amplitude {forcing}"),
                   {"forcing": cap.Number("float", 2), "forcing_k": cap.Number("float", 2)}),
        cap.Clause(("kinetic energy {going} from {energy0} to {energyT}",
                    "kinetic energy {energy0} at the start and {energyT} at the end",
                    "initial kinetic energy {energy0}, final kinetic energy {energyT}"),
                   {"energy0": cap.Number("sci", 2), "energyT": cap.Number("sci", 2)}, {"going": _GOING}),
        cap.Clause(("enstrophy {going} from {enstrophy0} to {enstrophyT}",
                    "enstrophy {enstrophy0} initially and {enstrophyT} at the final time"),
                   {"enstrophy0": cap.Number("sci", 2), "enstrophyT": cap.Number("sci", 2)}, {"going": _GOING_Z}),
        cap.Clause(("vorticity concentrated at wavenumber {k0} initially and {kT} at the end",
                    "dominant wavenumber {k0} at t = 0 and {kT} at the final time",
                    "a spectral peak moving from wavenumber {k0} to {kT}"),
                   {"k0": cap.Number("float", 2), "kT": cap.Number("float", 2)}),
        cap.Clause(("at the end the strongest vortex, {vortex_sign}, centred at ({vortex_x}, {vortex_y}) with radius "
                    "{vortex_r} and peak vorticity {vortex_peak}",
                    "a final {vortex_sign} vortex of radius {vortex_r} and peak vorticity {vortex_peak} at "
                    "x = {vortex_x}, y = {vortex_y}",
                    "its strongest final eddy at ({vortex_x}, {vortex_y}), rotating {vortex_sign}, radius {vortex_r}"),
                   {"vortex_x": cap.Number("coord", 2), "vortex_y": cap.Number("coord", 2),
                    "vortex_r": cap.Number("float", 2), "vortex_peak": cap.Number("float", 2)},
                   {"vortex_sign": cap.signed("vortex_sign", "counterclockwise", "clockwise")}),
        cap.Clause(("strong vortices at the final time: {n_vortices}",
                    "a count of {n_vortices} strong vortex cores at the end"), {"n_vortices": cap.Number("int")}),
    ),
    recoverable={"nu": "nu_energy"},
)


@register
class NavierStokes(PDE):
    """Vorticity ``w0 -> w(T)`` pairs or trajectories of 2D Navier-Stokes (module docstring)."""

    name = "navier_stokes"
    defaults = {
        "nu": 1e-3,               # viscosity
        "T": 1.0,                 # final time
        "forcing": 0.1,           # amplitude A of FNO's forcing; 0: unforced
        "store": "pair",          # "pair": (w0, w(T)); "trajectory": (w0, w on nt times)
        "nt": 33,                 # stored time points of a trajectory, t_j = j T/(nt-1)
        "alpha": 2.5,             # GRF of w0: covariance sigma^2 (-Lap + tau^2)^(-alpha)
        "tau": 7.0,
        "sigma": None,            # None: FNO's tau^(alpha - 1) = 7^1.5
        "dt": None,               # optional bound of the internal time step
        "cfl": 0.5,               # solver step h <= cfl dx / (max|v_x| + max|v_y|)
        "rollout_cfl": 1.0,       # Courant number of the differentiable rollout in residual() (pairs)
        "checkpoint_every": 8,    # rollout steps per gradient-checkpointed block (0: store all)
    }
    min_resolution = 8
    caption_vocabulary = CAPTIONS
    #: the vorticity changes sign under every reflection
    odd_fields = {name: ("w0", "w") for name in ("flip_x", "flip_y", "transpose", "transpose_half")}

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        p = self.parameters
        check_positive(self.name, p, "nu", "T", "alpha", "tau", "cfl", "rollout_cfl")
        for name in ("dt", "sigma"):
            if p[name] is not None:
                check_positive(self.name, p, name)
        if not isinstance(p["forcing"], (int, float)) or isinstance(p["forcing"], bool) or not np.isfinite(p["forcing"]):
            raise ValueError(f"navier_stokes: parameter forcing (amplitude) must be a finite number, got {p['forcing']!r}")
        if p["store"] not in ("pair", "trajectory"):
            raise ValueError(f"navier_stokes: parameter store must be 'pair' or 'trajectory', got {p['store']!r}")
        if not isinstance(p["nt"], (int, np.integer)) or p["nt"] < 3:
            raise ValueError(f"navier_stokes: nt must be an integer >= 3, got {p['nt']!r}")
        if not isinstance(p["checkpoint_every"], (int, np.integer)) or p["checkpoint_every"] < 0:
            raise ValueError(f"navier_stokes: checkpoint_every must be an integer >= 0, got {p['checkpoint_every']!r}")

    @property
    def symmetries(self) -> tuple[str, ...]:  # type: ignore[override]
        """The maps that keep the equation, the forcing and the GRF of ``w0`` (see :mod:`diffpde.data.augment`).

        The vorticity is a pseudoscalar: it changes sign under reflections (``odd_fields``).
        FNO's forcing ``g(x + y)`` with ``g(s + 1/2) = -g(s)`` is kept by the translations
        ``(s, -s)`` and by the reflection ``(x, y) -> (y + 1/2, x)`` with ``w -> -w`` (even ``n``), not by
        rolls along x or y alone, flips or the plain transpose (which turn it into ``-g``). Without
        forcing every translation and reflection of the square torus is a symmetry.
        """
        half = ("transpose_half",) if self.resolution % 2 == 0 else ()
        if self.parameters["forcing"] != 0:
            return ("roll_antidiagonal",) + half
        return ("roll_x", "roll_y", "roll_antidiagonal", "flip_x", "flip_y", "transpose") + half

    @property
    def trajectory(self) -> bool:
        return self.parameters["store"] == "trajectory"

    @property
    def times(self) -> np.ndarray:
        """The stored times: ``[0, T]`` for pairs, ``linspace(0, T, nt)`` for trajectories."""
        p = self.parameters
        return np.linspace(0.0, p["T"], p["nt"]) if self.trajectory else np.array([0.0, p["T"]])

    @property
    def fields(self) -> tuple[Field, ...]:
        n, p = self.resolution, self.parameters
        w0 = Field("w0", "input", (n, n), ("y", "x"), "initial vorticity w(0, x, y)")
        if self.trajectory:
            return w0, Field("w", "output", (p["nt"], n, n), ("t", "y", "x"), "vorticity trajectory w(t, x, y), w[0] = w0")
        return w0, Field("w", "output", (n, n), ("y", "x"), f"vorticity w(T, x, y) at T = {p['T']:g}")

    @property
    def grid(self) -> Grid:
        x = np.arange(self.resolution) / self.resolution
        coords = {"y": x, "x": x}
        if self.trajectory:
            coords["t"] = self.times
        return Grid("periodic", coords)

    def forcing_field(self) -> np.ndarray:
        """The family's steady forcing ``f [n, n]`` (zeros when the amplitude is 0)."""
        return fno_forcing(self.resolution, self.parameters["forcing"])

    # -- work ------------------------------------------------------------------------------------

    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """``{"w0": [n, res, res]}``: periodic GRFs (zero mean), sample ``i`` from seed ``seed + i``."""
        p = self.parameters
        w0 = grf(n, self.resolution, p["alpha"], p["tau"], dim=2, boundary="periodic", seed=seed, sigma=p["sigma"])
        return {"w0": w0}

    def solve(self, w0, t=None, forcing: Forcing | str = "default"):
        """Vorticity ``[nt, n, n]`` (``[B, nt, n, n]`` for ``w0 [B, n, n]``) at times ``t``.

        ``t`` defaults to the stored times (``[0, T]`` for pairs: then ``[2, n, n]`` is returned, the
        stored ``w`` is its last entry). ``forcing``: ``"default"`` (the family's), ``None`` (none),
        or any form :func:`solve_navier_stokes` accepts. A numpy ``w0`` gives a float64 numpy result;
        a torch ``w0`` a differentiable float64 tensor.
        """
        as_numpy = not isinstance(w0, torch.Tensor)
        w0t = self._check_w0(w0)
        tt = check_times(self.times if t is None else t, self.name)
        p = self.parameters
        if isinstance(forcing, str):
            if forcing != "default":
                raise ValueError(f"navier_stokes: forcing must be 'default', None, an array or a callable, got {forcing!r}")
            forcing = self.forcing_field() if p["forcing"] != 0 else None
        with torch.set_grad_enabled(not as_numpy and torch.is_grad_enabled()):
            w = solve_navier_stokes(w0t, tt, p["nu"], forcing, dt=p["dt"], cfl=p["cfl"])
        return w.detach().cpu().numpy() if as_numpy else w

    def generate(self, seed: int) -> dict[str, np.ndarray]:
        """``{"w0": [n, n], "w": [n, n] or [nt, n, n]}`` of one instance, float64."""
        w0 = self.sample_inputs(1, seed)["w0"][0]
        w = self.solve(w0)
        return {"w0": w0, "w": w if self.trajectory else w[-1]}

    def residual(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The residual of the stored fields; which one depends on ``store``.

        ``"trajectory"``: the space-time residual ``w_t + v . grad w - nu Lap w - f`` of ``fields["w"]``
        ``[B, nt, n, n]``, shape ``[B, nt, n, n]``, in vorticity per time. Space derivatives are
        spectral (period 1, no dealiasing, first derivatives of the Nyquist modes zeroed); ``w_t`` is the second-order finite difference on the
        stored times (one-sided at both ends), which sets the floor on exact data, ``O(dt^2 w_ttt)``.
        On default data at 64 x 64, nt = 33, the GRF's fine scales decay within the first stored
        steps (an initial layer the difference does not resolve): rms residual 3 % of rms ``w_t``
        overall, 0.2 % from the fourth time on. ``fields["f"]`` (``[B, n, n]`` or ``[B, nt, n, n]``)
        replaces the family's forcing if given.

        ``"pair"``: no local residual exists between ``w0`` and ``w(T)``. Returned is the consistency
        defect ``S_T(w0) - w``, ``[B, n, n]`` in vorticity units, where ``S_T`` is the same ETDRK4
        solver run in torch with gradients (to ``w0`` and ``w``) at Courant number ``rollout_cfl``
        (default 1.0: half the steps of data generation), with gradient checkpointing every
        ``checkpoint_every`` steps. Cost: one solve per call plus its backward pass (a few steps at
        64 x 64, T = 1 on default data, as the flow is slow; many more for fast or rough fields).
        Floor on solver data: the time error between the two Courant numbers, about 1e-5 of
        ``max |w|`` (0 with ``rollout_cfl = cfl``, when the rollout repeats the solver's steps).

        Computed in float64, returned in the dtype of ``w``. Both work under ``torch.func.vjp``,
        ``jvp`` and ``grad``; the trajectory residual also under ``vmap``, the pair's rollout not
        (its step plan depends on the values of ``w0``).
        """
        p = self.parameters
        if self.trajectory:
            (w_in,) = self.check_batch(fields, ("w",))
            w = w_in.to(torch.float64)
            n = self.resolution
            sp = _Spectral2D(n, w.device, zero_nyquist=True)
            w_hat = torch.fft.rfft2(w)
            f = fields.get("f")
            if f is None:
                f = torch.as_tensor(self.forcing_field(), dtype=torch.float64, device=w.device)
            elif tuple(f.shape) == (w.shape[0], n, n):
                f = f[:, None].to(torch.float64)
            elif tuple(f.shape) == tuple(w.shape):
                f = f.to(torch.float64)
            else:
                raise ValueError(f"navier_stokes: forcing field 'f' must have shape [B, {n}, {n}] or {list(w.shape)}, "
                                 f"got {list(f.shape)}")
            r = time_derivative(w, p["T"] / (p["nt"] - 1), dim=1)
            r = r + sp.advection(w_hat) + p["nu"] * sp.irfft(sp.k2 * w_hat) - f
            return r.to(w_in.dtype)
        w0, w = self.check_batch(fields, ("w0", "w"))
        forcing = self.forcing_field() if p["forcing"] != 0 else None
        rollout = solve_navier_stokes(
            w0.to(torch.float64), self.times, p["nu"], forcing,
            dt=p["dt"], cfl=p["rollout_cfl"], checkpoint_every=p["checkpoint_every"],
        )
        return (rollout[:, -1] - w.to(torch.float64)).to(w.dtype)

    def describe(self, fields: Mapping[str, np.ndarray | torch.Tensor] | None = None) -> str:
        p, n = self.parameters, self.resolution
        forcing = f"{p['forcing']:g}(sin(2pi(x+y)) + cos(2pi(x+y)))" if p["forcing"] != 0 else "0"
        stored = f"w at {p['nt']} times in [0,{p['T']:g}]" if self.trajectory else f"w at T = {p['T']:g}"
        sigma = p["sigma"] if p["sigma"] is not None else p["tau"] ** (p["alpha"] - 1)
        text = (
            f"2D incompressible Navier-Stokes (vorticity) w_t + v.grad w = {p['nu']:g} Lap w + {forcing} "
            f"on [0,1)^2 periodic, {n}x{n} points; w0 a periodic GRF "
            f"{sigma ** 2:.4g}(-Lap + {p['tau'] ** 2:g})^-{p['alpha']:g}; stored {stored}"
        )
        if fields is not None:
            parts = []
            for name in ("w0", "w"):
                if name in fields:
                    value = to_numpy(fields[name])
                    value = value[..., -1, :, :] if name == "w" and self.trajectory else value
                    label = "w0" if name == "w0" else "w(T)"
                    parts.append(f"rms {label} = {float(np.sqrt(np.mean(value ** 2))):.3g}")
            if parts:
                text += "; " + ", ".join(parts)
        return text

    def features(self, fields: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """The numbers captions state (:mod:`diffpde.pdes.captions`) of one instance ``{"w0", "w"}``
        (a trajectory may omit ``w0``: it is ``w[0]``).

        Parameters: ``nu``, ``T``, ``forcing`` (amplitude A) and ``forcing_k`` (the forcing's
        dominant wavenumber, sqrt 2 for FNO's; both only when A != 0). From the fields:
        ``energy0``/``energyT`` (kinetic energy ``mean |v|^2 / 2`` of ``w0`` and ``w(T)``, ``v`` from the
        streamfunction), ``enstrophy0``/``enstrophyT`` (``mean w^2 / 2``), ``re`` (``U L / nu`` with
        ``U = sqrt(2 energy0)`` the rms velocity of ``w0`` and ``L = 1`` the period), ``k0``/``kT`` (dominant
        wavenumber of the vorticity), the strongest vortex of ``w(T)`` (:func:`captions.main_structure`:
        ``vortex_x``, ``vortex_y``, ``vortex_r``, ``vortex_peak`` = its ``|w|``, ``vortex_sign`` +1
        counterclockwise / -1 clockwise), ``n_vortices`` (regions of ``w(T)`` with ``|w|`` above half its
        maximum). Trajectories also get ``nu_energy``: the viscosity that fits the energy balance
        ``dE/dt = -nu mean(w^2) + mean(psi f)`` over the stored times (:func:`captions.fit_viscosity`),
        measured from the fields alone.
        """
        p, n = self.parameters, self.resolution
        if self.trajectory:
            frames = self.one_sample(fields, "w")
            w0 = self.one_sample(fields, "w0") if "w0" in fields else frames[0]
        else:
            w0, wT = self.one_sample(fields, "w0"), self.one_sample(fields, "w")
            frames = np.stack([w0, wT])
        wT = frames[-1]
        x = np.arange(n) / n
        out = {"nu": float(p["nu"]), "T": float(p["T"])}
        if p["forcing"] != 0:
            out["forcing"] = float(p["forcing"])
            out["forcing_k"] = cap.dominant_wavenumber(self.forcing_field(), (-2, -1), periodic=True)
        psi = streamfunction(frames)
        energy = 0.5 * (psi * frames).mean(axis=(-2, -1))
        out["energy0"], out["energyT"] = 0.5 * float((streamfunction(w0) * w0).mean()), float(energy[-1])
        out["enstrophy0"], out["enstrophyT"] = cap.mean_energy(w0), cap.mean_energy(wT)
        out["re"] = float(np.sqrt(2 * out["energy0"]) / p["nu"])
        out["k0"] = cap.dominant_wavenumber(w0, (-2, -1), periodic=True)
        out["kT"] = cap.dominant_wavenumber(wT, (-2, -1), periodic=True)
        vortex = cap.main_structure(wT, x, x, periodic=True)
        if vortex is not None:
            out.update({"vortex_x": vortex["x"], "vortex_y": vortex["y"], "vortex_r": vortex["radius"],
                        "vortex_peak": vortex["peak"], "vortex_sign": vortex["sign"]})
        out["n_vortices"] = float(cap.count_structures(wT, periodic=True))
        if self.trajectory:
            work = (psi * self.forcing_field()).mean(axis=(-2, -1))
            out["nu_energy"] = cap.fit_viscosity(self.times, energy, (frames**2).mean(axis=(-2, -1)), work)
        return {k: v for k, v in out.items() if v is not None}

    # -- checks ----------------------------------------------------------------------------------

    def _check_w0(self, w0) -> torch.Tensor:
        n = self.resolution
        w = w0.to(torch.float64) if isinstance(w0, torch.Tensor) else torch.as_tensor(np.asarray(w0, dtype=np.float64))
        if w.ndim not in (2, 3) or tuple(w.shape[-2:]) != (n, n):
            raise ValueError(f"navier_stokes: w0 must have shape [{n}, {n}] or [B, {n}, {n}], got {list(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("navier_stokes: w0 contains NaN or inf")
        return w
