"""1D viscous Burgers equation on the periodic unit interval: whole space-time trajectories.

    u_t + u u_x = nu u_xx + f(t, x),   x in [0, 1) periodic (grid x_i = i/n),  t in [0, T].

Fields: ``u0`` (input, initial condition ``[nx]``) and ``u`` (output, the trajectory ``[nt, nx]``
on ``t_j = j T / (nt - 1)``, dims ``("t", "x")``, so ``u[0] = u0``). ``nt`` defaults to the spatial
resolution (a square space-time image, as DiffusionPDE's 128 x 128 Burgers data).

Random inputs: ``u0`` is a periodic Gaussian random field with covariance
``sigma^2 (-Laplacian + tau^2)^(-alpha)``, default ``625 (-Laplacian + 25)^(-2)`` (alpha 2, tau 5,
sigma 25): the distribution stated in the FNO paper (Li et al. 2021, section 5.2). (FNO's MATLAB
generator ``gen_burgers1.m`` uses alpha 2.5, tau 7, sigma 49 with nu = 1e-3 instead; both are
reachable through the parameters.)

Solver: Fourier pseudo-spectral in x (the nonlinear term ``-(u^2/2)_x`` with Orszag's 2/3
dealiasing), ETDRK4 in time (the diffusion term integrated exactly, contour-integral
phi-functions), see :mod:`diffpde.pdes._spectral`. Internal step: the Courant condition
``h max|u| <= cfl dx`` (with a forcing, ``max|u|`` grows by ``h max|f|`` per step), checked every
4 steps (steps are halved when it fails), bounded by ``dt`` if given. Then
``h max|u| k_max <= 2.1 cfl`` with the dealiased ``k_max = 2 pi n/3``; ETDRK4 is stable on the
imaginary axis up to about 2.8, and the default ``cfl = 0.5`` gives a time error of about 1e-7
relative at 128 points (far below the spatial error of the GRF data, about 1e-4).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ._spectral import (
    cfl_step,
    check_positive,
    check_times,
    dealias_mask,
    integrate,
    laplacian_symbol,
    spectral_diff,
    time_derivative,
    time_interpolator,
    to_numpy,
    wavenumbers,
)
from . import captions as cap
from .base import PDE, Field, Grid, register
from .grf import grf

Forcing = Callable[[float, np.ndarray], Any] | np.ndarray | torch.Tensor | None


def solve_burgers(
    u0: torch.Tensor,
    t: np.ndarray,
    nu: float,
    forcing: Forcing = None,
    *,
    dt: float | None = None,
    cfl: float = 0.5,
) -> torch.Tensor:
    """Solve viscous Burgers on [0, 1) periodic; torch, batched, differentiable.

    u0:      ``[..., n]`` initial values on ``x_i = i/n`` (float64).
    t:       ``[nt]`` strictly increasing output times; the solution starts from ``u0`` at ``t[0]``.
    nu:      viscosity (> 0).
    forcing: ``None``, a callable ``f(t, x) -> [..., n]`` (``x`` the numpy grid), or an array
             ``[..., nt, n]`` of values at the output times ``t``, interpolated linearly in time.
    dt, cfl: internal step bound and Courant number (module docstring).

    Returns ``[..., nt, n]``.
    """
    n = u0.shape[-1]
    x = np.arange(n) / n
    k = wavenumbers(n, real=True).to(u0.device)
    mask = dealias_mask(n, real=True).to(u0.device)
    lin = -nu * laplacian_symbol((n,))
    advect = -0.5j * k * mask  # -(u^2/2)_x on the dealiased modes
    force = _forcing(forcing, t, x, u0)

    def nonlinear(v: torch.Tensor, time: float) -> torch.Tensor:
        u = torch.fft.irfft(v * mask, n=n)
        out = advect * torch.fft.rfft(u * u)
        if force is not None:
            out = out + torch.fft.rfft(force(time))
        return out

    def step_limit(v: torch.Tensor, time: float, steps: int) -> float:
        umax = float(torch.fft.irfft(v, n=n).abs().max())
        fmax = float(force(time).abs().max()) if force is not None else 0.0
        return cfl_step(umax, fmax, n, cfl, steps)

    v = integrate(torch.fft.rfft(u0), t, lin, nonlinear, step_limit, dt=dt)
    u = torch.cat([u0[None], torch.fft.irfft(v[1:], n=n)], 0)  # u[0] is u0 exactly
    return u.movedim(0, -2)


def _forcing(forcing: Forcing, t: np.ndarray, x: np.ndarray, u0: torch.Tensor):
    """Turn the ``forcing`` argument into ``time -> [..., n]`` tensor, or ``None``."""
    if forcing is None:
        return None
    n = u0.shape[-1]
    if callable(forcing):

        def at(time: float) -> torch.Tensor:
            f = torch.as_tensor(forcing(time, x), dtype=torch.float64, device=u0.device)
            if f.shape[-1:] != (n,):
                raise ValueError(f"burgers: forcing(t, x) must return [..., {n}], got {list(f.shape)}")
            return f

        return at
    f = torch.as_tensor(forcing, dtype=torch.float64, device=u0.device)
    if f.ndim < 2 or f.shape[-2:] != (len(t), n):
        raise ValueError(f"burgers: forcing array must have shape [..., {len(t)}, {n}] (times, x), got {list(f.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError("burgers: forcing contains NaN or inf")
    return time_interpolator(f.movedim(-2, 0), t, "burgers")


def _shock(f) -> str:
    return "shock" if f["front_steepness"] > 2 * f["slope0"] else "steep front"


_ENERGY = cap.qualitative(("falling", "rising"), lambda f: "rising" if f["energyT"] > f["energy0"] else "falling")
#: clauses the two Burgers families share: the trajectory's energy and its steepest front
BURGERS_ENERGY = cap.Clause(("energy {going} from {energy0} to {energyT}",
                             "energy {energy0} at t = 0 and {energyT} at the end"),
                            {"energy0": cap.Number("sci", 2), "energyT": cap.Number("sci", 2)}, {"going": _ENERGY})
BURGERS_FRONT = cap.Clause(
    ("a {shock} of steepness {front_steepness} at x = {front_x} when t = {front_t}",
     "its steepest gradient, {front_steepness}, reached at t = {front_t} and x = {front_x}",
     "a {shock} at x = {front_x} (t = {front_t}) with -u_x up to {front_steepness}"),
    {"front_x": cap.Number("coord", 2), "front_t": cap.Number("float", 2), "front_steepness": cap.Number("float", 2)},
    {"shock": cap.qualitative(("steep front", "shock"), _shock)})

CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("1D viscous Burgers flow on a periodic domain", "a periodic Burgers trajectory",
                    "the viscous Burgers equation on the unit circle",
                    "a {regime} periodic Burgers solution"),
                   words={"regime": cap.qualitative(("shock-forming", "smooth"),
                                                    lambda f: "shock-forming" if _shock(f) == "shock" else "smooth")}),
    ),
    clauses=(
        cap.viscosity(),
        cap.reynolds(),
        cap.final_time(),
        cap.Clause(("initial amplitude {u0_max}", "max |u0| = {u0_max}", "an initial condition of amplitude {u0_max}"),
                   {"u0_max": cap.Number("float", 2)}),
        cap.Clause(("initial dominant wavenumber {k0}", "an initial condition dominated by wavenumber {k0}"),
                   {"k0": cap.Number("float", 2)}),
        BURGERS_ENERGY,
        BURGERS_FRONT,
    ),
    recoverable={"nu": "nu_energy"},
)


@register
class Burgers(PDE):
    """Viscous Burgers trajectories ``u0 -> u(t, x)`` (module docstring)."""

    name = "burgers"
    defaults = {
        "nu": 0.01,     # viscosity
        "T": 1.0,       # final time
        "nt": None,     # stored time points t_j = j T/(nt-1); None: the spatial resolution
        "alpha": 2.0,   # GRF of u0: covariance sigma^2 (-Laplacian + tau^2)^(-alpha)
        "tau": 5.0,
        "sigma": 25.0,
        "dt": None,     # optional bound of the internal time step
        "cfl": 0.5,     # internal step h <= cfl dx / max|u|
    }
    min_resolution = 16
    caption_vocabulary = CAPTIONS
    # Translations, and the reflection x -> -x with u -> -u (u is a velocity): the equation, the
    # periodic GRF of u0 (stationary, symmetric) and the spectral derivatives keep both.
    symmetries = ("roll_x", "flip_x")
    odd_fields = {"flip_x": ("u0", "u")}

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        p = self.parameters
        check_positive(self.name, p, "nu", "T", "tau", "sigma", "alpha", "cfl")
        if p["dt"] is not None:
            check_positive(self.name, p, "dt")
        if p["nt"] is not None and (not isinstance(p["nt"], (int, np.integer)) or isinstance(p["nt"], bool) or p["nt"] < 3):
            raise ValueError(f"burgers: nt must be None or an integer >= 3, got {p['nt']!r}")

    @property
    def nt(self) -> int:
        """Number of stored time points (the parameter ``nt``, or the resolution if it is None)."""
        return int(self.parameters["nt"] or self.resolution)

    @property
    def fields(self) -> tuple[Field, ...]:
        n, nt = self.resolution, self.nt
        return (
            Field("u0", "input", (n,), ("x",), "initial velocity u(0, x)"),
            Field("u", "output", (nt, n), ("t", "x"), "velocity trajectory u(t, x), u[0] = u0"),
        )

    @property
    def grid(self) -> Grid:
        n, p = self.resolution, self.parameters
        return Grid("periodic", {"x": np.arange(n) / n, "t": np.linspace(0.0, p["T"], self.nt)})

    # -- work ------------------------------------------------------------------------------------

    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """``{"u0": [n, nx]}``: periodic GRFs (zero mean), sample ``i`` from seed ``seed + i``."""
        p = self.parameters
        u0 = grf(n, self.resolution, p["alpha"], p["tau"], dim=1, boundary="periodic", seed=seed, sigma=p["sigma"])
        return {"u0": u0}

    def solve(self, u0, t=None, forcing: Forcing = None):
        """Trajectory ``u [nt, nx]`` (or ``[B, nt, nx]`` for ``u0 [B, nx]``) at times ``t``.

        ``t`` defaults to the stored grid ``linspace(0, T, nt)``; ``u[0] = u0`` at ``t[0]``.
        ``forcing``: ``None``, a callable ``f(t, x)`` with ``x`` the grid ``i/n``, or an array
        ``[nt, nx]`` (``[B, nt, nx]``) on the times ``t``, interpolated linearly in time.
        A numpy ``u0`` gives a float64 numpy result; a torch ``u0`` a differentiable float64 tensor.
        """
        as_numpy = not isinstance(u0, torch.Tensor)
        u0t = self._check_u0(u0)
        tt = check_times(self.grid.coords["t"] if t is None else t, self.name)
        p = self.parameters
        with torch.set_grad_enabled(not as_numpy and torch.is_grad_enabled()):
            u = solve_burgers(u0t, tt, p["nu"], forcing, dt=p["dt"], cfl=p["cfl"])
        return u.detach().cpu().numpy() if as_numpy else u

    def generate(self, seed: int) -> dict[str, np.ndarray]:
        """``{"u0": [nx], "u": [nt, nx]}`` of one instance, float64."""
        u0 = self.sample_inputs(1, seed)["u0"][0]
        return {"u0": u0, "u": self.solve(u0)}

    def residual(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Space-time residual ``u_t + u u_x - nu u_xx - f`` of trajectories, ``[B, nt, nx]``.

        ``fields["u"]``: ``[B, nt, nx]`` on the stored grid; ``fields["f"]`` (optional, same shape):
        the forcing, else 0. x-derivatives are spectral (period 1, no dealiasing); ``u_t`` is the
        second-order finite difference on the stored times (``dt = T/(nt-1)``, one-sided at both
        ends). Units: velocity per time; computed in float64, returned in the dtype of ``u``.

        The difference in t sets the floor on exact data, ``O(dt^2 u_ttt)`` (second order, see the
        tests). On the default data (128 x 128, nu 0.01, GRF u0) the fine scales of u0 decay within
        the first stored steps, an initial layer the difference does not resolve: the rms residual
        is 0.2 of rms ``u_t`` over the whole trajectory but below 1 % from the fourth time on.
        """
        (u_in,) = self.check_batch(fields, ("u",))
        u = u_in.to(torch.float64)
        p = self.parameters
        r = time_derivative(u, p["T"] / (self.nt - 1), dim=1)
        r = r + u * spectral_diff(u, 1) - p["nu"] * spectral_diff(u, 2)
        if "f" in fields:
            f = fields["f"]
            if tuple(f.shape) != tuple(u.shape):
                raise ValueError(f"burgers: forcing field 'f' must have the shape of 'u' {list(u.shape)}, got {list(f.shape)}")
            r = r - f.to(torch.float64)
        return r.to(u_in.dtype)

    def describe(self, fields: Mapping[str, np.ndarray | torch.Tensor] | None = None) -> str:
        p = self.parameters
        text = (
            f"1D viscous Burgers u_t + u u_x = {p['nu']:g} u_xx on [0,1) periodic, {self.resolution} points, "
            f"t in [0,{p['T']:g}] at {self.nt} times; u0 a periodic GRF "
            f"{p['sigma'] ** 2:g}(-Lap + {p['tau'] ** 2:g})^-{p['alpha']:g}"
        )
        if fields is not None:
            parts = []
            if "u0" in fields:
                parts.append(f"max|u0| = {float(np.abs(to_numpy(fields['u0'])).max()):.3g}")
            if "u" in fields:
                parts.append(f"max|u(T)| = {float(np.abs(to_numpy(fields['u'])[..., -1, :]).max()):.3g}")
            if parts:
                text += "; " + ", ".join(parts)
        return text

    def features(self, fields: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """The numbers captions state (:mod:`diffpde.pdes.captions`) of one trajectory ``{"u"}`` (``u0``,
        if given, must be ``u[0]``'s field; ``u[0]`` is used).

        Parameters: ``nu``, ``T``. From the fields: ``u0_max`` (``max |u0|``), ``energy0``/``energyT``
        (``mean(u^2) / 2`` at t = 0 and T), ``re`` (``U L / nu``, ``U`` the rms of ``u0``, ``L = 1`` the
        period), ``k0``/``kT`` (dominant wavenumber of ``u(0)``/``u(T)`` along x), the steepest front
        over the trajectory (:func:`captions.steepest_front` on the spectral ``u_x``: ``front_x``,
        ``front_t``, ``front_steepness`` = max ``-u_x``), ``slope0`` (max ``-u_x`` at t = 0; a "shock" is
        a front steeper than twice that), and ``nu_energy``: the viscosity that fits the energy balance
        ``dE/dt = -nu mean(u_x^2)`` over the stored times, from the fields alone.
        """
        u = self.one_sample(fields, "u")
        x, t = self.grid.coords["x"], self.grid.coords["t"]
        n = self.resolution
        k = 2j * np.pi * np.fft.rfftfreq(n, 1.0 / n)
        dudx = np.fft.irfft(k * np.fft.rfft(u, axis=-1), n=n, axis=-1)
        p = self.parameters
        energy = 0.5 * (u**2).mean(axis=-1)
        front = cap.steepest_front(dudx, x, t)
        out = {
            "nu": float(p["nu"]), "T": float(p["T"]), "u0_max": float(np.abs(u[0]).max()),
            "energy0": float(energy[0]), "energyT": float(energy[-1]), "re": float(np.sqrt(2 * energy[0]) / p["nu"]),
            "k0": cap.dominant_wavenumber(u[0], periodic=True), "kT": cap.dominant_wavenumber(u[-1], periodic=True),
            "front_x": front["x"], "front_t": front["t"], "front_steepness": front["steepness"],
            "slope0": float(-dudx[0].min()),
            "nu_energy": cap.fit_viscosity(t, energy, (dudx**2).mean(axis=-1)),
        }
        return {k: v for k, v in out.items() if v is not None}

    # -- checks ----------------------------------------------------------------------------------

    def _check_u0(self, u0) -> torch.Tensor:
        n = self.resolution
        if isinstance(u0, torch.Tensor):
            u = u0.to(torch.float64)
        else:
            u = torch.as_tensor(np.asarray(u0, dtype=np.float64))
        if u.ndim not in (1, 2) or u.shape[-1] != n:
            raise ValueError(f"burgers: u0 must have shape [{n}] or [B, {n}], got {list(u.shape)}")
        if not bool(torch.isfinite(u).all()):
            raise ValueError("burgers: u0 contains NaN or inf")
        return u

