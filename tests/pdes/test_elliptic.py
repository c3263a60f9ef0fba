"""Darcy, Poisson and Helmholtz: manufactured solutions, residuals, gradients and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import diffpde.pdes as pdes
from diffpde.pdes._fd import apply_operator, operator_matrix
from diffpde.pdes.verification import solve_manufactured

PI = np.pi
RESOLUTIONS = (17, 33, 65)
# The manufactured solution u = g(x) sin(pi y) and its sources: diffpde.pdes.verification.


@pytest.mark.parametrize("name, k", [("darcy", None), ("poisson", None), ("helmholtz", 1.0), ("helmholtz", 6.0)])
def test_manufactured_solution_converges_at_second_order(name, k):
    errors = []
    for n in RESOLUTIONS:
        u, exact = solve_manufactured(name, n, k)
        assert u.shape == (n, n) and u.dtype == np.float64
        assert np.all(u[0] == 0) and np.all(u[-1] == 0) and np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)
        errors.append(np.abs(u - exact).max())
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))  # h halves between resolutions
    assert slopes.min() >= 1.8, f"{name}: errors {errors}, slopes {slopes}"
    assert errors[-1] < 1e-3 * np.abs(exact).max()


def test_stencil_equals_sparse_matrix():
    n, rng = 9, np.random.default_rng(0)
    a = rng.uniform(1, 5, (n, n))
    u = np.zeros((n, n))
    u[1:-1, 1:-1] = rng.standard_normal((n - 2, n - 2))
    matrix = operator_matrix(n, a, shift=0.7)
    assert abs(matrix - matrix.T).max() == 0  # symmetric, as the conservative form must be
    h2 = (n - 1) ** -2
    # Row of node (1, 1): diagonal = sum of the four harmonic-mean faces / h^2 + shift.
    faces = [2 * a[1, 1] * a[i, j] / (a[1, 1] + a[i, j]) for i, j in [(0, 1), (2, 1), (1, 0), (1, 2)]]
    assert np.isclose(matrix[0, 0], sum(faces) / h2 + 0.7) and np.isclose(matrix[0, 1], -faces[3] / h2)
    stencil = apply_operator(torch.tensor(u)[None], torch.tensor(a)[None], 0.7)[0].numpy()
    np.testing.assert_allclose(stencil.ravel(), matrix @ u[1:-1, 1:-1].ravel(), rtol=1e-12, atol=1e-9)
    assert sp.issparse(matrix) and matrix.nnz == 5 * 49 - 4 * 7


def batch(fields, dtype=torch.float64):
    return {k: torch.as_tensor(v, dtype=dtype)[None] for k, v in fields.items()}


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_residual_vanishes_on_solver_output_and_not_on_perturbed(name):
    n = 64
    problem = pdes.get(name, n)
    h = 1 / (n - 1)
    data = problem.generate(seed=11)
    residual = problem.residual(batch(data))
    assert residual.shape == (1, n, n)
    # Same discrete operator as the solver, so only the direct solve's round-off remains:
    # relative to the source scale, far below 1e-8 (measured ~1e-12).
    scale = 1.0 if name == "darcy" else np.abs(data["a"]).max()
    assert residual.abs().max() < 1e-8 * scale
    assert torch.all(residual[0, 0] == 0) and torch.all(residual[0, :, -1] == 0)

    eps = 1e-2
    noisy = dict(data, u=data["u"] + eps * np.random.default_rng(0).standard_normal((n, n)) * np.pad(np.ones((n - 2, n - 2)), 1))
    interior = problem.residual(batch(noisy))[0, 1:-1, 1:-1]
    rms = interior.pow(2).mean().sqrt().item()
    # White noise through the five-point stencil: rms = sqrt(4^2 + 4) eps / h^2 times the face
    # coefficients (1 for Poisson/Helmholtz up to k^2 h^2, in [3, 12] for Darcy).
    lo, hi = (3, 12) if name == "darcy" else (1, 1)
    assert 0.9 * lo * np.sqrt(20) * eps / h**2 < rms < 1.1 * hi * np.sqrt(20) * eps / h**2

    # The boundary condition: u != 0 on a boundary node shows up there as u / h^2.
    off = dict(data, u=data["u"].copy())
    off["u"][0, 5] = eps
    assert np.isclose(problem.residual(batch(off))[0, 0, 5].item(), eps / h**2)


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_residual_batched_float32_and_differentiable(name):
    n = 8
    problem = pdes.get(name, n)
    data = [problem.generate(seed) for seed in (1, 2)]
    both = {k: torch.tensor(np.stack([d[k] for d in data])) for k in ("a", "u")}
    r = problem.residual(both)
    for i in range(2):
        torch.testing.assert_close(r[i], problem.residual(batch(data[i]))[0])
    r32 = problem.residual({k: v.float() for k, v in both.items()})
    assert r32.dtype == torch.float32
    fields = {k: (v + 0.1 * torch.rand_like(v)).requires_grad_(True) for k, v in both.items()}
    torch.autograd.gradcheck(lambda a, u: problem.residual({"a": a, "u": u}), (fields["a"], fields["u"]))
    problem.residual_norm(fields).sum().backward()
    assert fields["u"].grad.abs().sum() > 0 and fields["a"].grad.abs().sum() > 0


def test_darcy_inputs_and_generate():
    darcy = pdes.get("darcy", 32)
    a = darcy.sample_inputs(20, seed=5)["a"]
    assert a.shape == (20, 32, 32) and set(np.unique(a)) == {3.0, 12.0}
    assert 0.35 < (a == 12).mean() < 0.65  # the GRF is symmetric about 0
    one = darcy.generate(seed=7)
    np.testing.assert_array_equal(one["a"], a[2])  # sample i of seed s is generate(s + i)
    assert one["u"].dtype == np.float64 and one["u"].min() >= 0  # f > 0 and u = 0 on the boundary: u >= 0
    np.testing.assert_array_equal(darcy.generate(seed=7)["u"], one["u"])
    # Constant permeability c scales the solution by 1/c; array and callable sources agree.
    ones = np.ones((32, 32))
    np.testing.assert_allclose(darcy.solve(4 * ones), darcy.solve(ones) / 4, rtol=1e-12)
    np.testing.assert_allclose(darcy.solve(ones, f=lambda x, y: 2 + 0 * x), darcy.solve(ones, f=2 * ones), rtol=1e-12)
    text = darcy.describe(one)
    assert text.startswith("Darcy flow -div(a grad u) = 1 on [0,1]^2, 32x32 vertex grid")
    assert f"high-permeability fraction {(one['a'] == 12).mean():.2f}" in text


def test_poisson_and_helmholtz_inputs():
    poisson, helmholtz = pdes.get("poisson", 32), pdes.get("helmholtz", 32, k=2.0)
    np.testing.assert_array_equal(poisson.sample_inputs(3, seed=4)["a"][1], helmholtz.generate(seed=5)["a"])
    assert "k = 2" in helmholtz.describe() and "laplacian(u) = a" in poisson.describe()
    d = pdes.get("poisson", 16, grf="dirichlet").generate(seed=0)
    assert np.all(d["a"][0] == 0)
    # k -> 0 makes Helmholtz Poisson.
    a = poisson.sample_inputs(1, seed=3)["a"][0]
    np.testing.assert_allclose(pdes.get("helmholtz", 32, k=0.0).solve(a), poisson.solve(a), rtol=1e-12, atol=1e-15)


def test_bad_inputs():
    darcy = pdes.get("darcy", 16)
    good = np.ones((16, 16))
    with pytest.raises(ValueError, match="NaN"):
        darcy.solve(np.where(np.eye(16) > 0, np.nan, 1.0))
    with pytest.raises(ValueError, match=r"shape \(16, 16\)"):
        darcy.solve(np.ones((16, 15)))
    with pytest.raises(ValueError, match="positive"):
        darcy.solve(good - 2 * np.eye(16))
    with pytest.raises(ValueError, match="source f"):
        darcy.solve(good, f=np.ones(5))
    with pytest.raises(ValueError, match="source a contains NaN"):
        pdes.get("poisson", 16).solve(np.full((16, 16), np.nan))
    with pytest.raises(KeyError, match="residual needs field 'u'"):
        darcy.residual({"a": torch.ones(1, 16, 16)})
    with pytest.raises(ValueError, match=r"shape \[B, 16, 16\]"):
        darcy.residual({"a": torch.ones(1, 16, 16), "u": torch.ones(16, 16)})
    with pytest.raises(ValueError, match="permeabilities must be positive"):
        pdes.get("darcy", 16, a_low=0.0)
    with pytest.raises(ValueError, match="grf"):
        pdes.get("poisson", 16, grf="periodic")
    n, h = 8, 1 / 7
    k_resonant = np.sqrt(2 * 4 / h**2 * np.sin(PI * h / 2) ** 2)  # smallest discrete eigenvalue
    with pytest.raises(ValueError, match="singular"):
        pdes.get("helmholtz", n, k=k_resonant)
