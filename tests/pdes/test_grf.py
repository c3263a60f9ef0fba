"""Gaussian random fields against their prescribed spectrum and covariance.

The truth is computed here from the definition (explicit basis matrices and the eigenvalue formula),
independently of the FFT/DST/DCT code in ``diffpde.pdes.grf``.
"""

import numpy as np
import pytest

from diffpde.pdes.grf import grf

N_SAMPLES = {1: 2000, 2: 1000}  # per dimension; the tolerances scale as 1/sqrt(N)
ALPHA, TAU = 2.0, 3.0


def basis(n: int, boundary: str) -> tuple[np.ndarray, np.ndarray]:
    """Explicit 1D basis matrix ``B[j, k] = phi_k(x_j)`` on the nodes the coefficients determine,
    and the eigenvalues ``mu_k`` of -d^2/dx^2 for its columns."""
    if boundary == "periodic":
        x, k = np.arange(n) / n, np.fft.fftfreq(n, 1.0 / n)
        return np.exp(2j * np.pi * np.outer(x, k)), (2 * np.pi * k) ** 2
    if boundary == "dirichlet":
        x, k = np.arange(1, n - 1) / (n - 1), np.arange(1, n - 1)
        return np.sqrt(2) * np.sin(np.pi * np.outer(x, k)), (np.pi * k) ** 2
    x, k = np.arange(n) / (n - 1), np.arange(n)
    return np.where(k == 0, 1.0, np.sqrt(2)) * np.cos(np.pi * np.outer(x, k)), (np.pi * k) ** 2


def coefficients(u: np.ndarray, n: int, boundary: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of samples ``u`` in the explicit basis (``u = B c`` per axis) and prescribed variances."""
    B, mu = basis(n, boundary)
    Binv = np.linalg.inv(B)
    nodes = slice(1, -1) if boundary == "dirichlet" else slice(None)
    sigma2 = TAU ** (2 * ALPHA - dim)  # FNO's amplitude tau^(alpha - dim/2), squared
    if dim == 1:
        c = u[:, nodes] @ Binv.T
        mu_k = mu
    else:
        c = np.einsum("kj,sjl,ml->skm", Binv, u[:, nodes, nodes], Binv)
        mu_k = mu[:, None] + mu[None, :]
    lam = sigma2 * (mu_k + TAU**2) ** (-ALPHA)
    if boundary != "dirichlet":  # the mean mode is removed
        lam = np.where(mu_k == 0, 0.0, lam)
    return c, lam


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
@pytest.mark.parametrize("dim, n", [(1, 24), (2, 12)])
def test_spectrum_matches_prescribed(boundary, dim, n):
    N = N_SAMPLES[dim]
    u = grf(N, n, ALPHA, TAU, dim=dim, boundary=boundary, seed=1234)
    assert u.shape == (N,) + (n,) * dim and u.dtype == np.float64
    c, lam = coefficients(u, n, boundary, dim)
    power = (np.abs(c) ** 2).mean(0)
    assert np.all(power[lam == 0] < 1e-20)  # removed mean mode
    live = lam > 0
    ratio = power[live] / lam[live]
    # |c_k|^2 / lambda_k is chi^2_1 for real modes (variance 2) and Exp(1) for complex ones (variance 1).
    if boundary == "periodic":
        k = np.fft.fftfreq(n, 1.0 / n)
        self_conjugate = (np.abs(k) == 0) | (np.abs(k) == n / 2)
        real_mode = np.logical_and.reduce(np.meshgrid(*[self_conjugate] * dim, indexing="ij"))[live]
    else:
        real_mode = np.ones_like(ratio, dtype=bool)
    std = np.where(real_mode, np.sqrt(2.0), 1.0) / np.sqrt(N)
    z = (ratio - 1) / std
    assert np.abs(z).max() < 5.0, f"worst mode off by {np.abs(z).max():.1f} sigma"
    # The mean over modes (conjugate pairs are one mode twice, so count at most half as independent).
    assert abs(ratio.mean() - 1) < 4 * np.sqrt(2.0 / (N * live.sum() / 2)) + 0.01


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
def test_covariance_matches_kernel_1d(boundary):
    n, N = 20, N_SAMPLES[1]
    u = grf(N, n, ALPHA, TAU, dim=1, boundary=boundary, seed=99)
    B, mu = basis(n, boundary)
    lam = TAU ** (2 * ALPHA - 1) * (mu + TAU**2) ** (-ALPHA)
    lam = np.where(mu == 0, 0.0, lam)
    kernel = ((B * lam) @ B.conj().T).real  # sum_k lambda_k phi_k(x) conj(phi_k(y))
    nodes = slice(1, -1) if boundary == "dirichlet" else slice(None)
    empirical = np.cov(u[:, nodes], rowvar=False)
    scale = np.sqrt(np.outer(np.diag(kernel), np.diag(kernel)))
    # Sample covariance of Gaussians: std of the (x, y) entry <= sqrt(2/N) * scale (Wishart).
    assert np.abs(empirical - kernel).max() < 5 * np.sqrt(2.0 / N) * scale.max()
    assert np.abs(np.diag(empirical) / np.diag(kernel) - 1).max() < 5 * np.sqrt(2.0 / N)


def test_boundary_values_and_mean():
    d = grf(3, 16, boundary="dirichlet", seed=0)
    assert np.all(d[:, 0] == 0) and np.all(d[:, -1] == 0) and np.all(d[:, :, 0] == 0) and np.all(d[:, :, -1] == 0)
    assert np.abs(d[:, 1:-1, 1:-1]).min() > 0
    p = grf(3, 16, boundary="periodic", seed=0)
    assert np.abs(p.mean(axis=(1, 2))).max() < 1e-14
    assert grf(2, (8, 12), boundary="periodic", seed=0).shape == (2, 8, 12)


def test_sigma_scales_amplitude():
    ref = grf(2, 16, 2.5, 4.0, seed=3)
    np.testing.assert_allclose(grf(2, 16, 2.5, 4.0, seed=3, sigma=2 * 4.0 ** (2.5 - 1)), 2 * ref, rtol=1e-12)


@pytest.mark.parametrize("boundary", ["periodic", "dirichlet", "neumann"])
def test_one_seed_per_sample(boundary):
    batch = grf(4, 10, dim=2, boundary=boundary, seed=7)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], grf(1, 10, dim=2, boundary=boundary, seed=7 + i)[0])
    np.testing.assert_array_equal(grf(2, 10, boundary=boundary, seed=[9, 7])[1], batch[0])
    assert not np.allclose(batch[0], batch[1])
    rng = np.random.default_rng(5)
    first, second = grf(1, 10, boundary=boundary, rng=rng), grf(1, 10, boundary=boundary, rng=rng)
    np.testing.assert_array_equal(np.concatenate([first, second]), grf(2, 10, boundary=boundary, rng=np.random.default_rng(5)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="boundary"):
        grf(1, 8, boundary="robin", seed=0)
    with pytest.raises(ValueError, match="seed or rng"):
        grf(1, 8)
    with pytest.raises(ValueError, match="3 seeds for 2 samples"):
        grf(2, 8, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="too small"):
        grf(1, 2, boundary="dirichlet", seed=0)
    with pytest.raises(ValueError, match="dim=2"):
        grf(1, (8, 8, 8), seed=0)
