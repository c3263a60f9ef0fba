"""Truth cases: each family's classical solver against an exact solution.

One function per case returns ``(numerical, exact)`` on the family's grid; :func:`truth_error`
reduces a case to one number, the **relative L2 error** ``||numerical - exact|| / ||exact||``
over every stored grid point (and every stored time, for the time-dependent families).

- darcy: manufactured ``u = g(x) sin(pi y)``, ``g = x (1 - x) e^x`` (zero on the boundary of
  ``[0, 1]^2``), smooth permeability ``a = 1 + 0.5 sin(2 pi x) cos(pi y)`` and the source
  ``f = -div(a grad u)`` computed by hand; second order in ``h``.
- poisson: the same ``u`` with the source ``laplacian(u)``; second order.
- helmholtz: the same ``u`` with the source ``laplacian(u) + k^2 u`` (``k`` = 1, the default); second order.
- burgers: the Cole-Hopf solution ``u = -2 nu phi_x / phi``, ``phi`` a positive trigonometric
  polynomial decaying under ``phi_t = nu phi_xx`` (nu 0.05, 11 stored times on [0, 1]); spectral in
  space, so only the time error (~1e-8) is left.
- burgers_dirichlet: manufactured ``u = cos(2t) sin(pi x) + 2 sin(3t) x (1 - x) e^x`` on [0, 1]
  (zero at both ends, ``u_xx`` not zero at ``x = 1``), its forcing ``u_t + u u_x - nu u_xx`` by
  hand (nu 0.02, 5 stored times on [0, 1]); second order in ``h``. The unforced exact solution
  :func:`cole_hopf_dirichlet` (second order too) is in the tests.
- navier_stokes: the Taylor-Green vortex ``w = 5 cos(2 pi m x) cos(2 pi m y) exp(-2 nu (2 pi m)^2 t)``
  (m 1, nu 0.01, forcing off, 5 stored times on [0, 1]): its advection vanishes, so the exact
  viscous decay is reproduced to round-off at every resolution.

    truth_error("darcy", 64)   # relative L2 error of the 64 x 64 solve
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import get

PI = np.pi

# -- elliptic families: manufactured solution on [0, 1]^2, zero Dirichlet data ------------------


def g(x):
    """``g = x (1 - x) e^x``, zero at 0 and 1."""
    return x * (1 - x) * np.exp(x)


def dg(x):
    return (1 - x - x**2) * np.exp(x)


def d2g(x):
    return -(x**2 + 3 * x) * np.exp(x)


def u_exact(x, y):
    """The manufactured solution ``u = g(x) sin(pi y)``."""
    return g(x) * np.sin(PI * y)


def laplacian_u(x, y):
    return (d2g(x) - PI**2 * g(x)) * np.sin(PI * y)


def a_exact(x, y):
    """Smooth variable permeability for Darcy, >= 0.5."""
    return 1 + 0.5 * np.sin(2 * PI * x) * np.cos(PI * y)


def darcy_source(x, y):
    """f = -div(a grad u) = -(a_x u_x + a_y u_y + a laplacian(u))."""
    a_x = PI * np.cos(2 * PI * x) * np.cos(PI * y)
    a_y = -0.5 * PI * np.sin(2 * PI * x) * np.sin(PI * y)
    u_x = dg(x) * np.sin(PI * y)
    u_y = PI * g(x) * np.cos(PI * y)
    return -(a_x * u_x + a_y * u_y + a_exact(x, y) * laplacian_u(x, y))


def nodes(n):
    """The ``n x n`` vertex grid of ``[0, 1]^2``: ``X[i, j] = x_j``, ``Y[i, j] = y_i``."""
    x = np.linspace(0, 1, n)
    return np.meshgrid(x, x, indexing="xy")


def darcy_manufactured(n: int):
    """Darcy ``-div(a grad u) = f`` with the smooth ``a_exact`` and ``f = darcy_source``: ``(u, u_exact)``."""
    X, Y = nodes(n)
    return get("darcy", n).solve(a_exact(X, Y), f=darcy_source), u_exact(X, Y)


def poisson_manufactured(n: int):
    """Poisson ``laplacian(u) = laplacian_u`` (source given as a callable): ``(u, u_exact)``."""
    X, Y = nodes(n)
    return get("poisson", n).solve(laplacian_u), u_exact(X, Y)


def helmholtz_manufactured(n: int, k: float = 1.0):
    """Helmholtz ``laplacian(u) + k^2 u = laplacian_u + k^2 u_exact``: ``(u, u_exact)``."""
    X, Y = nodes(n)
    exact = u_exact(X, Y)
    return get("helmholtz", n, k=k).solve(laplacian_u(X, Y) + k**2 * exact), exact


def solve_manufactured(name: str, n: int, k: float | None = 1.0):
    """``(u, u_exact)`` of the manufactured case of ``name`` (darcy, poisson, helmholtz with ``k``)."""
    if name == "darcy":
        return darcy_manufactured(n)
    if name == "poisson":
        return poisson_manufactured(n)
    return helmholtz_manufactured(n, k)


# -- burgers: Cole-Hopf -------------------------------------------------------------------------

# Cole-Hopf: u = -2 nu phi_x / phi with phi_t = nu phi_xx. A positive trigonometric polynomial
# phi(0, x) = c + sum_k a_k sin(2 pi k x + theta_k) decays mode by mode, so u is known in closed form.
MODES = [(1, 1.0, 0.0), (2, 0.4, 1.0), (3, 0.2, 2.0)]  # (k, a_k, theta_k); c = 1.8 > sum a_k


def cole_hopf(nu, t, x, c=1.8):
    """Exact periodic Burgers solution ``u [len(t), len(x)]`` with viscosity ``nu`` (see ``MODES``)."""
    t, x = np.asarray(t, dtype=float)[..., None], np.asarray(x, dtype=float)
    phi, phi_x = c, 0.0
    for k, a, theta in MODES:
        decay = a * np.exp(-nu * (2 * np.pi * k) ** 2 * t)
        phi = phi + decay * np.sin(2 * np.pi * k * x + theta)
        phi_x = phi_x + decay * 2 * np.pi * k * np.cos(2 * np.pi * k * x + theta)
    return -2 * nu * phi_x / phi


def burgers_cole_hopf(n: int, nu: float = 0.05, nt: int = 11):
    """Burgers from the Cole-Hopf ``u0`` on ``n`` points, ``nt`` stored times on [0, 1]: ``(u, exact)``, ``[nt, n]``."""
    problem = get("burgers", n, nu=nu, nt=nt)
    exact = cole_hopf(nu, problem.grid.coords["t"], problem.grid.coords["x"])
    return problem.solve(exact[0]), exact


# -- burgers_dirichlet: manufactured solution and Cole-Hopf on [0, 1] with u = 0 at both ends -------


def manufactured_burgers(t, x, nu):
    """``(u, f)`` of ``u = cos(2t) sin(pi x) + 2 sin(3t) g(x)`` and ``f = u_t + u u_x - nu u_xx``, broadcasting."""
    t, x = np.asarray(t, dtype=float), np.asarray(x, dtype=float)
    a, da = np.cos(2 * t), -2 * np.sin(2 * t)
    b, db = 2 * np.sin(3 * t), 6 * np.cos(3 * t)
    s, ds, d2s = np.sin(PI * x), PI * np.cos(PI * x), -(PI**2) * np.sin(PI * x)
    u = a * s + b * g(x)
    u_t = da * s + db * g(x)
    u_x = a * ds + b * dg(x)
    u_xx = a * d2s + b * d2g(x)
    return u, u_t + u * u_x - nu * u_xx


def burgers_dirichlet_manufactured(n: int, nu: float = 0.02, nt: int = 5):
    """Forced Dirichlet Burgers from the manufactured ``u0``, the forcing as a callable: ``(u, exact)``, ``[nt, n]``."""
    problem = get("burgers_dirichlet", n, nu=nu, nt=nt, T=1.0)
    t, x = problem.grid.coords["t"], problem.grid.coords["x"]
    exact, _ = manufactured_burgers(t[:, None], x, nu)
    return problem.solve(exact[0], forcing=lambda time, x: manufactured_burgers(time, x, nu)[1]), exact


# Cole-Hopf with phi_x = 0 at both ends: phi = c + sum_k a_k cos(k pi x) exp(-nu (k pi)^2 t) > 0 gives
# u = -2 nu phi_x / phi, zero at x = 0 and 1, an exact unforced solution.
DIRICHLET_MODES = [(1, 1.0), (2, -0.3), (3, 0.1)]  # (k, a_k); min of the sum is -1.4 at x = 1


def cole_hopf_dirichlet(nu, t, x, c=1.5):
    """Exact Burgers solution on [0, 1] with ``u = 0`` at both ends, ``[len(t), len(x)]`` (see ``DIRICHLET_MODES``).

    With ``c = 1.5``, ``phi >= 0.1`` at ``t = 0``: ``max|u0|`` is 1.2 for nu 0.05, a front near ``x = 1``.
    """
    t, x = np.asarray(t, dtype=float)[..., None], np.asarray(x, dtype=float)
    phi, phi_x = c, 0.0
    for k, a in DIRICHLET_MODES:
        decay = a * np.exp(-nu * (np.pi * k) ** 2 * t)
        phi = phi + decay * np.cos(np.pi * k * x)
        phi_x = phi_x - decay * np.pi * k * np.sin(np.pi * k * x)
    return -2 * nu * phi_x / phi


# -- navier_stokes: Taylor-Green ----------------------------------------------------------------


def periodic_grid(n):
    """The ``n x n`` periodic grid ``i/n``: ``X, Y`` indexed ``[y, x]``."""
    x = np.arange(n) / n
    return np.meshgrid(x, x)


def taylor_green(t, X, Y, nu, m=1, amplitude=5.0):
    """``w = A cos(2 pi m x) cos(2 pi m y) exp(-nu |k|^2 t)``, ``|k|^2 = 2 (2 pi m)^2``: ``[len(t), *X.shape]``.

    Its stream function is proportional to ``w``, so ``v . grad w = 0`` exactly: an exact unforced solution.
    """
    w0 = amplitude * np.cos(2 * np.pi * m * X) * np.cos(2 * np.pi * m * Y)
    return w0 * np.exp(-nu * 2 * (2 * np.pi * m) ** 2 * np.asarray(t, dtype=float))[:, None, None]


def navier_stokes_taylor_green(n: int, m: int = 1, nu: float = 0.01, nt: int = 5):
    """Unforced Navier-Stokes from the Taylor-Green ``w0``, ``nt`` stored times on [0, 1]: ``(w, exact)``, ``[nt, n, n]``."""
    problem = get("navier_stokes", n, nu=nu, forcing=0.0, store="trajectory", nt=nt)
    X, Y = periodic_grid(n)
    exact = taylor_green(problem.grid.coords["t"], X, Y, nu, m)
    return problem.solve(exact[0]), exact


# -- dispatcher ---------------------------------------------------------------------------------

TRUTH_CASES: dict[str, Callable[[int], tuple]] = {
    "darcy": darcy_manufactured,
    "poisson": poisson_manufactured,
    "helmholtz": helmholtz_manufactured,
    "burgers": burgers_cole_hopf,
    "burgers_dirichlet": burgers_dirichlet_manufactured,
    "navier_stokes": navier_stokes_taylor_green,
}


def truth_error(problem: str, resolution: int) -> float:
    """Relative L2 error ``||numerical - exact|| / ||exact||`` of ``problem``'s truth case at ``resolution``."""
    if problem not in TRUTH_CASES:
        raise KeyError(f"no truth case for {problem!r}; known: {', '.join(sorted(TRUTH_CASES))}")
    numerical, exact = TRUTH_CASES[problem](resolution)
    numerical = np.asarray(numerical, dtype=float)
    return float(np.linalg.norm(numerical - exact) / np.linalg.norm(exact))
