"""2D Navier-Stokes (vorticity): exact Taylor-Green and forced solutions, a manufactured nonlinear
solution, order of the time integrator, invariants, residuals and the pair consistency loss."""

from pathlib import Path

import numpy as np
import pytest
import torch

import diffpde.pdes as pdes
from diffpde.pdes.navier_stokes import NavierStokes, fno_forcing, solve_navier_stokes
from diffpde.pdes.verification import navier_stokes_taylor_green
from diffpde.pdes.verification import periodic_grid as grid  # X, Y indexed [y, x]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("m", [1, 3])
def test_taylor_green_decays_exactly(m):
    # w = A cos(2 pi m x) cos(2 pi m y) has psi proportional to w, so v . grad w = 0 exactly and
    # w(t) = w0 exp(-nu |k|^2 t) with |k|^2 = 2 (2 pi m)^2.
    w, exact = navier_stokes_taylor_green(32, m=m, nu=0.01, nt=5)
    assert rel(w, exact) < 1e-6  # measured 1e-15


def test_forced_flow_from_rest_is_exact():
    # FNO's forcing depends on x + y only, so its response has no advection:
    # w(t) = f (1 - exp(-nu |k|^2 t)) / (nu |k|^2) with |k|^2 = 8 pi^2.
    problem = NavierStokes(32, store="trajectory", nt=5)
    f = fno_forcing(32, 0.1)
    t = problem.grid.coords["t"]
    lam = 8 * np.pi**2 * 1e-3
    exact = f * ((1 - np.exp(-lam * t)) / lam)[:, None, None]
    assert rel(problem.solve(np.zeros((32, 32))), exact) < 1e-6  # measured 1e-15


def manufactured(nu):
    """w = A(t) cos(2 pi x) + B(t) cos(4 pi y) and the forcing that makes it a solution.

    psi = A cos(2 pi x)/(4 pi^2) + B cos(4 pi y)/(16 pi^2), v = (psi_y, -psi_x), so by hand
    v . grad w = -1.5 A B sin(2 pi x) sin(4 pi y).
    """
    A, dA = (lambda t: np.exp(-t)), (lambda t: -np.exp(-t))
    B, dB = (lambda t: 0.5 + 0.5 * t), (lambda t: 0.5)

    def w(t, X, Y):
        return A(t) * np.cos(2 * np.pi * X) + B(t) * np.cos(4 * np.pi * Y)

    def advection(t, X, Y):
        return -1.5 * A(t) * B(t) * np.sin(2 * np.pi * X) * np.sin(4 * np.pi * Y)

    def forcing(t, X, Y):
        cx, cy = np.cos(2 * np.pi * X), np.cos(4 * np.pi * Y)
        lap_w = -4 * np.pi**2 * A(t) * cx - 16 * np.pi**2 * B(t) * cy
        return dA(t) * cx + dB(t) * cy + advection(t, X, Y) - nu * lap_w

    return w, advection, forcing


def test_manufactured_nonlinear_solution():
    nu, n = 0.01, 32
    w, advection, forcing = manufactured(nu)
    X, Y = grid(n)
    t = np.linspace(0.0, 1.0, 3)
    exact = np.stack([w(s, X, Y) for s in t])
    got = solve_navier_stokes(torch.tensor(exact[0]), t, nu, forcing).numpy()
    assert rel(got, exact) < 1e-5  # measured 3e-7
    # The test sees the sign and size of the advection term: flipping it in f is a 30 % error.
    flipped = lambda s, X, Y: forcing(s, X, Y) - 2 * advection(s, X, Y)  # noqa: E731
    assert rel(solve_navier_stokes(torch.tensor(exact[0]), t, nu, flipped).numpy(), exact) > 0.1


def test_flow_from_rest_under_nonlinear_forcing_takes_safe_steps():
    # At rest the CFL limit alone is infinite; the forcing-induced speed must bound the first steps.
    X, Y = grid(32)
    f = np.cos(2 * np.pi * X) + np.sin(4 * np.pi * Y) + 0.5 * np.cos(2 * np.pi * (X - 2 * Y))
    t, w0 = np.array([0.0, 1.0]), torch.zeros(32, 32, dtype=torch.float64)
    w = solve_navier_stokes(w0, t, 1e-3, f)[-1].numpy()
    ref = solve_navier_stokes(w0, t, 1e-3, f, dt=0.005)[-1].numpy()
    assert rel(w, ref) < 1e-6


