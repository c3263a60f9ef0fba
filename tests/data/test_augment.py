"""Augmentation by the families' declared symmetries (``diffpde.data.augment``).

Truth: a symmetry maps a solver sample to a solution of the same problem, so its residual stays at
the solver's level (to round-off: the maps are exact on the grid), and it keeps the distribution
of the random inputs (their covariance). The same checks fail for maps that are not symmetries.
"""

import numpy as np
import pytest
import torch

import diffpde.pdes as pdes
from diffpde.data.augment import SYMMETRIES, apply_symmetry, augment
from diffpde.data.normalize import Normalizer
from diffpde.pdes.grf import grf_eigenvalues, synthesize

FAMILIES = {
    "darcy": ("darcy", 16, {}),
    "poisson": ("poisson", 16, {}),
    "poisson_sine": ("poisson", 16, {"grf": "dirichlet"}),
    "helmholtz": ("helmholtz", 16, {}),
    "burgers": ("burgers", 32, {"nt": 17}),
    "burgers_dirichlet": ("burgers_dirichlet", 24, {"nt": 9, "T": 2.0}),
    "navier_stokes": ("navier_stokes", 16, {}),
    "navier_stokes_unforced": ("navier_stokes", 16, {"forcing": 0.0}),
    "navier_stokes_trajectory": ("navier_stokes", 16, {"store": "trajectory", "nt": 9}),
}
_CACHE: dict = {}


def solver_batch(family):
    """(problem, channel names, [2, C, *shape] float64 batch of two solver samples)."""
    if family not in _CACHE:
        name, resolution, parameters = FAMILIES[family]
        problem = pdes.get(name, resolution, **parameters)
        shape = problem.fields[-1].shape  # the solution's; stack every field of that shape
        fields = tuple(f.name for f in problem.fields if f.shape == shape)
        samples = [problem.generate(seed) for seed in (5, 6)]
        x = torch.stack([torch.stack([torch.as_tensor(s[f]) for f in fields]) for s in samples])
        _CACHE[family] = problem, fields, x
    return _CACHE[family]


def residual_norm(problem, fields, x):
    return problem.residual_norm(dict(zip(fields, x.unbind(1))))


def still_a_solution(problem, fields, x, mapped):
    """Whether ``mapped`` has the residual of ``x`` (solver level), up to a millionth of the
    residual a 1 % error in the solution makes."""
    before, after = residual_norm(problem, fields, x), residual_norm(problem, fields, mapped)
    one_percent = x.clone()
    one_percent[:, -1] *= 1.01
    scale = residual_norm(problem, fields, one_percent)
    return bool((after <= before * (1 + 1e-9) + 1e-6 * scale).all())


DECLARED = [(family, s) for family, (name, n, parameters) in FAMILIES.items() for s in pdes.get(name, n, **parameters).symmetries]


def test_every_family_declares_symmetries_that_exist():
    for family in FAMILIES:
        name, resolution, parameters = FAMILIES[family]
        problem = pdes.get(name, resolution, **parameters)
        assert problem.symmetries and set(problem.symmetries) <= set(SYMMETRIES)
        assert set(problem.odd_fields) <= set(SYMMETRIES)
    assert pdes.get("darcy", 16).symmetries == ("flip_x", "flip_y", "transpose")
    assert pdes.get("burgers", 32).symmetries == ("roll_x", "flip_x")
    assert pdes.get("navier_stokes", 16).symmetries == ("roll_antidiagonal", "transpose_half")
    assert "transpose_half" not in pdes.get("navier_stokes", 15).symmetries  # needs an even grid


@pytest.mark.parametrize("family, symmetry", DECLARED)
def test_declared_symmetry_maps_solver_data_to_solutions(family, symmetry):
    problem, fields, x = solver_batch(family)
    mapped = apply_symmetry(x, symmetry, problem=problem, fields=fields, shift=torch.tensor([3, 5]))
    assert not torch.equal(mapped, x)
    assert still_a_solution(problem, fields, x, mapped)
    # the same through augment, forcing the map onto both samples' half of a larger global batch
    names = [symmetry]
    for seed in range(4):
        out = augment(x, names, torch.Generator().manual_seed(seed), 0, 2, problem=problem, fields=fields)
        assert still_a_solution(problem, fields, x, out)


WRONG = [
    # (family, map, odd fields override): not symmetries, each must fail the same check
    ("darcy", "flip_x", ("u",)),                  # pressure sign flipped alone
    ("poisson", "negate", ("u",)),                # solution negated without the source
    ("helmholtz", "transpose", ("a",)),           # source negated under the transpose
    ("burgers", "flip_x", ()),                    # reflection without u -> -u
    ("burgers", "roll_x", ("u",)),                # u -> -u is no symmetry on its own
    ("burgers_dirichlet", "flip_x", ()),          # reflection without (f, u) -> -(f, u)
    ("burgers_dirichlet", "flip_x", ("u",)),      # ... or with u -> -u but not f -> -f
    ("burgers_dirichlet", "negate", ("f", "u")),  # the equation is not linear
    ("navier_stokes", "roll_x", None),            # moves FNO's forcing
    ("navier_stokes", "roll_y", None),
    ("navier_stokes", "transpose", None),         # keeps x + y, but w -> -w needs f -> -f
    ("navier_stokes", "transpose", ()),           # a transpose without the sign change
    ("navier_stokes", "flip_x", None),
    ("navier_stokes", "transpose_half", ()),      # the true reflection, but without w -> -w
    ("navier_stokes_unforced", "flip_x", ()),     # the vorticity is a pseudoscalar
    ("navier_stokes_unforced", "negate", ("w0", "w")),
    ("navier_stokes_trajectory", "roll_x", None),
    ("navier_stokes_trajectory", "transpose", None),
]


