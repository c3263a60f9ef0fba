"""Viscous Burgers: exact Cole-Hopf solutions, manufactured forcing, residual floor and order, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

import diffpde.pdes as pdes
from diffpde.pdes.burgers import Burgers
from diffpde.pdes.verification import burgers_cole_hopf, cole_hopf


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("nu", [0.05, 0.1])
def test_cole_hopf_exact_solution_at_256(nu):
    u, exact = burgers_cole_hopf(256, nu=nu, nt=11)
    assert np.abs(exact).max() > 1.0  # steep enough to be a real test (max |u| ~ 1.8-3.6)
    assert u.shape == (11, 256)
    assert rel(u, exact) < 1e-6  # measured 7e-9 (nu 0.05), 5e-9 (nu 0.1)


@pytest.mark.slow
def test_cole_hopf_exact_solution_at_1024():
    u, exact = burgers_cole_hopf(1024, nu=0.05, nt=11)
    assert rel(u, exact) < 1e-9  # measured 5e-11


def test_manufactured_forcing_callable_and_array():
    # u = a(t) sin(2 pi x) + b(t) cos(4 pi x) solves u_t + u u_x = nu u_xx + f for the f below.
    nu, n = 0.02, 64
    a, da = (lambda t: np.cos(3 * t)), (lambda t: -3 * np.sin(3 * t))
    b, db = (lambda t: 0.5 * t), (lambda t: 0.5 + 0 * t)

    def exact(t, x):
        return a(t) * np.sin(2 * np.pi * x) + b(t) * np.cos(4 * np.pi * x)

    def forcing(t, x):
        s, c = np.sin(2 * np.pi * x), np.cos(4 * np.pi * x)
        u = a(t) * s + b(t) * c
        u_x = 2 * np.pi * a(t) * np.cos(2 * np.pi * x) - 4 * np.pi * b(t) * np.sin(4 * np.pi * x)
        u_xx = -4 * np.pi**2 * a(t) * s - 16 * np.pi**2 * b(t) * c
        return da(t) * s + db(t) * c + u * u_x - nu * u_xx

    problem = Burgers(n, nu=nu, nt=21)
    x, t = problem.grid.coords["x"], problem.grid.coords["t"]
    want = exact(t[:, None], x)
    u = problem.solve(want[0], forcing=forcing)
    assert rel(u, want) < 1e-6  # measured 3e-8 (the time error at the default cfl 0.5)
    assert rel(problem.solve(want[0]), want) > 0.1  # the forcing matters
    # The same forcing as an array on the stored times is interpolated linearly: an O(dt^2) error.
    errors = []
    for nt in (21, 41):
        fine = Burgers(n, nu=nu, nt=nt)
        t_fine = fine.grid.coords["t"]
        u_array = fine.solve(want[0], forcing=forcing(t_fine[:, None], x))
        errors.append(rel(u_array, exact(t_fine[:, None], x)))
    assert errors[0] < 5e-3 and 3.5 < errors[0] / errors[1] < 4.5, errors  # measured 2.5e-3, ratio 4.0
    # A forcing linear in time is interpolated exactly: callable and array agree to round-off.
    g = lambda t, x: (1 + 2 * t) * np.sin(2 * np.pi * x)  # noqa: E731
    np.testing.assert_allclose(problem.solve(want[0], forcing=g(t[:, None], x)), problem.solve(want[0], forcing=g),
                               rtol=0, atol=1e-12)


def test_residual_floor_is_second_order_in_dt():
    # The exact Cole-Hopf trajectory: the only error is the finite difference in t.
    nu, n, floors = 0.05, 128, []
    for nt in (129, 257, 513):
        problem = Burgers(n, nu=nu, nt=nt)
        u = torch.tensor(cole_hopf(nu, problem.grid.coords["t"], problem.grid.coords["x"]))[None]
        floors.append(float(problem.residual_norm({"u": u})))
    ratios = floors[0] / floors[1], floors[1] / floors[2]
    assert all(3.6 < r < 4.6 for r in ratios), (floors, ratios)  # measured 4.0, 4.4
    assert floors[0] < 0.1  # measured 0.080; rms |u_t| is about 1.1 here


def test_residual_vanishes_on_solver_output_not_on_perturbed():
    problem = Burgers(128)  # default: nu 0.01, 128 x 128 space-time, GRF u0
    u = torch.tensor(np.stack([problem.generate(seed)["u"] for seed in range(2)]))
    r = problem.residual({"u": u})
    assert r.shape == u.shape
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    u_t_scale = rms(torch.diff(u, dim=1) * (problem.nt - 1))
    # The first two time steps hold an initial layer (the GRF's fine scales decay within ~dt),
    # which the second-order difference in t does not resolve; after it the floor is < 1 %.
    floor = rms(r[:, 3:])
    assert floor < 1e-2 * u_t_scale, (floor, u_t_scale)
    t, x = problem.grid.coords["t"], problem.grid.coords["x"]
    bump = torch.tensor(np.sin(np.pi * t)[:, None] * np.sin(6 * np.pi * x)[None])
    assert rms(problem.residual({"u": u + 1e-2 * bump})[:, 3:]) > 5 * floor
    # With the forcing as a field, the residual subtracts it.
    f = torch.randn_like(u)
    torch.testing.assert_close(problem.residual({"u": u, "f": f}), r - f)


def test_residual_is_differentiable():
    problem = Burgers(16, nt=5, nu=0.1)
    u = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: problem.residual({"u": u}), (u,))
    problem.residual_norm({"u": u}).sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    assert problem.residual({"u": u.detach().float()}).dtype == torch.float32


def test_solver_gradient_matches_finite_differences():
    problem = Burgers(32, nt=3, nu=0.05, T=0.2)
    u0 = torch.tensor(problem.sample_inputs(1, seed=3)["u0"][0], requires_grad=True)
    direction = torch.tensor(problem.sample_inputs(1, seed=4)["u0"][0])
    weights = torch.linspace(-1, 1, 32, dtype=torch.float64)
    loss = lambda u0: (problem.solve(u0)[-1] * weights).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(loss(u0), u0)
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(u0 + eps * direction) - loss(u0 - eps * direction)) / (2 * eps)
    assert float(grad @ direction) == pytest.approx(float(fd), rel=1e-6)
    # Gradients also reach a forcing given as an array (the control of WDNO's Burgers task).
    f = torch.zeros(3, 32, dtype=torch.float64, requires_grad=True)
    f_direction = torch.outer(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), direction)
    loss_f = lambda f: (problem.solve(u0.detach(), forcing=f)[-1] * weights).sum()  # noqa: E731
    (grad_f,) = torch.autograd.grad(loss_f(f), f)
    with torch.no_grad():
        fd = (loss_f(f + eps * f_direction) - loss_f(f - eps * f_direction)) / (2 * eps)
    assert float((grad_f * f_direction).sum()) == pytest.approx(float(fd), rel=1e-6)


def test_generate_fields_conservation_and_description():
    problem = pdes.get("burgers", 64)
    assert problem.field_names == ("u0", "u") and [f.role for f in problem.fields] == ["input", "output"]
    assert problem.field("u").shape == (64, 64) and problem.field("u").dims == ("t", "x")
    assert problem.grid.spacing("x") == pytest.approx(1 / 64) and problem.grid.spacing("t") == pytest.approx(1 / 63)
    sample = problem.generate(seed=5)
    assert set(sample) == {"u0", "u"} and all(v.dtype == np.float64 for v in sample.values())
    np.testing.assert_array_equal(sample["u"][0], sample["u0"])
    np.testing.assert_array_equal(problem.generate(seed=5)["u"], sample["u"])
    assert not np.allclose(problem.generate(seed=6)["u0"], sample["u0"])
    # Periodic Burgers conserves the mean (zero for the GRF) and dissipates energy.
    assert np.abs(sample["u"].mean(-1)).max() < 1e-14
    energy = (sample["u"] ** 2).mean(-1)
    assert (np.diff(energy) < 1e-15).all() and energy[-1] < 0.9 * energy[0]
    assert problem.sample_inputs(3, seed=0)["u0"].shape == (3, 64)
    text = problem.describe(sample)
    assert "\n" not in text and text.startswith(problem.describe())
    assert "u_t + u u_x = 0.01 u_xx on [0,1) periodic, 64 points" in text and "max|u0|" in text


def test_batched_solve_equals_single_solves():
    # With a step bound below every sample's CFL limit, batched and single solves take the same steps.
    problem = Burgers(32, nt=5, dt=2e-3)
    u0 = problem.sample_inputs(3, seed=0)["u0"]
    batch = problem.solve(u0)
    assert batch.shape == (3, 5, 32)
    for i in range(3):
        np.testing.assert_allclose(batch[i], problem.solve(u0[i]), rtol=0, atol=1e-13)


def test_bad_inputs_are_named():
    problem = Burgers(32)
    u0 = np.zeros(32)
    with pytest.raises(ValueError, match="NaN"):
        problem.solve(np.full(32, np.nan))
    with pytest.raises(ValueError, match=r"u0 must have shape \[32\]"):
        problem.solve(np.zeros(31))
    with pytest.raises(ValueError, match="strictly increasing"):
        problem.solve(u0, t=[0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        problem.solve(u0, t=[0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="forcing array must have shape"):
        problem.solve(u0, forcing=np.zeros((3, 32)))
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="parameter nu must be a positive number"):
            pdes.get("burgers", 32, nu=bad)
    with pytest.raises(ValueError, match="nt must be None or an integer >= 3"):
        Burgers(32, nt=2)
    with pytest.raises(ValueError, match=r"field 'u' must have shape \[B, 32, 32\]"):
        problem.residual({"u": torch.zeros(1, 31, 32)})
    with pytest.raises(KeyError, match="residual needs field 'u'"):
        problem.residual({"w": torch.zeros(1, 32, 32)})


def test_data_config_holds_the_defaults():
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "configs" / "data" / "burgers.yaml").read_text())
    assert config["problem"] == "burgers"
    problem = pdes.get(config["problem"], config["resolution"], **config["parameters"])
    assert problem.parameters == type(problem).defaults
    assert config["n_train"] > config["n_test"] > 0 and config["seed"] != config["test_seed"]
