"""Forced viscous Burgers with zero Dirichlet boundaries (WDNO's setting): exact and manufactured
solutions, second order, residual floors, the declared reflection, inputs, data generation, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

import diffpde.pdes as pdes
from diffpde.data import generate_dataset
from diffpde.data.augment import apply_symmetry
from diffpde.data.generate import sample_seed
from diffpde.data.hdf5 import read_fields
from diffpde.pdes.burgers_dirichlet import BurgersDirichlet, odd_extension
from diffpde.pdes.verification import burgers_dirichlet_manufactured, cole_hopf_dirichlet, truth_error


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def rms(a):
    return float(a.pow(2).mean().sqrt())


def small(**parameters):
    """A small, fast instance: 24 points, 9 stored times on [0, 2]."""
    return BurgersDirichlet(24, **{"nt": 9, "T": 2.0, **parameters})


def batch(problem, seeds):
    samples = [problem.generate(s) for s in seeds]
    return {k: torch.tensor(np.stack([s[k] for s in samples])) for k in problem.field_names}


# -- truth ---------------------------------------------------------------------------------------


def test_manufactured_solution_converges_at_second_order():
    errors = [truth_error("burgers_dirichlet", n) for n in (17, 33, 65)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert errors[-1] < 1e-3 and all(3.7 < r < 4.3 for r in ratios), (errors, ratios)  # measured 1.2e-2, 2.9e-3, 7.2e-4
    u, exact = burgers_dirichlet_manufactured(33)
    assert u.shape == exact.shape == (5, 33) and np.abs(exact).max() > 1.0
    # the forcing matters, and it is the hand-computed one: without it the error is O(1)
    problem = pdes.get("burgers_dirichlet", 33, nu=0.02, nt=5, T=1.0)
    assert rel(problem.solve(exact[0]), exact) > 0.3


def test_cole_hopf_exact_solution_converges_at_second_order():
    nu, errors = 0.05, []
    for n in (33, 65, 129):
        problem = BurgersDirichlet(n, nu=nu, T=1.0, nt=5)
        exact = cole_hopf_dirichlet(nu, problem.grid.coords["t"], problem.grid.coords["x"])
        errors.append(rel(problem.solve(exact[0]), exact))
    assert np.abs(exact).max() > 1.0  # a front near x = 1
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert errors[-1] < 1e-3 and all(3.6 < r < 4.4 for r in ratios), (errors, ratios)


def test_time_integration_is_fourth_order():
    problem = small()
    u0, f = (problem.sample_inputs(1, seed=2)[k][0] for k in ("u0", "f"))
    reference = small(cfl=0.125).solve(u0, forcing=f)
    e1, e2 = (rel(small(cfl=cfl).solve(u0, forcing=f), reference) for cfl in (0.5, 1.0))
    assert e2 < 1e-3 and 10 < e2 / e1 < 40, (e1, e2)  # measured 6.7e-6, 1.5e-4 (ratio 22; 16 is fourth order)


def test_difference_operators_are_the_solvers():
    # The residual's local stencils applied to the solver's semi-discrete right-hand side: a
    # solution of the ODE system has a local residual that falls with dt^2 (no space error).
    nu, n, floors = 0.05, 33, []
    for nt in (21, 41, 81):
        problem = BurgersDirichlet(n, nu=nu, T=0.5, nt=nt, residual="local")
        exact = cole_hopf_dirichlet(nu, problem.grid.coords["t"], problem.grid.coords["x"])
        u = torch.tensor(problem.solve(exact[0]))[None]
        floors.append(rms(problem.residual({"u": u, "f": torch.zeros_like(u)})))
    ratios = floors[0] / floors[1], floors[1] / floors[2]
    assert all(3.3 < r < 4.5 for r in ratios), (floors, ratios)  # measured 3.5, 3.9


# -- data ----------------------------------------------------------------------------------------


def test_fields_grid_boundaries_and_stored_pair_is_a_solver_pair():
    problem = pdes.get("burgers_dirichlet", 24, nt=9, T=2.0)
    assert problem.field_names == ("u0", "f", "u") and [f.role for f in problem.fields] == ["input", "input", "output"]
    assert problem.field("u").dims == problem.field("f").dims == ("t", "x") and problem.field("u0").shape == (24,)
    assert problem.grid.kind == "vertex" and problem.grid.spacing("x") == pytest.approx(1 / 23)
    assert problem.grid.spacing("t") == pytest.approx(0.25)
    sample = problem.generate(seed=5)
    assert {k: v.shape for k, v in sample.items()} == {"u0": (24,), "f": (9, 24), "u": (9, 24)}
    assert all(v.dtype == np.float64 for v in sample.values())
    assert (sample["u"][:, [0, -1]] == 0).all() and (sample["u0"][[0, -1]] == 0).all()
    np.testing.assert_array_equal(sample["u"][0], sample["u0"])
    assert np.abs(sample["u"]).max() > 0.5 and np.abs(sample["f"]).max() > 0.1
    # re-simulating the stored inputs gives the stored trajectory (the same computation)
    np.testing.assert_array_equal(problem.solve(sample["u0"], forcing=sample["f"]), sample["u"])
    assert rel(problem.solve(sample["u0"]), sample["u"]) > 0.05  # and the forcing matters


def test_seeds_are_reproducible_and_per_sample():
    problem = small()
    a, b = problem.generate(seed=7), problem.generate(seed=7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(problem.generate(seed=8)["u0"], a["u0"])
    inputs = problem.sample_inputs(3, seed=4)
    assert inputs["u0"].shape == (3, 24) and inputs["f"].shape == (3, 9, 24)
    np.testing.assert_array_equal(inputs["f"][2], problem.sample_inputs(1, seed=6)["f"][0])
    np.testing.assert_array_equal(a["u0"], problem.sample_inputs(1, seed=7)["u0"][0])


def test_input_distribution_is_wdno_s():
    problem = BurgersDirichlet(41, nt=11)
    draws = [problem.bumps(seed) for seed in range(400)]
    u0, forcing = np.stack([d["u0"] for d in draws]), np.stack([d["forcing"] for d in draws])
    assert ((0 <= u0[:, 0, 0]) & (u0[:, 0, 0] <= 2) & (-2 <= u0[:, 1, 0]) & (u0[:, 1, 0] <= 0)).all()
    assert ((0.2 <= u0[:, 0, 1]) & (u0[:, 0, 1] <= 0.4) & (0.6 <= u0[:, 1, 1]) & (u0[:, 1, 1] <= 0.8)).all()
    assert ((0.05 <= u0[:, :, 2]) & (u0[:, :, 2] <= 0.15)).all()
    assert forcing.shape == (400, 8, 5) and (np.abs(forcing[..., 0]) <= 1.5).all()
    assert (forcing[:, 0, 0] != 0).all() and 0.4 < (forcing[:, 1:, 0] == 0).mean() < 0.6  # coins for bumps 2..8
    assert ((0.1 <= forcing[..., [2, 4]]) & (forcing[..., [2, 4]] <= 0.4)).all()
    # the fields are the documented formulas
    x, t = problem.grid.coords["x"], problem.grid.coords["t"]
    (a1, c1, w1), (a2, c2, w2) = draws[0]["u0"]
    def bumps(s):
        return a1 * np.exp(-(s - c1) ** 2 / (2 * w1**2)) + a2 * np.exp(-(s - c2) ** 2 / (2 * w2**2))

    inputs = problem.sample_inputs(1, seed=0)
    np.testing.assert_allclose(inputs["u0"][0], bumps(x) - bumps(0.0) * (1 - x) - bumps(1.0) * x, atol=1e-14)
    want = sum(b * np.exp(-(x - c) ** 2 / (2 * w**2)) * 2 * np.exp(-(t[:, None] / 8 - tau) ** 2 / (2 * r**2))
               for b, c, w, tau, r in draws[0]["forcing"])
    np.testing.assert_allclose(inputs["f"][0], want, atol=1e-14)


def test_generate_dataset_stores_the_family_s_samples(tmp_path):
    problem = small()
    out = generate_dataset("burgers_dirichlet", 2, tmp_path / "b.h5", resolution=24,
                           parameters={"nt": 9, "T": 2.0}, seed=3, dtype="float64", progress=False)
    data = read_fields(out)
    assert {k: v.shape for k, v in data.items()} == {"u0": (2, 24), "f": (2, 9, 24), "u": (2, 9, 24)}
    for i in range(2):
        sample = problem.generate(sample_seed(3, i))
        for k in sample:
            np.testing.assert_array_equal(data[k][i], sample[k])


# -- residual ------------------------------------------------------------------------------------


def test_rollout_residual_vanishes_on_solver_data_and_not_on_perturbed():
    problem = small()
    fields = batch(problem, (0, 1))
    r = problem.residual(fields)
    assert r.shape == fields["u"].shape and r.dtype == torch.float64
    u_t = torch.diff(fields["u"], dim=1) / problem.dt_stored
    floor = rms(r)
    # measured 1.4e-4: the time error of data and rollout at 24 points (8e-6 at 121 x 81)
    assert floor < 5e-4 * rms(u_t), (floor, rms(u_t))
    t, x = problem.grid.coords["t"], problem.grid.coords["x"]
    bump = torch.tensor(np.sin(np.pi * t / 2)[:, None] * np.sin(3 * np.pi * x)[None])
    assert rms(problem.residual({**fields, "u": fields["u"] + 1e-2 * bump})) > 30 * floor  # measured 86
    assert rms(problem.residual({**fields, "f": 1.01 * fields["f"]})) > 20 * floor  # measured 47
    # a boundary value is an error of u / dt, an interior change leaves the boundary rows alone
    moved = fields["u"].clone()
    moved[:, 4, 0] = 0.1
    want = torch.full((2,), 0.1 / problem.dt_stored, dtype=torch.float64)
    torch.testing.assert_close(problem.residual({**fields, "u": moved})[:, 4, 0], want)
    # float32 data in, float32 residual out
    assert problem.residual({k: v.float() for k, v in fields.items()}).dtype == torch.float32


def test_local_residual_floor_is_the_time_difference():
    problem = small(residual="local")
    assert problem.residual(batch(problem, (0,))).shape == (1, 9, 24)
    # the same instances stored at 4 and 16 times more times: compare the rows at t >= 0.75 (after
    # the initial layer of the forcing at the boundary)
    coarse, fine = small(residual="local", nt=33), small(residual="local", nt=129)
    floors = [rms(p.residual(batch(p, (0, 1)))[:, rows])
              for p, rows in ((coarse, slice(12, None, 4)), (fine, slice(48, None, 16)))]
    assert floors[1] < 0.1 * floors[0], floors  # second order: 1/16; measured 0.07
    fields = batch(fine, (0, 1))
    t, x = fine.grid.coords["t"], fine.grid.coords["x"]
    bump = torch.tensor(np.sin(np.pi * t / 2)[:, None] * np.sin(3 * np.pi * x)[None])
    perturbed = rms(fine.residual({**fields, "u": fields["u"] + 5e-2 * bump})[:, 48::16])
    assert perturbed > 10 * floors[1], (perturbed, floors)  # measured 19


def test_rollout_residual_gradient_matches_finite_differences():
    problem = BurgersDirichlet(12, nt=4, T=0.6)
    fields = batch(problem, (3,))
    g = torch.Generator().manual_seed(0)
    du, df, weights = (torch.randn(fields["u"].shape, generator=g, dtype=torch.float64) for _ in range(3))
    loss = lambda u, f: (problem.residual({"u": u, "f": f}) * weights).sum()  # noqa: E731
    u, f = fields["u"].clone().requires_grad_(True), fields["f"].clone().requires_grad_(True)
    gu, gf = torch.autograd.grad(loss(u, f), (u, f))
    eps = 1e-6
    with torch.no_grad():
        u, f = fields["u"], fields["f"]
        fd = (loss(u + eps * du, f + eps * df) - loss(u - eps * du, f - eps * df)) / (2 * eps)
    assert float((gu * du).sum() + (gf * df).sum()) == pytest.approx(float(fd), rel=1e-6)


def test_solver_is_differentiable_in_the_forcing():
    # the classical control baseline differentiates the final state with respect to f
    problem = BurgersDirichlet(16, nt=3, T=0.5)
    inputs = problem.sample_inputs(1, seed=1)
    u0 = torch.tensor(inputs["u0"][0])
    f = torch.tensor(inputs["f"][0], requires_grad=True)
    direction = torch.tensor(problem.sample_inputs(1, seed=2)["f"][0])
    target = torch.linspace(-1, 1, 16, dtype=torch.float64)
    loss = lambda f: ((problem.solve(u0, forcing=f)[-1] - target) ** 2).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(loss(f), f)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(f + eps * direction) - loss(f - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(fd), rel=1e-6)
    assert (grad[:, [0, -1]] == 0).all()  # boundary values of f do not enter


# -- symmetry ------------------------------------------------------------------------------------


def test_reflection_maps_solutions_to_solutions_and_keeps_the_input_law():
    problem = small()
    fields = batch(problem, (0, 1))
    names = ("f", "u")
    x = torch.stack([fields[k] for k in names], 1)
    mapped = apply_symmetry(x, "flip_x", problem=problem, fields=names)
    torch.testing.assert_close(mapped, -x.flip(-1))
    # the solver commutes with the reflection (to round-off) ...
    u0 = fields["u0"][0].numpy()
    reflected = problem.solve(-u0[::-1].copy(), forcing=-fields["f"][0].numpy()[:, ::-1].copy())
    np.testing.assert_allclose(reflected, -fields["u"][0].numpy()[:, ::-1], rtol=0, atol=1e-12)
    # ... and a reflection without the sign change is no symmetry
    unsigned = apply_symmetry(x, "flip_x", problem=problem, fields=names, odd=())
    assert rms(problem.residual(dict(zip(names, unsigned.unbind(1))))) > 1e3 * rms(problem.residual(fields))
    # the input law: E[u0(x)] = -E[u0(1 - x)] and E[f(t, x)] = -E[f(t, 1 - x)], not E[u0(1 - x)]
    inputs = problem.sample_inputs(3000, seed=0)
    for name in ("u0", "f"):
        v = inputs[name]
        se = v.std(0) / np.sqrt(len(v)) * np.sqrt(2)
        assert (np.abs(v.mean(0) + v.mean(0)[..., ::-1]) < 5 * se + 1e-12).all(), name
    u0s = inputs["u0"]
    assert (np.abs(u0s.mean(0) - u0s.mean(0)[::-1]) > 5 * u0s.std(0) / np.sqrt(len(u0s))).any()


def test_odd_extension_is_the_dirichlet_stencil():
    u = torch.tensor([0.0, 1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    ext = odd_extension(u)
    assert ext.tolist() == [0.0, 1.0, -2.0, 0.5, 0.0, -0.5, 2.0, -1.0]
    laplacian = (ext.roll(-1) - 2 * ext + ext.roll(1))[1:4]
    assert laplacian.tolist() == [-4.0, 5.5, -3.0]  # (u_{i+1} - 2u_i + u_{i-1}) with u = 0 at both ends


# -- description, configs, errors ----------------------------------------------------------------


def test_description():
    problem = small()
    sample = problem.generate(0)
    text = problem.describe(sample)
    assert "\n" not in text and text.startswith(problem.describe())
    assert "u_t + u u_x = 0.01 u_xx + f(t,x) on [0,1], u = 0 at x = 0 and 1, 24 points" in text
    assert "max|u0|" in text and "max|f|" in text and "max|u(T)|" in text


def test_bad_inputs_are_named():
    problem = small()
    with pytest.raises(ValueError, match=r"u0 must have shape \[24\] or \[B, 24\]"):
        problem.solve(np.zeros(23))
    with pytest.raises(ValueError, match="u0 contains NaN"):
        problem.solve(np.full(24, np.nan))
    with pytest.raises(ValueError, match=r"forcing array must have shape \[..., 9, 24\]"):
        problem.solve(np.zeros(24), forcing=np.zeros((8, 24)))
    with pytest.raises(ValueError, match="forcing contains NaN"):
        problem.solve(np.zeros(24), forcing=np.full((9, 24), np.inf))
    with pytest.raises(ValueError, match="strictly increasing"):
        problem.solve(np.zeros(24), t=[0.0, 0.5, 0.5])
    with pytest.raises(KeyError, match="residual needs field 'f'"):
        problem.residual({"u": torch.zeros(1, 9, 24)})
    with pytest.raises(ValueError, match=r"field 'u' must have shape \[B, 9, 24\]"):
        problem.residual({"u": torch.zeros(1, 9, 23), "f": torch.zeros(1, 9, 24)})
    with pytest.raises(ValueError, match="parameter nu must be a positive number"):
        pdes.get("burgers_dirichlet", 16, nu=0.0)
    with pytest.raises(ValueError, match="nt must be an integer >= 3"):
        pdes.get("burgers_dirichlet", 16, nt=2)
    with pytest.raises(ValueError, match="forcing_terms must be an integer >= 0"):
        pdes.get("burgers_dirichlet", 16, forcing_terms=1.5)
    with pytest.raises(ValueError, match="forcing_amplitude must be a number >= 0"):
        pdes.get("burgers_dirichlet", 16, forcing_amplitude=-1.0)
    with pytest.raises(ValueError, match="residual must be one of rollout, local"):
        pdes.get("burgers_dirichlet", 16, residual="spectral")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        problem.generate(-1)


def test_unforced_family_has_no_forcing():
    problem = small(forcing_amplitude=0.0)
    sample = problem.generate(1)
    assert (sample["f"] == 0).all()
    energy = (sample["u"] ** 2).sum(-1)
    assert (np.diff(energy) < 0).all()  # the skew-symmetric advection conserves energy; diffusion dissipates it


def test_data_config_holds_the_defaults():
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "configs" / "data" / "burgers_wdno.yaml").read_text())
    assert config["problem"] == "burgers_dirichlet"
    problem = pdes.get(config["problem"], config["resolution"], **config["parameters"])
    assert problem.parameters == type(problem).defaults
    assert config["n_train"] > config["n_test"] > 0 and config["seed"] != config["test_seed"]


@pytest.mark.parametrize("variant", [None, "tiny"])
def test_training_config_loads_and_names_the_family_s_fields(variant):
    from diffpde.training.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "burgers_wdno.yaml", variant=variant)
    generate = config.data.generate
    assert config.data.problem == "burgers_dirichlet"  # the loader checks that data.generate.from agrees
    problem = pdes.get("burgers_dirichlet", generate["resolution"], **generate["parameters"])
    assert config.data.resolution == problem.resolution
    shapes = {problem.field(name).shape for name in config.data.fields}
    assert shapes == {(problem.nt, problem.resolution)}  # the diffused fields stack as channels
    assert set(config.train.augment) <= set(problem.symmetries)
    if variant == "tiny":
        assert (problem.nt, problem.resolution) == (32, 32) and generate["n"] <= 1024
    else:
        assert (problem.nt, problem.resolution) == (81, 121) and problem.parameters["T"] == 8.0