def test_time_integrator_is_fourth_order():
    problem = NavierStokes(32)
    w0 = torch.tensor(5 * problem.sample_inputs(1, seed=0)["w0"][0])  # faster flow: visible time error
    t, f = np.array([0.0, 0.5]), fno_forcing(32)
    solve = lambda dt: solve_navier_stokes(w0, t, 1e-3, f, dt=dt, cfl=10.0)[-1].numpy()  # noqa: E731  (dt binds)
    ref = solve(0.005)
    errors = [rel(solve(dt), ref) for dt in (0.1, 0.05)]
    assert errors[0] < 1e-3 and 12 < errors[0] / errors[1] < 20, errors  # measured 2e-4, ratio 16.0


def test_inviscid_limit_conserves_energy_and_enstrophy():
    # The dealiased Galerkin advection conserves both; a wrong advection term would not.
    n = 32
    problem = NavierStokes(n, nu=1e-12, forcing=0.0, store="trajectory", nt=3, dt=0.02)
    w = problem.solve(4 * problem.sample_inputs(1, seed=1)["w0"][0])
    k = 2 * np.pi * np.fft.fftfreq(n, 1 / n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    w_hat = np.fft.fft2(w) / n**2
    enstrophy = (np.abs(w_hat) ** 2).sum((-1, -2))
    energy = (np.abs(w_hat[:, k2 > 0]) ** 2 / k2[k2 > 0]).sum(-1)
    assert np.abs(enstrophy / enstrophy[0] - 1).max() < 1e-8  # measured 1e-10: the time error
    assert np.abs(energy / energy[0] - 1).max() < 1e-8
    assert rel(w[-1], w[0]) > 0.05  # the flow did evolve


def test_trajectory_residual_floor_order_and_perturbation():
    nu, n = 0.01, 32
    w, _, forcing = manufactured(nu)
    X, Y = grid(n)
    floors = []
    for nt in (17, 33):
        problem = NavierStokes(n, nu=nu, store="trajectory", nt=nt)
        t = problem.grid.coords["t"]
        fields = {
            "w": torch.tensor(np.stack([w(s, X, Y) for s in t]))[None],
            "f": torch.tensor(np.stack([forcing(s, X, Y) for s in t]))[None],
        }
        floors.append(float(problem.residual_norm(fields)))
    # Exact fields: only the finite difference in t is left, second order.
    assert 3.5 < floors[0] / floors[1] < 4.5, floors
    # Solver data (GRF w0, FNO forcing) at 64 x 64: the GRF's fine scales decay within the first
    # stored steps (an initial layer the difference in t does not resolve: 3 % of w_t overall);
    # after it the floor is 0.2 % of w_t. Perturbations are not small.
    problem = NavierStokes(64, store="trajectory", nt=33)
    data = torch.tensor(np.stack([problem.generate(seed)["w"] for seed in range(2)]))
    r = problem.residual({"w": data})
    assert r.shape == data.shape
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    w_t = rms(torch.diff(data, dim=1) * 32)
    assert rms(r[:, 3:]) < 5e-3 * w_t and rms(r) < 5e-2 * w_t, (rms(r[:, 3:]), rms(r), w_t)
    noisy = data + 1e-3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rms(problem.residual({"w": noisy})) > 10 * rms(r)


def test_pair_consistency_residual():
    problem = NavierStokes(32, T=0.5)
    pairs = [problem.generate(seed) for seed in range(2)]
    fields = {k: torch.tensor(np.stack([p[k] for p in pairs])) for k in ("w0", "w")}
    r = problem.residual(fields)
    assert r.shape == (2, 32, 32)
    scale = float(fields["w"].abs().max())
    # The rollout runs at Courant 1.0 instead of 0.5: only the time error separates it from the data
    # (measured 2e-5 of max |w| at this coarse 32 x 32 grid, 5e-6 at 64 x 64); at the solver's own
    # Courant number it repeats the solver's steps exactly.
    assert float(r.abs().max()) < 1e-4 * scale
    same_steps = NavierStokes(32, T=0.5, rollout_cfl=0.5).residual(fields)
    assert float(same_steps.abs().max()) < 1e-13 * scale
    swapped = {"w0": fields["w0"], "w": fields["w"].flip(0)}
    assert float(problem.residual(swapped).abs().max()) > 0.1 * scale
    # Gradients reach both fields; the one to w is -1 exactly, the one to w0 matches finite differences.
    w0 = fields["w0"][:1].clone().requires_grad_(True)
    wT = fields["w"][:1].clone().requires_grad_(True)
    weights = torch.tensor(np.random.default_rng(0).standard_normal((1, 32, 32)))
    (problem.residual({"w0": w0, "w": wT}) * weights).sum().backward()
    torch.testing.assert_close(wT.grad, -weights)
    direction = torch.tensor(problem.sample_inputs(1, seed=9)["w0"])
    eps = 1e-5
    with torch.no_grad():
        plus = (problem.residual({"w0": w0 + eps * direction, "w": wT}) * weights).sum()
        minus = (problem.residual({"w0": w0 - eps * direction, "w": wT}) * weights).sum()
    assert float((w0.grad * direction).sum()) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)


