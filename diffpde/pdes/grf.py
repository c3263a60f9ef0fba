"""Gaussian random fields with covariance ``sigma^2 (-Laplacian + tau^2)^(-alpha)``, sampled spectrally.

A field is the Karhunen-Loeve sum ``u(x) = sum_k sqrt(lambda_k) xi_k phi_k(x)`` over the
eigenfunctions ``phi_k`` (orthonormal in L2 of the unit domain) of the Laplacian with the chosen
boundary condition, truncated to the modes the grid resolves, with ``xi_k ~ N(0, 1)`` i.i.d. and

    lambda_k = sigma^2 (mu_k + tau^2)^(-alpha),      mu_k the eigenvalue of -Laplacian.

``boundary`` selects the domain, grid and basis (``n`` points per axis, ``d = dim`` axes):

- ``"periodic"``: torus [0, 1)^d, grid ``x_i = i/n``, ``phi_k = exp(2 pi i k.x)``,
  ``mu_k = 4 pi^2 |k|^2`` for the FFT frequencies ``k``. The mean mode ``k = 0`` is set to zero,
  so every sample has exactly zero spatial mean (as in FNO's ``GaussianRF``).
- ``"dirichlet"``: [0, 1]^d with ``u = 0`` on the boundary, vertex grid ``x_i = i/(n-1)``
  (boundary nodes included, where the field is exactly 0), ``phi_k = prod_j sqrt(2) sin(pi k_j x_j)``,
  ``k_j = 1..n-2``, ``mu_k = pi^2 |k|^2``; synthesised with the type-I DST.
- ``"neumann"``: [0, 1]^d with zero normal derivative, vertex grid ``x_i = i/(n-1)``, cosine
  basis ``phi_k = prod_j c_kj cos(pi k_j x_j)`` (``c_0 = 1``, else ``sqrt(2)``), ``k_j = 0..n-1``,
  ``mu_k = pi^2 |k|^2``; the mean mode is set to zero. Synthesised with the type-I DCT. This is the
  variant FNO's Darcy generator uses (its MATLAB ``GRF.m`` is a cosine series with ``L(1,1) = 0``).

The default amplitude ``sigma = tau^(alpha - d/2)`` is FNO's: it makes the point variance O(1)
independently of ``tau`` (for ``alpha > d/2``), since ``sum_k (mu_k + tau^2)^(-alpha) ~ tau^(d - 2 alpha)``.

Seeding: sample ``i`` is drawn from its own generator ``np.random.default_rng(seed_i)``, so a batch
equals the single samples drawn with the same seeds. ``seed`` is either one integer (sample ``i``
uses ``seed + i``) or a sequence of ``n_samples`` integers. Alternatively pass ``rng`` (a
``np.random.Generator``), from which the samples are drawn one after another.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft

BOUNDARIES = ("periodic", "dirichlet", "neumann")


def default_sigma(alpha: float, tau: float, dim: int) -> float:
    """FNO's amplitude ``tau^(alpha - dim/2)``."""
    return float(tau) ** (float(alpha) - dim / 2)


def grf_shape(resolution: int | Sequence[int], dim: int) -> tuple[int, ...]:
    """The grid shape ``(n_1, ..., n_dim)`` of a resolution given as one int or ``dim`` ints."""
    shape = (int(resolution),) * dim if np.isscalar(resolution) else tuple(int(n) for n in resolution)
    if len(shape) != dim:
        raise ValueError(f"grf: resolution {resolution!r} does not have dim={dim} entries")
    return shape


