"""Fourier pseudo-spectral tools on the periodic unit domain and an ETDRK4 time integrator, in torch.

Everything here works on float64/complex128 tensors, batched over leading axes and differentiable
(autograd flows through the integrator unless it runs under ``torch.no_grad``).

Conventions: the grid is ``x_i = i/n`` on [0, 1); the state of an evolution equation is kept as
``rfft``/``rfftn`` coefficients over the last ``dim`` axes; the angular wavenumber of FFT index
``k`` is ``2 pi k`` (true period 1).

ETDRK4 is the fourth-order exponential Runge-Kutta scheme of Cox and Matthews (2002) for
``v' = L v + N(v, t)`` with diagonal real ``L``; its phi-functions are evaluated by averaging over
a circle in the complex plane (Kassam and Trefethen, 2005), which avoids the cancellation of
the direct formulas at small ``h L``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

# -- wavenumbers, dealiasing, derivatives ---------------------------------------------------------


def angular_wavenumbers(n: int, *, real: bool) -> np.ndarray:
    """Angular wavenumbers ``2 pi k`` of an axis of ``n`` points on [0, 1) as float64 numpy (``rfft`` half if ``real``)."""
    k = np.fft.rfftfreq(n, d=1.0 / n) if real else np.fft.fftfreq(n, d=1.0 / n)
    return 2 * np.pi * k


def wavenumbers(n: int, *, real: bool) -> torch.Tensor:
    """:func:`angular_wavenumbers` as a float64 tensor."""
    return torch.as_tensor(angular_wavenumbers(n, real=real), dtype=torch.float64)


def laplacian_symbol(shape: tuple[int, ...]) -> np.ndarray:
    """``|k|^2``, the symbol of ``-Laplacian``, on the ``rfftn`` grid of a periodic field of ``shape`` (numpy)."""
    axes = [angular_wavenumbers(n, real=i == len(shape) - 1) for i, n in enumerate(shape)]
    return sum(k**2 for k in np.meshgrid(*axes, indexing="ij"))


def dealias_mask(n: int, *, real: bool) -> torch.Tensor:
    """Orszag's 2/3 rule on one axis: keep FFT modes with ``|k| < n/3``, as 0/1 float64."""
    k = np.fft.rfftfreq(n, d=1.0 / n) if real else np.fft.fftfreq(n, d=1.0 / n)
    return torch.as_tensor(np.abs(k) < n / 3, dtype=torch.float64)


