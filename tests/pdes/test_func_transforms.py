"""Every family's residual under ``torch.func``: ``vjp`` equals ordinary autograd, ``jvp`` equals a
central finite difference, and the residual's value is the same inside a transform as outside
(about zero on solver data: see each family's tests). Covariance guidance with the PDE residual
runs these transforms (the Navier-Stokes pair residual used to fail inside them)."""

import pytest
import torch

import diffpde.pdes as pdes

CASES = {
    "darcy": ("darcy", 16, {}),
    "poisson": ("poisson", 16, {}),
    "helmholtz": ("helmholtz", 16, {}),
    "burgers": ("burgers", 16, {"nt": 9}),
    "burgers_dirichlet": ("burgers_dirichlet", 16, {"nt": 5, "T": 0.5}),  # the rollout residual
    "burgers_dirichlet_local": ("burgers_dirichlet", 16, {"nt": 5, "T": 0.5, "residual": "local"}),
    "navier_stokes_pair": ("navier_stokes", 16, {}),
    "navier_stokes_trajectory": ("navier_stokes", 16, {"store": "trajectory", "nt": 5}),
}


def setup(case):
    """(problem, field names, field tensors [2, ...] from two solver samples, residual of tensors)."""
    name, resolution, parameters = CASES[case]
    problem = pdes.get(name, resolution, **parameters)
    samples = [problem.generate(seed) for seed in (3, 4)]
    names = problem.field_names
    xs = tuple(torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in names)

    def residual(*tensors):
        return problem.residual(dict(zip(names, tensors)))

    return problem, names, xs, residual


def random_like(xs, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=g, dtype=x.dtype) * x.std() for x in xs)


@pytest.mark.parametrize("case", list(CASES))
def test_vjp_equals_autograd_and_keeps_the_value(case):
    problem, names, xs, residual = setup(case)
    reference = residual(*xs)
    value, pullback = torch.func.vjp(residual, *xs)
    assert torch.equal(value, reference)
    cotangent = torch.randn(value.shape, generator=torch.Generator().manual_seed(0), dtype=value.dtype)
    got = pullback(cotangent)

    leaves = tuple(x.clone().requires_grad_(True) for x in xs)
    want = torch.autograd.grad((residual(*leaves) * cotangent).sum(), leaves, allow_unused=True)
    for name, g, w in zip(names, got, want):
        w = torch.zeros_like(g) if w is None else w  # a field the residual does not read (Burgers' u0)
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12 * w.abs().max().item()), name
    assert any(g.abs().max() > 0 for g in got)


@pytest.mark.parametrize("case", list(CASES))
def test_jvp_equals_finite_difference(case):
    problem, names, xs, residual = setup(case)
    tangents = random_like(xs, seed=1)
    value, derivative = torch.func.jvp(residual, xs, tangents)
    assert torch.equal(value, residual(*xs))

    eps = 1e-5
    plus = residual(*(x + eps * t for x, t in zip(xs, tangents)))
    minus = residual(*(x - eps * t for x, t in zip(xs, tangents)))
    finite_difference = (plus - minus) / (2 * eps)
    error = (derivative - finite_difference).norm() / finite_difference.norm()
    assert error < 1e-6, error  # measured 1e-11 .. 1e-10 (round-off of the difference)

    # jvp and vjp are adjoint: <c, J t> = <J^T c, t>.
    cotangent = torch.randn(value.shape, generator=torch.Generator().manual_seed(2), dtype=value.dtype)
    pulled = torch.func.vjp(residual, *xs)[1](cotangent)
    lhs = (cotangent * derivative).sum()
    rhs = sum((p * t).sum() for p, t in zip(pulled, tangents))
    assert torch.allclose(lhs, rhs, rtol=1e-10)


@pytest.mark.parametrize("case", ["darcy", "poisson", "helmholtz", "burgers", "burgers_dirichlet_local",
                                  "navier_stokes_trajectory"])
def test_vmap_over_samples(case):
    # Local residuals also vectorise; the rollouts (Navier-Stokes pair, Dirichlet Burgers' default)
    # choose their steps from the state's values, which vmap cannot do (their docstrings say so).
    problem, names, xs, residual = setup(case)
    per_sample = torch.func.vmap(lambda *t: residual(*(x[None] for x in t))[0])(*xs)
    assert torch.allclose(per_sample, residual(*xs), rtol=1e-12, atol=1e-12)