def grf_eigenvalues(
    resolution: int | Sequence[int],
    alpha: float,
    tau: float,
    *,
    dim: int = 2,
    boundary: str = "periodic",
    sigma: float | None = None,
) -> np.ndarray:
    """Covariance eigenvalues ``lambda_k`` on the modes the grid resolves, shape = the coefficient array.

    Periodic: indexed like ``np.fft.fftn`` output (shape = grid shape); Dirichlet: ``k_j = 1..n_j-2``
    (shape = interior grid shape); Neumann: ``k_j = 0..n_j-1`` (shape = grid shape). Modes that are
    set to zero (the mean mode) have eigenvalue 0.
    """
    shape = grf_shape(resolution, dim)
    if boundary not in BOUNDARIES:
        raise ValueError(f"grf: boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
    min_n = 3 if boundary == "dirichlet" else 2
    if min(shape) < min_n:
        raise ValueError(f"grf: resolution {shape} too small for boundary {boundary!r} (minimum {min_n})")
    if alpha <= 0 or tau < 0:
        raise ValueError(f"grf: need alpha > 0 and tau >= 0, got alpha={alpha}, tau={tau}")
    sigma = default_sigma(alpha, tau, dim) if sigma is None else float(sigma)
    if boundary == "periodic":
        axes = [2 * np.pi * np.fft.fftfreq(n, d=1.0 / n) for n in shape]
    elif boundary == "dirichlet":
        axes = [np.pi * np.arange(1, n - 1) for n in shape]
    else:
        axes = [np.pi * np.arange(n) for n in shape]
    mu = sum(k**2 for k in np.meshgrid(*axes, indexing="ij"))
    lam = np.zeros_like(mu)
    positive = mu > 0 if boundary != "dirichlet" else np.ones(mu.shape, bool)
    lam[positive] = sigma**2 * (mu[positive] + tau**2) ** (-alpha)
    return lam


def _basis_weights(n: int, boundary: str) -> np.ndarray:
    """Per-axis factor turning the unnormalised type-I DST/DCT into the L2-orthonormal basis sum."""
    if boundary == "dirichlet":  # dst1(b)_j = 2 sum_k b_k sin(pi k x_j); want sum_k a_k sqrt(2) sin(.)
        return np.full(n - 2, 1 / np.sqrt(2))
    w = np.full(n, 1 / np.sqrt(2))  # dct1(b)_j = b_0 + (-1)^j b_{n-1} + 2 sum_mid b_k cos(pi k x_j)
    w[0], w[-1] = 1.0, np.sqrt(2)
    return w


def synthesize(coefficients: np.ndarray, boundary: str, dim: int) -> np.ndarray:
    """Field values on the grid from KL coefficients ``a_k`` over the last ``dim`` axes.

    ``u = sum_k a_k phi_k`` with the orthonormal basis of ``boundary`` (see the module docstring);
    for ``"periodic"`` the coefficients are the complex Fourier coefficients (``u = sum_k a_k
    exp(2 pi i k.x)``, Hermitian for a real field) and the real part is returned.
    """
    axes = tuple(range(-dim, 0))
    if boundary == "periodic":
        size = np.prod(coefficients.shape[-dim:])
        return scipy.fft.ifftn(coefficients, axes=axes).real * size
    a = coefficients
    for ax in axes:
        w = _basis_weights(a.shape[ax] + (2 if boundary == "dirichlet" else 0), boundary)
        a = a * w.reshape((-1,) + (1,) * (-ax - 1))
    if boundary == "dirichlet":
        inner = scipy.fft.dstn(a, type=1, axes=axes)
        return np.pad(inner, [(0, 0)] * (a.ndim - dim) + [(1, 1)] * dim)
    return scipy.fft.dctn(a, type=1, axes=axes)


def analyze(u: np.ndarray, boundary: str, dim: int) -> np.ndarray:
    """Inverse of :func:`synthesize`: KL coefficients of grid fields over the last ``dim`` axes."""
    axes = tuple(range(-dim, 0))
    if boundary == "periodic":
        return scipy.fft.fftn(u, axes=axes) / np.prod(u.shape[-dim:])
    if boundary == "dirichlet":
        a = scipy.fft.idstn(u[(...,) + (slice(1, -1),) * dim], type=1, axes=axes)
    else:
        a = scipy.fft.idctn(u, type=1, axes=axes)
    for ax in axes:
        w = _basis_weights(a.shape[ax] + (2 if boundary == "dirichlet" else 0), boundary)
        a = a / w.reshape((-1,) + (1,) * (-ax - 1))
    return a


def _generators(n_samples: int, seed, rng) -> list[np.random.Generator]:
    if (seed is None) == (rng is None):
        raise ValueError("grf: pass exactly one of seed or rng")
    if rng is not None:
        return [rng] * n_samples
    if np.isscalar(seed):
        seeds = [int(seed) + i for i in range(n_samples)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n_samples:
            raise ValueError(f"grf: got {len(seeds)} seeds for {n_samples} samples")
    return [np.random.default_rng(s) for s in seeds]


def grf(
    n_samples: int,
    resolution: int | Sequence[int],
    alpha: float = 2.0,
    tau: float = 3.0,
    *,
    dim: int = 2,
    boundary: str = "periodic",
    seed: int | Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
    sigma: float | None = None,
) -> np.ndarray:
    """Draw ``n_samples`` Gaussian random fields, float64 array ``[n_samples, *grid shape]``.

    n_samples:  number of fields.
    resolution: points per axis (one int, or ``dim`` ints); grid per ``boundary`` (module docstring).
    alpha, tau: covariance ``sigma^2 (-Laplacian + tau^2)^(-alpha)``; smoothness grows with alpha.
    dim:        1 or 2 (any ``dim >= 1`` works).
    boundary:   ``"periodic"``, ``"dirichlet"`` or ``"neumann"``.
    seed / rng: one of them; ``seed`` int (sample i uses ``seed + i``) or one int per sample.
    sigma:      amplitude; ``None`` means FNO's ``tau^(alpha - dim/2)``.
    """
    if n_samples < 0:
        raise ValueError(f"grf: n_samples must be >= 0, got {n_samples}")
    lam = grf_eigenvalues(resolution, alpha, tau, dim=dim, boundary=boundary, sigma=sigma)
    shape = grf_shape(resolution, dim)
    gens = _generators(n_samples, seed, rng)
    if boundary == "periodic":
        # Real white noise -> FFT gives Hermitian coefficients with E|w_k|^2 = N; scale to E|a_k|^2 = lambda_k.
        noise = np.stack([g.standard_normal(shape) for g in gens]) if gens else np.zeros((0,) + shape)
        coeff = scipy.fft.fftn(noise, axes=tuple(range(1, dim + 1))) * (np.sqrt(lam) / np.sqrt(np.prod(shape)))
    else:
        noise = np.stack([g.standard_normal(lam.shape) for g in gens]) if gens else np.zeros((0,) + lam.shape)
        coeff = noise * np.sqrt(lam)
    return synthesize(coeff, boundary, dim)