def wavenumbers_2d(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Wavenumbers ``(k0, k1)`` of axes -2 and -1 on the ``rfft2`` grid ``[n, n//2 + 1]`` (broadcastable)."""
    return wavenumbers(n, real=False)[:, None], wavenumbers(n, real=True)[None, :]


def dealias_mask_2d(n: int) -> torch.Tensor:
    """2/3 rule applied per axis on the ``rfft2`` grid ``[n, n//2 + 1]``."""
    return dealias_mask(n, real=False)[:, None] * dealias_mask(n, real=True)[None, :]


def spectral_diff(u: torch.Tensor, order: int = 1, dim: int = -1) -> torch.Tensor:
    """``d^order u / dx^order`` along axis ``dim`` of a real periodic field on [0, 1).

    For even ``n`` the Nyquist mode of odd derivatives is set to zero (its derivative is not real).
    """
    n = u.shape[dim]
    k = wavenumbers(n, real=True).to(u.device)
    factor = (1j * k) ** order
    if order % 2 == 1 and n % 2 == 0:
        factor[-1] = 0.0
    shape = [1] * u.ndim
    shape[dim] = k.numel()
    u_hat = torch.fft.rfft(u, dim=dim)
    return torch.fft.irfft(u_hat * factor.reshape(shape), n=n, dim=dim)


def time_derivative(u: torch.Tensor, dt: float, dim: int = 1) -> torch.Tensor:
    """Second-order finite-difference ``du/dt`` along ``dim`` on a uniform grid of step ``dt``.

    Central differences inside, second-order one-sided differences at both ends, so the result has
    the shape of ``u`` (at least 3 time points). Truncation error ``dt^2/6 u_ttt`` inside and
    ``-dt^2/3 u_ttt`` at the ends.
    """
    nt = u.shape[dim]
    if nt < 3:
        raise ValueError(f"time derivative needs at least 3 time points, got {nt}")
    un = u.movedim(dim, 0)
    inner = (un[2:] - un[:-2]) / (2 * dt)
    first = (-3 * un[0] + 4 * un[1] - un[2]) / (2 * dt)
    last = (3 * un[-1] - 4 * un[-2] + un[-3]) / (2 * dt)
    return torch.cat([first[None], inner, last[None]], 0).movedim(0, dim)


# -- ETDRK4 ----------------------------------------------------------------------------------------


def phi_functions(z: np.ndarray, n_contour: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``phi_1, phi_2, phi_3`` of a real array ``z`` by the contour mean of Kassam and Trefethen.

    ``phi_1(z) = (e^z - 1)/z``, ``phi_2(z) = (e^z - 1 - z)/z^2``, ``phi_3(z) = (e^z - 1 - z - z^2/2)/z^3``,
    each averaged over ``z + exp(i theta_j)`` at ``n_contour`` points on the upper half of the unit
    circle; for real ``z`` the real part of that mean is the function value (the trapezoid rule on
    a circle, spectrally accurate). numpy: torch's complex ``exp`` is slow on CPU.
    """
    theta = np.pi * (np.arange(n_contour) + 0.5) / n_contour
    zc = np.asarray(z, dtype=np.float64)[..., None] + np.exp(1j * theta)
    ez = np.exp(zc)
    phi1 = ((ez - 1) / zc).mean(-1).real
    phi2 = ((ez - 1 - zc) / zc**2).mean(-1).real
    phi3 = ((ez - 1 - zc - zc**2 / 2) / zc**3).mean(-1).real
    return phi1, phi2, phi3


class ETDRK4:
    """Coefficients of one ETDRK4 step of size ``h`` for the diagonal real linear operator ``lin``.

    ``lin`` is a numpy array (a constant of the equation, never differentiated): the coefficients
    are computed in numpy and moved to ``device`` once, so that no tensor is read back to numpy
    while the step runs, as under ``torch.func`` transforms (where every tensor created inside
    the transformed function is wrapped and has no storage numpy could read).
    """

    def __init__(self, lin: np.ndarray, h: float, device: torch.device | str = "cpu"):
        self.h = h
        z = np.asarray(lin, dtype=np.float64) * h
        p1, p2, p3 = phi_functions(z)
        p1_half, _, _ = phi_functions(z / 2)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float64, device=device)

        self.e = tensor(np.exp(z))
        self.e_half = tensor(np.exp(z / 2))
        self.q = tensor(h / 2 * p1_half)  # half-step exponential Euler weight
        self.f1 = tensor(h * (p1 - 3 * p2 + 4 * p3))
        self.f2 = tensor(h * (p2 - 2 * p3))
        self.f3 = tensor(h * (4 * p3 - p2))

    def step(self, v: torch.Tensor, t: float, nonlinear: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
        """Advance ``v' = lin v + nonlinear(v, t)`` from ``t`` to ``t + h``."""
        h = self.h
        nv = nonlinear(v, t)
        a = self.e_half * v + self.q * nv
        na = nonlinear(a, t + h / 2)
        b = self.e_half * v + self.q * na
        nb = nonlinear(b, t + h / 2)
        c = self.e_half * a + self.q * (2 * nb - nv)
        nc = nonlinear(c, t + h)
        return self.e * v + self.f1 * nv + 2 * self.f2 * (na + nb) + self.f3 * nc


def integrate(
    v0: torch.Tensor,
    times: np.ndarray,
    lin: np.ndarray,
    nonlinear: Callable[[torch.Tensor, float], torch.Tensor],
    step_limit: Callable[[torch.Tensor, float, int], float],
    *,
    dt: float | None = None,
    replan_every: int = 4,
    checkpoint_every: int = 0,
) -> torch.Tensor:
    """Integrate ``v' = lin v + nonlinear(v, t)`` with ETDRK4 and return the states at ``times``.

    v0:          state at ``times[0]``, any shape broadcasting with ``lin`` (complex spectral coefficients).
    lin:         the diagonal real linear operator, a float64 numpy array (see :class:`ETDRK4`).
    times:       strictly increasing output times, float64, ``[nt]``.
    step_limit:  ``(v, t, k) ->`` largest step allowed for the next ``k`` steps from state ``v`` at
                 time ``t`` (the CFL limit, ``inf`` if none; see :func:`cfl_step`), evaluated without
                 gradients.
    dt:          optional upper bound of the internal step.
    replan_every: steps between checks of ``step_limit``.
    checkpoint_every: if > 0 and gradients are on, recompute each block of that many steps in the
                 backward pass (``torch.utils.checkpoint``) instead of storing its stages; ignored
                 under ``torch.func`` transforms, which do not support it (all stages are stored).

    Works under ``torch.func.vjp``, ``jvp`` and ``grad`` (the step plan depends on the state's
    values, so not under ``vmap``).

    Step plan: each output interval ``D`` is split into ``m`` equal steps, ``m`` the smallest with
    ``D/m <= min(limit, dt)``; every ``replan_every`` steps the limit is checked again and ``m`` is
    doubled (the steps halved) until it holds. Steps never grow inside an interval, so only a few
    step sizes occur and their ETDRK4 coefficients are cached.

    Returns ``[nt, *v0.shape]`` (``times[0]`` gives ``v0``). Raises ``FloatingPointError`` if the
    state becomes non-finite.
    """
    cache: dict[tuple[float, int], ETDRK4] = {}

    def scheme(span: float, m: int) -> ETDRK4:
        key = (float(f"{span:.12e}"), m)  # equal output intervals differ in the last bits
        if key not in cache:
            cache[key] = ETDRK4(lin, span / m, v0.device)
        return cache[key]

    def limit(v: torch.Tensor, t: float) -> float:
        with torch.no_grad():
            h = min(step_limit(v, t, replan_every), dt if dt is not None else math.inf)
        if not h > 0:
            raise FloatingPointError(f"step limit {h} at t = {t:.6g} is not positive (non-finite state?)")
        return h

    def block(v: torch.Tensor, t: float, k: int, s: ETDRK4) -> torch.Tensor:
        for i in range(k):
            v = s.step(v, t + i * s.h, nonlinear)
        return v

    # Saved-tensor hooks (which checkpointing uses) do not work under torch.func's vjp/grad.
    use_checkpoint = checkpoint_every > 0 and torch.is_grad_enabled() and not func_transforms_active()
    out = [v0]
    v = v0
    for j in range(len(times) - 1):
        t0, span = float(times[j]), float(times[j + 1] - times[j])
        m = max(1, math.ceil(span / limit(v, t0) * (1 - 1e-12)))
        i = 0  # steps done; t = t0 + i span/m
        while i < m:
            s = scheme(span, m)
            k = min(replan_every, m - i)
            t = t0 + i * s.h
            if use_checkpoint:
                for done in range(0, k, checkpoint_every):
                    kk = min(checkpoint_every, k - done)
                    v = torch.utils.checkpoint.checkpoint(block, v, t + done * s.h, kk, s, use_reentrant=False)
            else:
                v = block(v, t, k, s)
            i += k
            if not bool(torch.isfinite(torch.view_as_real(v)).all()):
                raise FloatingPointError(f"solution became non-finite near t = {t0 + i * s.h:.6g}")
            if i < m:
                h_max = limit(v, t0 + i * s.h)
                while span / m > h_max * (1 + 1e-12):
                    m, i = 2 * m, 2 * i
        out.append(v)
    return torch.stack(out, 0)


def func_transforms_active() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (vjp, jvp, grad, vmap)."""
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(probe()) if probe is not None else False


def cfl_step(speed: float, forcing_speed: float, n: int, cfl: float, steps: int = 1) -> float:
    """Largest ``h`` with ``h (speed + steps h forcing_speed) <= cfl / n``: the Courant condition on a
    grid of ``n`` points per unit length for the next ``steps`` steps, during which the forcing can
    raise the speed by ``steps h forcing_speed`` (so that a fluid at rest takes no huge first
    step). ``inf`` if both speeds are 0."""
    a, b = forcing_speed * steps, speed
    if a <= 0:
        return cfl / (n * b) if b > 0 else math.inf
    c = cfl / n
    return 2 * c / (b + math.sqrt(b * b + 4 * a * c))  # root of a h^2 + b h - c, stable form


def check_times(t, name: str) -> np.ndarray:
    """Return ``t`` as a float64 1D array of at least 2 finite, strictly increasing times, or raise."""
    arr = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name}: times t must be a 1D array of at least 2 values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: times t contain NaN or inf")
    if not (np.diff(arr) > 0).all():
        raise ValueError(f"{name}: times t must be strictly increasing")
    return arr


def time_interpolator(values: torch.Tensor, times: np.ndarray, name: str) -> Callable[[float], torch.Tensor]:
    """Piecewise-linear interpolation in time of ``values [nt, ...]`` given at ``times [nt]``.

    Returns ``at(t) -> values(t)``; times outside ``[times[0], times[-1]]`` raise.
    """
    tt = np.asarray(times, dtype=np.float64)

    def at(t: float) -> torch.Tensor:
        if t < tt[0] - 1e-12 or t > tt[-1] + 1e-12:
            raise ValueError(f"{name}: forcing requested at t = {t}, outside [{tt[0]}, {tt[-1]}]")
        j = int(np.clip(np.searchsorted(tt, t, side="right") - 1, 0, len(tt) - 2))
        w = (t - tt[j]) / (tt[j + 1] - tt[j])
        return values[j] * (1 - w) + values[j + 1] * w

    return at


def check_positive(family: str, parameters, *names: str) -> None:
    """Raise a clear error unless each of ``parameters[name]`` is a finite positive number."""
    for name in names:
        value = parameters[name]
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if not ok or not np.isfinite(value) or value <= 0:
            raise ValueError(f"{family}: parameter {name} must be a positive number, got {value!r}")


def to_numpy(value) -> np.ndarray:
    """A float64 numpy copy of an array or (possibly grad-tracking) tensor."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    return np.asarray(value, dtype=np.float64)
