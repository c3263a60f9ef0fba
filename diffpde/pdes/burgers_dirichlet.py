"""1D viscous Burgers with zero Dirichlet boundaries and a space-time forcing (WDNO's Burgers setting).

    u_t + u u_x = nu u_xx + f(t, x),   x in [0, 1],   u(t, 0) = u(t, 1) = 0,   t in [0, T].

Grid: vertex nodes ``x_i = i/(n-1)`` (both boundaries included, ``u = 0`` there) and stored times
``t_j = j T/(nt-1)``. Fields: ``u0`` (input ``[nx]``, the initial velocity), ``f`` (input
``[nt, nx]``, the forcing at the stored times) and ``u`` (output ``[nt, nx]``, dims ``("t", "x")``,
``u[0] = u0``). ``u0`` is stored although it is ``u[0]``: the family's inputs are ``(u0, f)``, as the
periodic family's input is ``u0``, so that conditional simulation ``p(u | u0, f)`` and control
(given ``u0``, find ``f``) name their given fields alike in both families.

Random inputs, the distribution of WDNO's generator (Hu et al., ICLR 2025; ``make_data_varying_f``
in ``burgers/ddpm_burgers/generate_burgers.py``), each sample from its own seed, with
``G(s; c, w) = exp(-(s - c)^2 / (2 w^2))``:

- ``u0 = a1 G(x; c1, w1) + a2 G(x; c2, w2)`` minus the straight line through its values at
  ``x = 0`` and ``x = 1``; ``c1 ~ U[0.2, 0.4]``, ``a1 ~ U[0, A]``, ``c2 ~ U[0.6, 0.8]``,
  ``a2 ~ U[-A, 0]``, ``w1, w2 ~ U[0.05, 0.15]``, ``A = u0_amplitude`` (2);
- ``f = sum_k b_k G(x; c_k, w_k) 2 G(t/T; tau_k, r_k)`` over ``K = forcing_terms`` (8) bumps with
  ``c_k, tau_k ~ U[0, 1]``, ``w_k, r_k ~ U[0.1, 0.4]`` (time in units of ``T``, WDNO's factor 2 on
  the time profile), ``b_0 ~ U[-B, B]`` and, for ``k >= 1``, ``b_k`` that value times a fair coin
  (0 or 1); ``B = forcing_amplitude`` (1.5).

What differs from WDNO (whose code is not copied): its ``u0`` does not vanish at the boundary
(up to 0.8 at ``x = 0``) and its solver sets the boundary to zero, a jump at ``t = 0+``; here the
line through the boundary values is subtracted (typically 1e-2, at most 0.8). WDNO stores interior
nodes ``(1 + 16 i)/1921`` of a 1921-interval grid, an asymmetric set; here the vertex grid with its
boundary nodes, on which ``x -> 1 - x`` is exact. WDNO integrates with explicit Euler
(``dt = 1/76800``) on 1920 interior points, its forcing piecewise constant on 1280 time
intervals, and subsamples 16 times; here the solver runs on the stored grid (next paragraph), with
the stored forcing interpolated linearly in time, so that a stored ``(u0, f, u)`` is exactly a
solver triple and re-simulating a stored or generated ``f`` is consistent with the data. WDNO
stores ``f`` at ``nt - 1`` times and pads a zero row; here ``f`` is stored at all ``nt`` times.
WDNO's sizes are the defaults: ``nu = 0.01``, ``T = 8``, ``nt = 81``, 120 points in x (here
resolution 121: spacing 1/120).

Solver: method of lines on the vertex grid, second order in space. Diffusion is the three-point
``nu (u_{i+1} - 2 u_i + u_{i-1}) / dx^2``; advection the skew-symmetric split
``((u^2)_{i+1} - (u^2)_{i-1} + u_i (u_{i+1} - u_{i-1})) / (6 dx)`` of ``(u^2/2)_x`` and ``u u_x``,
which conserves the discrete energy ``sum u_i^2`` (zero boundary values) and keeps the scheme
free of the nonlinear instability of the plain conservative form. With zero boundary values both
stencils equal periodic stencils on the odd extension of ``u`` to ``[0, 2)`` (``2(n-1)`` nodes),
where the discrete Laplacian is diagonal in Fourier modes (a discrete sine transform), eigenvalues
``-(4/dx^2) sin^2(pi k / (2(n-1)))``; ETDRK4 (:mod:`diffpde.pdes._spectral`) integrates diffusion
exactly and the rest explicitly, fourth order in time. Internal step: the Courant condition
``h max|u| <= cfl dx`` (``max|u|`` may grow by ``h max|f|`` per step), checked every 4 steps,
bounded by ``dt`` if given; each stored interval is split into equal steps. The default
``cfl = 1`` keeps ``h |lambda| <= 1`` for the advection stencil (ETDRK4 is stable on the imaginary
axis up to about 2.8) and a time error of 1e-6 relative at 121 points (1.5e-5 at 33), far below
the space error.

Accuracy (measured, WDNO's distribution, T = 8, 81 stored times, against the same scheme on 1921
points): relative L2 error 2.5e-3 at 121 points (max 3.5e-2 where fronts are ~0.01 wide, against
``max|u|`` 1.7), 6e-4 at 241, 1.5e-4 at 481: second order. At 32 points the fronts are not
resolved (6e-2). 1.2 s per sample at 121 x 81 on one core, 0.5 s at 32 x 32.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ._spectral import check_positive, check_times, cfl_step, integrate, time_derivative, time_interpolator, to_numpy
from . import captions as cap
from .base import PDE, Field, Grid, register
from .burgers import BURGERS_ENERGY, BURGERS_FRONT

Forcing = Callable[[float, np.ndarray], Any] | np.ndarray | torch.Tensor | None

RESIDUALS = ("rollout", "local")

# -- the odd extension and the difference operators ---------------------------------------------


def odd_extension(u: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` nodal values on ``[0, 1]`` -> ``[..., 2(n-1)]`` odd extension on ``[0, 2)``.

    The boundary values of ``u`` are replaced by 0 (the Dirichlet condition).
    """
    zero = torch.zeros_like(u[..., :1])
    inner = u[..., 1:-1]
    return torch.cat([zero, inner, zero, -inner.flip(-1)], -1)