@pytest.mark.parametrize("family, symmetry, odd", WRONG)
def test_a_map_that_is_no_symmetry_is_caught(family, symmetry, odd):
    problem, fields, x = solver_batch(family)
    mapped = apply_symmetry(x, symmetry, problem=problem, fields=fields, shift=torch.tensor([3, 5]), odd=odd)
    assert not still_a_solution(problem, fields, x, mapped)


# -- the random inputs' distribution -------------------------------------------------------------


def input_covariance(problem):
    """(input field name, exact covariance [N, N] of the Gaussian behind the input on the grid)."""
    p, n = problem.parameters, problem.resolution
    if problem.name in ("darcy", "poisson", "helmholtz"):
        boundary, dim, name, sigma = p.get("grf", "neumann"), 2, "a", None
    elif problem.name == "burgers":
        boundary, dim, name, sigma = "periodic", 1, "u0", p["sigma"]
    else:
        boundary, dim, name, sigma = "periodic", 2, "w0", p["sigma"]
    lam = grf_eigenvalues(n, p["alpha"], p["tau"], dim=dim, boundary=boundary, sigma=sigma)
    if boundary == "periodic":  # stationary: C[i, j] = c(x_i - x_j), c = sum_k lam_k exp(2 pi i k.x)
        c = synthesize(lam.astype(complex), "periodic", dim).reshape(-1)
        idx = np.stack(np.meshgrid(*[np.arange(n)] * dim, indexing="ij"), -1).reshape(-1, dim)
        diff = (idx[:, None, :] - idx[None, :, :]) % n
        flat = np.ravel_multi_index(tuple(diff[..., d] for d in range(dim)), (n,) * dim)
        return name, torch.as_tensor(c[flat])
    modes = np.diag(np.sqrt(lam.reshape(-1))).reshape((-1,) + lam.shape)  # one KL mode per row
    s = torch.as_tensor(synthesize(modes, boundary, dim).reshape(lam.size, -1))
    return name, s.T @ s


def conjugate(cov, shape, act):
    """``M C M^T`` for the linear map ``act`` (``[N, *shape] -> [N, *shape]``, row-wise) on fields of ``shape``."""
    n = cov.shape[0]
    once = act(cov.reshape(n, *shape)).reshape(n, n)  # C M^T
    return act(once.T.reshape(n, *shape)).reshape(n, n).T


# Gaussian inputs only; the Gaussian bumps of burgers_dirichlet are checked in tests/pdes/test_burgers_dirichlet.py.
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("navier_stokes_trajectory", "burgers_dirichlet")])
def test_declared_symmetries_keep_the_input_distribution(family):
    name, resolution, parameters = FAMILIES[family]
    problem = pdes.get(name, resolution, **parameters)
    field, cov = input_covariance(problem)
    shape = problem.field(field).shape
    for symmetry in problem.symmetries:
        def act(rows):
            mapped = apply_symmetry(rows[:, None], symmetry, problem=problem, fields=(field,), shift=3)
            return mapped[:, 0]

        assert torch.allclose(conjugate(cov, shape, act), cov, atol=1e-12 * cov.abs().max()), symmetry
    if problem.grid.kind == "vertex":  # the same check fails for a map that is not a symmetry of the square
        assert not torch.allclose(conjugate(cov, shape, lambda rows: rows.roll(3, -1)), cov, atol=1e-3 * cov.abs().max())


def test_darcy_permeability_stays_two_phase():
    problem, fields, x = solver_batch("darcy")
    for symmetry in problem.symmetries:
        mapped = apply_symmetry(x, symmetry, problem=problem, fields=fields)
        assert set(mapped[:, 0].unique().tolist()) == {3.0, 12.0}
    # negating (a, u) keeps the residual (-div((-a) grad(-u)) = f) but leaves the distribution: not declared
    negated = apply_symmetry(x, "negate", problem=problem, fields=fields, odd=("a", "u"))
    assert still_a_solution(problem, fields, x, negated) and (negated[:, 0] < 0).all()
    assert "negate" not in problem.symmetries


# -- augment: draws, ranks, frames, errors -------------------------------------------------------