def test_trajectory_residual_is_differentiable():
    problem = NavierStokes(8, store="trajectory", nt=4)
    w = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: problem.residual({"w": w}), (w,))
    assert problem.residual({"w": w.detach().float()}).dtype == torch.float32


def test_generate_fields_and_description():
    problem = pdes.get("navier_stokes", 16)
    assert problem.field_names == ("w0", "w") and [f.role for f in problem.fields] == ["input", "output"]
    assert all(f.shape == (16, 16) and f.dims == ("y", "x") for f in problem.fields)
    sample = problem.generate(seed=2)
    assert set(sample) == {"w0", "w"} and all(v.dtype == np.float64 and v.shape == (16, 16) for v in sample.values())
    np.testing.assert_array_equal(problem.generate(seed=2)["w"], sample["w"])
    traj = NavierStokes(16, store="trajectory", nt=5)
    assert traj.field("w").shape == (5, 16, 16) and traj.field("w").dims == ("t", "y", "x")
    assert traj.grid.spacing("t") == pytest.approx(0.25) and traj.grid.spacing("x") == pytest.approx(1 / 16)
    w = traj.generate(seed=2)["w"]
    np.testing.assert_array_equal(w[0], sample["w0"])
    # Different step plans (the stored times split the steps): equal to the time error at 16 x 16.
    np.testing.assert_allclose(w[-1], sample["w"], rtol=0, atol=1e-4 * np.abs(w).max())
    assert problem.sample_inputs(3, seed=0)["w0"].shape == (3, 16, 16)
    text = problem.describe(sample)
    assert "\n" not in text and text.startswith(problem.describe())
    assert "= 0.001 Lap w + 0.1(sin(2pi(x+y)) + cos(2pi(x+y))) on [0,1)^2 periodic, 16x16" in text
    assert "GRF 343(-Lap + 49)^-2.5" in text and "rms w(T)" in text


def test_fno_amplitude_convention():
    # Per-mode variance sigma^2 (4 pi^2 |k|^2 + tau^2)^(-alpha) with sigma = 7^1.5: the point variance
    # is the sum over the resolved modes (k = 0 excluded).
    n = 32
    problem = NavierStokes(n)
    k = np.fft.fftfreq(n, 1 / n)
    mu = 4 * np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2)
    lam = 7.0**3 * (mu + 49.0) ** -2.5
    lam[0, 0] = 0.0
    w0 = problem.sample_inputs(400, seed=0)["w0"]
    assert w0.var() == pytest.approx(lam.sum(), rel=0.05)


def test_bad_inputs_are_named():
    problem = NavierStokes(16)
    with pytest.raises(ValueError, match="w0 contains NaN"):
        problem.solve(np.full((16, 16), np.nan))
    with pytest.raises(ValueError, match=r"w0 must have shape \[16, 16\]"):
        problem.solve(np.zeros((16, 15)))
    with pytest.raises(ValueError, match="strictly increasing"):
        problem.solve(np.zeros((16, 16)), t=[0.0, 0.2, 0.1])
    with pytest.raises(ValueError, match="forcing array must have shape"):
        problem.solve(np.zeros((16, 16)), forcing=np.zeros((8, 8)))
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="parameter nu must be a positive number"):
            pdes.get("navier_stokes", 16, nu=bad)
    with pytest.raises(ValueError, match="store must be 'pair' or 'trajectory'"):
        NavierStokes(16, store="movie")
    with pytest.raises(KeyError, match="residual needs field 'w0'"):
        problem.residual({"w": torch.zeros(1, 16, 16)})
    with pytest.raises(ValueError, match=r"field 'w' must have shape \[B, 16, 16\]"):
        problem.residual({"w0": torch.zeros(1, 16, 16), "w": torch.zeros(1, 3, 16, 16)})


def test_data_config_holds_the_defaults():
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "configs" / "data" / "navier_stokes.yaml").read_text())
    assert config["problem"] == "navier_stokes"
    problem = pdes.get(config["problem"], config["resolution"], **config["parameters"])
    assert problem.parameters == type(problem).defaults
    assert config["n_train"] > config["n_test"] > 0 and config["seed"] != config["test_seed"]