def from_odd_extension(v_hat: torch.Tensor, n: int) -> torch.Tensor:
    """Nodal values ``[..., n]`` (boundary values exactly 0) of the odd extension's ``rfft`` ``v_hat``."""
    u = torch.fft.irfft(v_hat, n=2 * (n - 1))
    zero = torch.zeros_like(u[..., :1])
    return torch.cat([zero, u[..., 1 : n - 1], zero], -1)


def laplacian_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues of the three-point Laplacian with zero Dirichlet data on ``n`` nodes of ``[0, 1]``,
    indexed by the ``rfft`` modes of the odd extension (``2(n-1)`` points), float64 numpy."""
    dx, m = 1.0 / (n - 1), 2 * (n - 1)
    return -4.0 / dx**2 * np.sin(np.pi * np.arange(m // 2 + 1) / m) ** 2


def advection(u: torch.Tensor, dx: float, plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric ``u u_x`` at nodes ``u`` with neighbours ``plus`` (``i+1``) and ``minus`` (``i-1``)."""
    return (plus * plus - minus * minus + u * (plus - minus)) / (6 * dx)


def diffusion(u: torch.Tensor, dx: float, plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """Three-point ``u_xx``."""
    return (plus - 2 * u + minus) / dx**2


# -- solver ----------------------------------------------------------------------------------------


def solve_burgers_dirichlet(
    u0: torch.Tensor,
    t: np.ndarray,
    nu: float,
    forcing: Forcing = None,
    *,
    dt: float | None = None,
    cfl: float = 1.0,
    checkpoint_every: int = 0,
) -> torch.Tensor:
    """Solve viscous Burgers on [0, 1] with ``u = 0`` at both ends; torch, batched, differentiable.

    u0:      ``[..., n]`` initial values on ``x_i = i/(n-1)`` (float64; boundary values are taken as 0).
    t:       ``[nt]`` strictly increasing output times; the solution starts from ``u0`` at ``t[0]``.
    nu:      viscosity (> 0).
    forcing: ``None``; a callable ``f(t, x) -> [..., n]`` (``x`` the numpy grid); or an array
             ``[..., nt, n]`` of values at the times ``t``, interpolated linearly in time (also a
             tensor with gradients: the solution is differentiable in it). Boundary values do not
             enter (``u`` is fixed there).
    dt, cfl: internal step bound and Courant number (module docstring).
    checkpoint_every: recompute blocks of that many steps in the backward pass (saves memory).

    Returns ``[..., nt, n]`` with ``u[..., 0, :] = u0`` (boundary values set to 0).
    """
    force, fmax = _spectral_forcing(forcing, t, u0.shape[-1], u0)
    return _integrate(u0, t, nu, force, fmax, dt=dt, cfl=cfl, checkpoint_every=checkpoint_every)


def _integrate(u0: torch.Tensor, t: np.ndarray, nu: float, force, fmax, *, dt: float | None, cfl: float,
               checkpoint_every: int) -> torch.Tensor:
    """:func:`solve_burgers_dirichlet` with the forcing as ``force(time) -> rfft of its odd extension``
    (or ``None``) and ``fmax(time) -> bound of max|f|``."""
    n = u0.shape[-1]
    dx = 1.0 / (n - 1)
    lin = nu * laplacian_eigenvalues(n)

    def nonlinear(v: torch.Tensor, time: float) -> torch.Tensor:
        u = torch.fft.irfft(v, n=2 * (n - 1))
        out = torch.fft.rfft(-advection(u, dx, u.roll(-1, -1), u.roll(1, -1)))
        return out if force is None else out + force(time)

    def step_limit(v: torch.Tensor, time: float, steps: int) -> float:
        umax = float(torch.fft.irfft(v, n=2 * (n - 1)).abs().max())
        return cfl_step(umax, fmax(time), n - 1, cfl, steps)

    v = integrate(torch.fft.rfft(odd_extension(u0)), t, lin, nonlinear, step_limit, dt=dt,
                  checkpoint_every=checkpoint_every)
    first = odd_extension(u0)[..., :n]  # u0 with its boundary values set to 0
    u = torch.cat([first[None], from_odd_extension(v[1:], n)], 0)
    return u.movedim(0, -2)


def _spectral_forcing(forcing: Forcing, t: np.ndarray, n: int, u0: torch.Tensor):
    """``(time -> rfft of the odd-extended forcing or None, time -> bound of max|f|)``."""
    if forcing is None:
        return None, lambda time: 0.0
    x = np.linspace(0.0, 1.0, n)
    if callable(forcing):

        def values(time: float) -> torch.Tensor:
            f = torch.as_tensor(forcing(time, x), dtype=torch.float64, device=u0.device)
            if f.shape[-1:] != (n,):
                raise ValueError(f"burgers_dirichlet: forcing(t, x) must return [..., {n}], got {list(f.shape)}")
            return f

        return (lambda time: torch.fft.rfft(odd_extension(values(time)))), (
            lambda time: float(values(time)[..., 1:-1].abs().max()))
    f = torch.as_tensor(forcing, dtype=torch.float64, device=u0.device)
    if f.ndim < 2 or f.shape[-2:] != (len(t), n):
        raise ValueError(f"burgers_dirichlet: forcing array must have shape [..., {len(t)}, {n}] (times, x), "
                         f"got {list(f.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError("burgers_dirichlet: forcing contains NaN or inf")
    bound = float(f.detach()[..., 1:-1].abs().max())  # the linear interpolant stays below the nodal maximum
    spectral = torch.fft.rfft(odd_extension(f))  # interpolating in time commutes with the transform
    return time_interpolator(spectral.movedim(-2, 0), t, "burgers_dirichlet"), (lambda time: bound)


# -- the family ------------------------------------------------------------------------------------


def gaussian(s, centre, width):
    """``exp(-(s - centre)^2 / (2 width^2))``, broadcasting."""
    return np.exp(-0.5 * ((s - centre) / width) ** 2)


#: fronts are looked for this far from the walls (x in [0.05, 0.95])
FRONT_MARGIN = 0.05

CAPTIONS = cap.Vocabulary(
    openers=(
        cap.Clause(("forced viscous Burgers flow on [0, 1] with zero boundary values",
                    "a Burgers solution with Dirichlet boundaries and space-time forcing",
                    "the forced 1D Burgers equation with u = 0 at both ends",
                    "a forced Burgers trajectory between fixed walls"),),
    ),
    clauses=(
        cap.viscosity(),
        cap.reynolds(),
        cap.final_time(),
        cap.Clause(("an initial hump of height {u0_max} at x = {u0_max_x} and a dip to {u0_min} at x = {u0_min_x}",
                    "initial velocity between {u0_min} (at x = {u0_min_x}) and {u0_max} (at x = {u0_max_x})"),
                   {"u0_max": cap.Number("float", 2), "u0_min": cap.Number("float", 2),
                    "u0_max_x": cap.Number("coord", 2), "u0_min_x": cap.Number("coord", 2)}),
        cap.Clause(("forcing up to {forcing_amp} in magnitude, strongest at x = {forcing_x}, t = {forcing_t}",
                    "a {forcing_sign} forcing peak of {forcing_amp} at x = {forcing_x} and time {forcing_t}",
                    "forcing amplitude {forcing_amp} peaking at t = {forcing_t}, x = {forcing_x}"),
                   {"forcing_amp": cap.Number("float", 2), "forcing_x": cap.Number("coord", 2),
                    "forcing_t": cap.Number("float", 2)},
                   {"forcing_sign": cap.signed("forcing_sign", "positive", "negative")}),
        cap.Clause(("forcing at wavenumber {forcing_k}", "a forcing length scale set by wavenumber {forcing_k}"),
                   {"forcing_k": cap.Number("float", 2)}),
        BURGERS_ENERGY,
        BURGERS_FRONT,
    ),
    recoverable={"nu": "nu_energy"},
)


@register
class BurgersDirichlet(PDE):
    """Forced viscous Burgers on [0, 1] with zero Dirichlet data: ``(u0, f) -> u(t, x)`` (module docstring)."""

    name = "burgers_dirichlet"
    defaults = {
        "nu": 0.01,                # viscosity
        "T": 8.0,                  # final time
        "nt": 81,                  # stored times t_j = j T/(nt-1)
        "u0_amplitude": 2.0,       # A: the two bumps of u0 have amplitudes in [0, A] and [-A, 0]
        "forcing_amplitude": 1.5,  # B: forcing bump amplitudes in [-B, B]
        "forcing_terms": 8,        # K: forcing bumps (the first always on, the others on with probability 1/2)
        "dt": None,                # optional bound of the internal step
        "cfl": 1.0,                # internal step h <= cfl dx / max|u|
        "residual": "rollout",     # "rollout" (one solver step per stored interval) or "local" (finite differences)
        "rollout_cfl": 1.0,        # Courant number of the rollout residual
        "checkpoint_every": 0,     # gradient-checkpointed block length of that rollout (0: store everything)
    }
    min_resolution = 8
    caption_vocabulary = CAPTIONS
    # x -> 1 - x with (u0, f, u) -> -(u0, f, u): the equation, the boundary condition and the
    # stencils are invariant, and so is the input distribution (it swaps the two u0 bumps, whose
    # ranges are mirror images, and maps each forcing bump to one of the same law).
    symmetries = ("flip_x",)
    odd_fields = {"flip_x": ("u0", "f", "u")}

    def __init__(self, resolution: int, **parameters: Any) -> None:
        super().__init__(resolution, **parameters)
        p = self.parameters
        check_positive(self.name, p, "nu", "T", "cfl", "rollout_cfl", "u0_amplitude")
        if p["dt"] is not None:
            check_positive(self.name, p, "dt")
        for key, low in (("nt", 3), ("forcing_terms", 0), ("checkpoint_every", 0)):
            value = p[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{self.name}: {key} must be an integer >= {low}, got {value!r}")
        amplitude = p["forcing_amplitude"]
        if isinstance(amplitude, bool) or not isinstance(amplitude, (int, float, np.number)) or not amplitude >= 0 \
                or not np.isfinite(amplitude):
            raise ValueError(f"{self.name}: parameter forcing_amplitude must be a number >= 0, got {amplitude!r}")
        if p["residual"] not in RESIDUALS:
            raise ValueError(f"{self.name}: residual must be one of {', '.join(RESIDUALS)}, got {p['residual']!r}")

    @property
    def nt(self) -> int:
        return int(self.parameters["nt"])

    @property
    def dx(self) -> float:
        return 1.0 / (self.resolution - 1)

    @property
    def dt_stored(self) -> float:
        """Spacing of the stored times, ``T/(nt-1)``."""
        return self.parameters["T"] / (self.nt - 1)

    @property
    def fields(self) -> tuple[Field, ...]:
        n, nt = self.resolution, self.nt
        return (
            Field("u0", "input", (n,), ("x",), "initial velocity u(0, x), zero at x = 0 and 1"),
            Field("f", "input", (nt, n), ("t", "x"), "forcing f(t, x) at the stored times"),
            Field("u", "output", (nt, n), ("t", "x"), "velocity trajectory u(t, x), u[0] = u0, zero at x = 0 and 1"),
        )

    @property
    def grid(self) -> Grid:
        return Grid("vertex", {"x": np.linspace(0.0, 1.0, self.resolution),
                               "t": np.linspace(0.0, self.parameters["T"], self.nt)})

    # -- random inputs ---------------------------------------------------------------------------

    def bumps(self, seed: int) -> dict[str, np.ndarray]:
        """The random parameters of one instance (module docstring): ``u0`` rows ``(a, c, w)`` ``[2, 3]``,
        forcing rows ``(b, c, w, tau, r)`` ``[K, 5]`` (``c, w`` in x; ``tau, r`` in units of ``T``)."""
        p = self.parameters
        rng = np.random.default_rng(seed)
        big = p["u0_amplitude"]
        u0 = np.array([[rng.uniform(0.0, big), rng.uniform(0.2, 0.4), rng.uniform(0.05, 0.15)],
                       [rng.uniform(-big, 0.0), rng.uniform(0.6, 0.8), rng.uniform(0.05, 0.15)]])
        forcing = np.empty((p["forcing_terms"], 5))
        for k in range(p["forcing_terms"]):
            b = rng.uniform(-p["forcing_amplitude"], p["forcing_amplitude"])
            on = 1.0 if k == 0 else float(rng.integers(2))
            forcing[k] = (b * on, rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0, 1), rng.uniform(0.1, 0.4))
        return {"u0": u0, "forcing": forcing}

    def initial_condition(self, bumps: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``u0(x)`` of the ``u0`` bump rows ``(a, c, w)`` (zero at ``x = 0, 1``)."""
        def g(s):
            return sum(a * gaussian(s, c, w) for a, c, w in bumps)

        return g(x) - (g(0.0) * (1 - x) + g(1.0) * x)

    def forcing_field(self, bumps: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``f(t, x)`` of the forcing bump rows ``(b, c, w, tau, r)``, broadcasting ``t`` against ``x``."""
        s = np.asarray(t, dtype=np.float64) / self.parameters["T"]
        out = np.zeros(np.broadcast_shapes(np.shape(s), np.shape(x)))
        for b, c, w, tau, r in bumps:
            if b != 0.0:
                out = out + b * gaussian(x, c, w) * 2.0 * gaussian(s, tau, r)
        return out

    def sample_inputs(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """``{"u0": [n, nx], "f": [n, nt, nx]}``, sample ``i`` from seed ``seed + i``."""
        x, t = self.grid.coords["x"], self.grid.coords["t"]
        u0 = np.zeros((n, self.resolution))
        f = np.zeros((n, self.nt, self.resolution))
        for i in range(n):
            bumps = self.bumps(seed + i)
            u0[i] = self.initial_condition(bumps["u0"], x)
            f[i] = self.forcing_field(bumps["forcing"], t[:, None], x[None, :])
        return {"u0": u0, "f": f}

    # -- work ------------------------------------------------------------------------------------

    def solve(self, u0, forcing: Forcing = None, t=None):
        """Trajectory ``u [nt, nx]`` (``[B, nt, nx]`` for ``u0 [B, nx]``) at times ``t``.

        ``t`` defaults to the stored times; ``u[0] = u0`` (boundary values 0). ``forcing``: ``None``,
        a callable ``f(t, x)`` (``x`` the grid), or an array ``[nt, nx]`` / ``[B, nt, nx]`` on the
        times ``t``, interpolated linearly in time. A numpy ``u0`` gives a float64 numpy result; a
        torch ``u0`` a float64 tensor, differentiable in ``u0`` and in a forcing tensor.
        """
        as_numpy = not isinstance(u0, torch.Tensor)
        u0t = self._check_u0(u0)
        tt = check_times(self.grid.coords["t"] if t is None else t, self.name)
        p = self.parameters
        grad = not as_numpy and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            u = solve_burgers_dirichlet(u0t, tt, p["nu"], forcing, dt=p["dt"], cfl=p["cfl"],
                                        checkpoint_every=p["checkpoint_every"] if grad else 0)
        return u.detach().cpu().numpy() if as_numpy else u

    def generate(self, seed: int) -> dict[str, np.ndarray]:
        """``{"u0": [nx], "f": [nt, nx], "u": [nt, nx]}`` of one instance, float64; ``u`` solves with the
        stored ``f`` (interpolated linearly in time), so ``solve(u0, f)`` gives ``u`` again."""
        inputs = self.sample_inputs(1, seed)
        u0, f = inputs["u0"][0], inputs["f"][0]
        return {"u0": u0, "f": f, "u": self.solve(u0, forcing=f)}

    def residual(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Residual ``[B, nt, nx]`` of a trajectory ``fields["u"]`` under the forcing ``fields["f"]``
        (both ``[B, nt, nx]``; ``u0`` is not read), in velocity per time; which one is the parameter
        ``residual``:

        ``"rollout"`` (default): row ``j >= 1`` is ``(u_j - S(u_{j-1}, f)) / dt``, where ``S`` is the
        solver (ETDRK4 at Courant number ``rollout_cfl``) over one stored interval ``dt = T/(nt-1)``
        from ``u_{j-1}`` under ``f`` interpolated linearly between ``t_{j-1}`` and ``t_j``; all
        intervals are rolled out at once. It tends to ``u_t + u u_x - nu u_xx - f`` as ``dt -> 0``,
        and it vanishes on solver data at any time spacing; the floor is the time error of the
        data's steps and the rollout's: rms 8e-6 of rms ``u_t`` at 121 x 81 (default data, also
        stored in float32), 9e-5 at 32 x 32. Cost: one interval's solve and its backward pass per
        call (0.08 s for two samples at 121 x 81 on one core). Works under ``torch.func.vjp``,
        ``jvp`` and ``grad``; not under ``vmap`` (the step plan reads the values).

        ``"local"``: ``u_t + u u_x - nu u_xx - f`` with the solver's stencils in x (spacing
        ``1/(n-1)``) and the second-order difference in t (one-sided at both ends). Its floor on
        solver data is the time difference, ``O(dt^2 u_ttt)``: fronts ~0.01 wide that move a few
        cells per stored step are not resolved at WDNO's ``T = 8``, ``nt = 81`` (floor 12 % of rms
        ``u_t``), 1.3 % at ``nt = 321``, 0.08 % at ``nt = 1281`` (121 points). Cheap, local, and
        works under ``vmap`` too.

        Row 0 of ``"rollout"`` is zero inside; boundary nodes carry the boundary condition as
        ``u / dt`` in both (velocity per time, the scale of ``u_t``). Computed in float64, returned
        in the dtype of ``u``.
        """
        u_in, f_in = self.check_batch(fields, ("u", "f"))
        u, f = u_in.to(torch.float64), f_in.to(torch.float64)
        p, dt = self.parameters, self.dt_stored
        if p["residual"] == "local":
            r = self._local_residual(u, f)
        else:
            force, fmax = _interval_forcing(f, dt)
            end = _integrate(u[:, :-1], np.array([0.0, dt]), p["nu"], force, fmax, dt=p["dt"], cfl=p["rollout_cfl"],
                             checkpoint_every=p["checkpoint_every"])[..., -1, :]
            inner = (u[:, 1:, 1:-1] - end[..., 1:-1]) / dt
            r = torch.cat([torch.zeros_like(inner[:, :1]), inner], 1)
        r = torch.cat([u[..., :1] / dt, r, u[..., -1:] / dt], -1)
        return r.to(u_in.dtype)

    def _local_residual(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``u_t + u u_x - nu u_xx - f`` at interior nodes, ``[B, nt, nx-2]``."""
        c, plus, minus = u[..., 1:-1], u[..., 2:], u[..., :-2]
        u_t = time_derivative(u[..., 1:-1], self.dt_stored, dim=1)
        return u_t + advection(c, self.dx, plus, minus) - self.parameters["nu"] * diffusion(c, self.dx, plus, minus) \
            - f[..., 1:-1]

    def describe(self, fields: Mapping[str, np.ndarray | torch.Tensor] | None = None) -> str:
        p = self.parameters
        text = (
            f"1D viscous Burgers u_t + u u_x = {p['nu']:g} u_xx + f(t,x) on [0,1], u = 0 at x = 0 and 1, "
            f"{self.resolution} points, t in [0,{p['T']:g}] at {self.nt} times; u0 two Gaussian bumps "
            f"(amplitudes up to {p['u0_amplitude']:g}), f up to {p['forcing_terms']} space-time Gaussian bumps "
            f"(amplitudes up to {p['forcing_amplitude']:g})"
        )
        if fields is not None:
            parts = []
            for name, label, row in (("u0", "max|u0|", None), ("f", "max|f|", None), ("u", "max|u(T)|", -1)):
                if name in fields:
                    value = to_numpy(fields[name])
                    value = value[..., row, :] if row is not None else value
                    parts.append(f"{label} = {float(np.abs(value).max()):.3g}")
            if parts:
                text += "; " + ", ".join(parts)
        return text

    def features(self, fields: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """The numbers captions state (:mod:`diffpde.pdes.captions`) of one instance ``{"f", "u"}``
        (``u[0]`` serves as ``u0``).

        Parameters: ``nu``, ``T``. From the fields: ``u0_max``/``u0_max_x`` and ``u0_min``/``u0_min_x``
        (the highest and lowest initial velocity and where), ``energy0``/``energyT`` (``mean(u^2) / 2``
        over the nodes at t = 0 and T), ``re`` (``U L / nu``, ``U`` the rms of ``u0``, ``L = 1``), the
        forcing's strongest point (``forcing_amp`` = max ``|f|`` at interior nodes, ``forcing_x``,
        ``forcing_t``, ``forcing_sign``) and its dominant wavenumber along x (``forcing_k``, time-averaged
        power, type-I DCT), the steepest front away from the walls (``front_x``, ``front_t``,
        ``front_steepness`` = max ``-u_x`` over ``FRONT_MARGIN <= x <= 1 - FRONT_MARGIN``, second-order
        differences; the wall layers, ~nu/U thin, are left out; ``slope0`` the same at t = 0), and ``nu_energy``: the
        viscosity that fits ``dE/dt = -nu int u_x^2 + int u f`` (``E = int u^2 / 2``, the solver's
        differences) over the stored times, from the fields alone.
        """
        u, f = self.one_sample(fields, "u"), self.one_sample(fields, "f")
        x, t = self.grid.coords["x"], self.grid.coords["t"]
        p, dx = self.parameters, self.dx
        dudx = np.gradient(u, dx, axis=-1, edge_order=2)
        inner = np.abs(f[:, 1:-1])
        j, i = np.unravel_index(int(np.argmax(inner)), inner.shape)
        inside = (x >= FRONT_MARGIN) & (x <= 1 - FRONT_MARGIN)  # wall layers are not fronts
        front = cap.steepest_front(dudx[:, inside], x[inside], t)
        energy = 0.5 * (u**2).mean(axis=-1)
        # the solver's energy E = dx sum u^2 / 2, dissipation dx sum (forward differences)^2, work dx sum u f
        e_solver = 0.5 * dx * (u**2).sum(axis=-1)
        dissipation = (np.diff(u, axis=-1) ** 2).sum(axis=-1) / dx
        work = dx * (u * f)[:, 1:-1].sum(axis=-1)
        out = {
            "nu": float(p["nu"]), "T": float(p["T"]),
            "u0_max": float(u[0].max()), "u0_max_x": float(x[np.argmax(u[0])]),
            "u0_min": float(u[0].min()), "u0_min_x": float(x[np.argmin(u[0])]),
            "energy0": float(energy[0]), "energyT": float(energy[-1]), "re": float(np.sqrt(2 * energy[0]) / p["nu"]),
            "forcing_amp": float(inner[j, i]), "forcing_x": float(x[1 + i]), "forcing_t": float(t[j]),
            "forcing_sign": 1.0 if f[j, 1 + i] >= 0 else -1.0,
            "forcing_k": cap.dominant_wavenumber(f, (-1,), periodic=False),
            "front_x": front["x"], "front_t": front["t"], "front_steepness": front["steepness"],
            "slope0": float(-dudx[0, inside].min()),
            "nu_energy": cap.fit_viscosity(t, e_solver, dissipation, work),
        }
        if out["forcing_amp"] == 0.0:
            for key in ("forcing_amp", "forcing_x", "forcing_t", "forcing_sign"):
                del out[key]
        return {k: v for k, v in out.items() if v is not None}

    # -- checks ----------------------------------------------------------------------------------

    def _check_u0(self, u0) -> torch.Tensor:
        n = self.resolution
        u = u0.to(torch.float64) if isinstance(u0, torch.Tensor) else torch.as_tensor(np.asarray(u0, dtype=np.float64))
        if u.ndim not in (1, 2) or u.shape[-1] != n:
            raise ValueError(f"{self.name}: u0 must have shape [{n}] or [B, {n}], got {list(u.shape)}")
        if not bool(torch.isfinite(u).all()):
            raise ValueError(f"{self.name}: u0 contains NaN or inf")
        return u


def _interval_forcing(f: torch.Tensor, dt: float):
    """The forcing of every stored interval at once, as :func:`_integrate` takes it: ``tau in [0, dt]``
    -> the transform of ``f[:, j] + (f[:, j+1] - f[:, j]) tau / dt`` for all ``j`` (``[B, nt-1, ...]``)."""
    spectral = torch.fft.rfft(odd_extension(f))
    start, slope = spectral[:, :-1], (spectral[:, 1:] - spectral[:, :-1]) / dt
    bound = float(f.detach()[..., 1:-1].abs().max())
    return (lambda tau: start + slope * tau), (lambda tau: bound)