def test_each_map_is_applied_to_about_half_the_samples_reproducibly():
    problem = pdes.get("darcy", 8)
    x = torch.randn(400, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = augment(x, ["flip_x"], torch.Generator().manual_seed(1), 0, 400, problem=problem, fields=("a", "u"))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 160 < int(flipped.sum()) < 240  # binomial(400, 1/2): 5 sigma
    again = augment(x, ["flip_x"], torch.Generator().manual_seed(1), 0, 400, problem=problem, fields=("a", "u"))
    assert torch.equal(out, again)


@pytest.mark.parametrize("family, names", [("darcy", ["flip_x", "transpose", "flip_y"]),
                                           ("navier_stokes", ["roll_antidiagonal", "transpose_half"]),
                                           ("burgers", ["roll_x", "flip_x"])])
def test_ranks_slices_give_the_global_batch(family, names):
    problem, fields, x = solver_batch(family)
    batch = x.repeat(4, 1, *[1] * (x.ndim - 2))  # 8 samples
    whole = augment(batch, names, torch.Generator().manual_seed(7), 0, 8, problem=problem, fields=fields)
    parts = [augment(batch[lo:lo + 2], names, torch.Generator().manual_seed(7), lo, 8, problem=problem, fields=fields)
             for lo in range(0, 8, 2)]
    assert torch.equal(torch.cat(parts), whole)


def old_trainer_augment(x, names, generator, offset, total):
    """The trainer's augmentation before this module (rolls of the last two axes), as a reference."""
    b = x.shape[0]
    for name in names:
        axis = {"x": -1, "y": -2}[name[-1]]
        shifts = torch.randint(0, x.shape[axis], (total,), generator=generator)[offset:offset + b]
        x = torch.stack([torch.roll(xi, int(s), dims=axis) for xi, s in zip(x, shifts)])
    return x


def test_trainer_calling_convention_and_draws_are_kept():
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for lo in (0, 2, 4):
        got = augment(x[lo:lo + 2], ["roll_x", "roll_y"], torch.Generator().manual_seed(3), lo, 6)
        want = old_trainer_augment(x[lo:lo + 2], ["roll_x", "roll_y"], torch.Generator().manual_seed(3), lo, 6)
        assert torch.equal(got, want)
    # with the problem the same draws give the same rolls
    problem = pdes.get("navier_stokes", 8, forcing=0.0)
    got = augment(x[:, :2].double(), ["roll_x", "roll_y"], torch.Generator().manual_seed(3), 0, 6, problem=problem,
                  fields=("w0", "w"))
    assert torch.equal(got, old_trainer_augment(x[:, :2].double(), ["roll_x", "roll_y"], torch.Generator().manual_seed(3), 0, 6))


def test_sign_changes_act_on_physical_fields_in_a_normalised_frame():
    problem, fields, x = solver_batch("burgers")
    normalizer = Normalizer(fields, (0.3,), (2.0,), 2)
    physical = apply_symmetry(x, "flip_x", problem=problem, fields=fields)
    normalised = apply_symmetry(normalizer.normalize(x), "flip_x", problem=problem, fields=fields, normalizer=normalizer)
    assert torch.allclose(normalizer.denormalize(normalised), physical, atol=1e-12)
    assert not torch.allclose(normalizer.denormalize(apply_symmetry(normalizer.normalize(x), "flip_x", problem=problem,
                                                                    fields=fields)), physical, atol=1e-3)


def test_bad_requests_are_clear_errors():
    x = torch.zeros(2, 2, 16, 16, dtype=torch.float64)
    darcy, ns = pdes.get("darcy", 16), pdes.get("navier_stokes", 16)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\['roll_x'\] are not symmetries of Darcy.*declared: \['flip_x'"):
        augment(x, ["roll_x"], g, 0, 2, problem=darcy, fields=("a", "u"))
    with pytest.raises(ValueError, match="'flip_x' depends on the grid and on which fields change sign; pass problem="):
        augment(x, ["flip_x"], g, 0, 2)
    with pytest.raises(KeyError, match="unknown symmetry 'rotate'; known: roll_x"):
        augment(x, ["rotate"], g, 0, 2)
    with pytest.raises(ValueError, match="'roll_x' needs a periodic grid; darcy's is 'vertex'"):
        apply_symmetry(x, "roll_x", problem=darcy, fields=("a", "u"), shift=1)
    with pytest.raises(ValueError, match=r"'flip_y' needs axis y, which burgers fields with dims \('t', 'x'\) lack"):
        apply_symmetry(torch.zeros(1, 1, 16, 16), "flip_y", problem=pdes.get("burgers", 16), fields=("u",))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2, 16, 16\]"):
        apply_symmetry(torch.zeros(2, 2, 8, 8), "transpose_half", problem=ns, fields=("w0", "w"))
    with pytest.raises(KeyError, match="navier_stokes has no field.*'p'"):
        apply_symmetry(x, "transpose_half", problem=ns, fields=("w0", "p"))
    with pytest.raises(ValueError, match="cannot tell which darcy fields the 3 channels"):
        apply_symmetry(torch.zeros(1, 3, 16, 16), "flip_x", problem=darcy)
    with pytest.raises(ValueError, match="samples 4:6 are not inside a global batch of 5"):
        augment(x, ["roll_x"], g, 4, 5)
