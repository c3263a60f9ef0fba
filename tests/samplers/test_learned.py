"""Learned few-step solvers: the initial solver is its base solver, the fit path is the sampler, fitted solvers beat
their start on held-out noises, the grid stays valid, state round trip, hooks/callbacks/NFE, guidance, and the
exact Gaussian posterior sampled with a solver fitted on the prior."""

import json
import math

import pytest
import torch

import samplers
from samplers import schedules
from samplers._core import SOLVERS, check_sigmas
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.covariance import CovarianceGuidance
from samplers.guidance import DPSGuidance
from samplers.learned import BASES, LearnedSolver, _Parameters, evaluate, fit_learned_solver
from samplers.reference import reference

F64 = torch.float64
S_MAX, S_MIN = 80.0, 0.002


def gaussian(d: int = 4, seed: int = 0, low: float = 0.1, high: float = 3.0) -> GaussianDenoiser:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(math.log10(low), math.log10(high), d, dtype=F64)
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), q @ torch.diag(lam) @ q.T)


def mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(1)
    return GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), 2.0 * torch.randn(2, 2, 3, generator=g, dtype=F64),
                                   torch.tensor([0.4, 0.9], dtype=F64))


def overlapping_mixture() -> GaussianMixtureDenoiser:
    """Two overlapping components: curved trajectories without mode flips between nearby starts."""
    g = torch.Generator().manual_seed(1)
    return GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), 0.5 * torch.randn(2, 2, 3, generator=g, dtype=F64),
                                   torch.tensor([0.3, 1.0], dtype=F64))


def noise(n: int, shape, seed: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def gaussian_fit():
    """A learned 4-step solver fitted on the exact ODE of a 4-d Gaussian (fit noises seed 3, never evaluated on)."""
    den = gaussian()
    fit = noise(48, (4,), seed=3)
    solver = fit_learned_solver(den, fit, den.ode_solution(S_MAX * fit, S_MAX, 0.0), nfe=4, sigma_min=S_MIN,
                                sigma_max=S_MAX, steps=60, lr=0.02, batch_size=12)
    return den, solver


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("steps", [1, 3, 6, 20])
def test_initial_solver_is_its_base_solver(base, steps):
    den = mixture()
    x = S_MAX * noise(16, den.shape, seed=0)
    grid = schedules.karras(steps, S_MIN, S_MAX)
    solver = LearnedSolver.initial(grid, base)
    ours = samplers.sample(den, x, grid, solver="learned", params=solver)
    assert (ours - SOLVERS[base](den, x, grid)).abs().max() < 1e-12


def test_fit_path_is_the_sampler():
    """The differentiable unrolled solver the fit trains equals the registered sampler on the result (float64)."""
    den = mixture()
    x = S_MAX * noise(8, den.shape, seed=0)
    start = torch.tensor([S_MAX, 9.0, 1.5, 0.3, 0.05, 0.0], dtype=F64)
    params = _Parameters(LearnedSolver.initial(start, "dpmpp_3m", history=4), {"sigmas", "weights", "shifts", "scales"},
                         sigma_floor=S_MIN)
    assert torch.allclose(params.grid(), start, rtol=1e-13, atol=0)                # the fit starts on its grid
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
        unrolled = params(den, x)
    solver = params.solver(den.shape)
    assert (solver.weights[torch.triu_indices(5, 4, 1).unbind()] == 0).all()     # no weight on missing history
    assert (samplers.sample(den, x, solver.sigmas, solver="learned", params=solver) - unrolled).abs().max() < 1e-12


def test_per_channel_weights():
    """Equal per-channel weights are the shared solver; the per-channel fit path is the sampler."""
    den = mixture()                                                              # states [B, 2, 3]: 2 channels
    x = S_MAX * noise(8, den.shape, seed=0)
    shared = LearnedSolver.initial(schedules.karras(4, S_MIN, S_MAX))
    split = LearnedSolver(shared.sigmas, shared.weights[..., None].repeat(1, 1, 2), shared.log_shifts)
    assert split.channels == 2 and split.metadata()["channels"] == 2
    run = lambda s, z=x: samplers.sample(den, z, s.sigmas, solver="learned", params=s)  # noqa: E731
    assert (run(split) - run(shared)).abs().max() < 1e-14
    with pytest.raises(ValueError, match="channels"):
        run(split, torch.zeros(2, 3, 2, dtype=F64))
    params = _Parameters(split, {"weights", "scales"})
    assert params.alpha.shape == (4, 2)                                        # per-channel scales too
    with torch.no_grad():
        params.delta.add_(0.2 * torch.randn(params.delta.shape, generator=torch.Generator().manual_seed(0), dtype=F64))
        params.alpha.add_(0.1 * torch.randn(params.alpha.shape, generator=torch.Generator().manual_seed(1), dtype=F64))
        unrolled = params(den, x)
    fitted = params.solver(den.shape)
    assert not torch.equal(fitted.weights[..., 0], fitted.weights[..., 1])
    assert not torch.equal(fitted.log_scales[:, 0], fitted.log_scales[:, 1])
    assert (run(fitted) - unrolled).abs().max() < 1e-12
    fit = noise(8, den.shape, seed=2)
    ref = reference(den, S_MAX * fit, (S_MAX, S_MIN))
    out = fit_learned_solver(den, fit, ref, nfe=3, sigma_min=S_MIN, sigma_max=S_MAX, steps=4, val_fraction=0,
                             per_channel=True)
    assert out.weights.shape == (3, 3, 2) and out.info["per_channel"]
    again = fit_learned_solver(den, fit, ref, nfe=3, sigma_min=S_MIN, sigma_max=S_MAX, steps=0, val_fraction=0,
                               init_sigmas=out, solve_final=False)           # continue from a solver: starts on it
    assert torch.allclose(again.weights, out.weights, rtol=0, atol=1e-12) and again.info["per_channel"]
    assert torch.allclose(again.sigmas, out.sigmas, rtol=1e-12, atol=0)


@pytest.mark.parametrize("per_channel", [False, True])
def test_final_step_least_squares(per_channel):
    """``solve_final_step`` puts the last step's weights at the optimum of the training error: any change raises it."""
    den = mixture()
    fit = noise(16, den.shape, seed=2)
    x, ref = S_MAX * fit, reference(den, S_MAX * fit, (S_MAX, S_MIN))
    start = LearnedSolver.initial(schedules.karras(4, S_MIN, S_MAX))
    if per_channel:
        start = LearnedSolver(start.sigmas, start.weights[..., None].repeat(1, 1, 2), start.log_shifts)
    params = _Parameters(start, {"weights"})
    loss = lambda: float((params(den, x) - ref).pow(2).mean().detach())  # noqa: E731
    before = loss()
    params.solve_final_step(den, x, ref, batch_size=5)
    best = loss()
    assert best < before
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        with torch.no_grad():
            kick = 1e-3 * torch.randn(params.delta[-1].shape, generator=g, dtype=F64)
            params.delta[-1] += kick
            assert loss() > best
            params.delta[-1] -= kick


def test_grid_stays_valid_for_any_logits():
    start = schedules.karras(8, S_MIN, S_MAX)
    params = _Parameters(LearnedSolver.initial(start), {"sigmas"}, sigma_floor=float(start[-2]))
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 3.0, 30.0):
        with torch.no_grad():
            params.logits.copy_(scale * torch.randn(params.logits.shape, generator=g, dtype=F64))
        grid = check_sigmas(params.grid())
        assert grid.numel() == 9 and grid[0] == start[0] and grid[-2] >= start[-2] and grid[-1] == 0


def test_fit_beats_its_start_on_held_out_noises():
    """Mixture, 4 evaluations: fitted on 48 noises (a quarter for validation), evaluated on 64 others (~7x smaller)."""
    den = overlapping_mixture()
    fit, held_out = noise(48, den.shape, seed=2), noise(64, den.shape, seed=5)
    fit_ref, held_ref = (reference(den, S_MAX * z, (S_MAX, S_MIN)) for z in (fit, held_out))
    solver = fit_learned_solver(den, fit, fit_ref, nfe=4, sigma_min=S_MIN, sigma_max=S_MAX, steps=60, lr=0.02,
                                batch_size=12)
    start = LearnedSolver.initial(schedules.karras(4, S_MIN, S_MAX))
    before, after = evaluate(den, start, held_out, held_ref), evaluate(den, solver, held_out, held_ref)
    assert after < 0.3 * before
    info = solver.info
    assert info["val_rms"] <= info["init_val_rms"] and info["n_train"] + info["n_val"] == 48 and info["n_val"] == 12
    grid = check_sigmas(solver.sigmas)
    assert grid[0] == start.sigmas[0] and grid[-2] == pytest.approx(float(start.sigmas[-2]), rel=1e-9)
    assert not torch.equal(grid, start.sigmas)


def test_gaussian_fit_is_near_exact(gaussian_fit):
    den, solver = gaussian_fit
    held_out = noise(256, (4,), seed=7)
    exact = den.ode_solution(S_MAX * held_out, S_MAX, 0.0)
    start = LearnedSolver.initial(schedules.karras(4, S_MIN, S_MAX))
    assert evaluate(den, solver, held_out, exact) < 0.05 * evaluate(den, start, held_out, exact)


def test_posterior_with_covariance_guidance(gaussian_fit):
    """A solver fitted on the prior's ODE, driven by the exact posterior denoiser (covariance guidance of a Gaussian
    prior with a linear observation), against the exact posterior: per sample against the posterior's own ODE end
    points, and its moments against the closed form. The fit was on the unguided ODE, so the gain shrinks (on the
    prior the error falls ~75x; here ~2.5x) but the learned solver stays well ahead of its start."""
    den, solver = gaussian_fit
    g = torch.Generator().manual_seed(3)
    A, noise_var = torch.randn(2, 4, generator=g, dtype=F64), 0.05
    y = A @ den.sample(1, g).reshape(-1) + noise_var**0.5 * torch.randn(2, generator=g, dtype=F64)
    prec = torch.linalg.inv(den.cov)
    cov = torch.linalg.inv(prec + A.T @ A / noise_var)
    mean = cov @ (prec @ den.mean + A.T @ y / noise_var)
    guided = CovarianceGuidance(den, lambda x0: x0.reshape(x0.shape[0], -1) @ A.T, y, noise_var, cg_iters=4)
    z = noise(4000, (4,), seed=11)
    exact = GaussianDenoiser(mean, cov).ode_solution(S_MAX * z, S_MAX, 0.0)
    errors = {}
    for name, s in (("start", LearnedSolver.initial(schedules.karras(4, S_MIN, S_MAX))), ("learned", solver)):
        stats = {}
        out = samplers.sample(guided, S_MAX * z, s.sigmas, solver="learned", params=s, stats=stats)
        assert stats["nfe"] == 4
        errors[name] = float((out - exact).pow(2).mean().sqrt())
        if name == "learned":
            se = (torch.diag(cov) / z.shape[0]).sqrt()
            assert ((out.mean(0) - mean).abs() < 5 * se + 0.02).all()
            ratio = out.var(0) / torch.diag(cov)
            assert ((ratio > 0.8) & (ratio < 1.1)).all()
    assert errors["learned"] < 0.6 * errors["start"]
    assert errors["learned"] < 0.08 * float(torch.diag(cov).mean().sqrt())


def test_state_round_trip(gaussian_fit):
    den, solver = gaussian_fit
    meta = json.loads(json.dumps(solver.metadata()))
    assert meta["kind"] == "learned_solver" and meta["nfe"] == 4 and meta["shape"] == [4]
    assert meta["sigma_max"] == pytest.approx(S_MAX) and meta["sigma_min"] == pytest.approx(S_MIN) and "val_rms" in meta["info"]
    tensors = {k: v.clone() for k, v in solver.state_dict().items()}
    again = LearnedSolver.from_state(tensors, meta)
    x = S_MAX * noise(8, (4,), seed=1)
    run = lambda s: samplers.sample(den, x, s.sigmas, solver="learned", params=s)  # noqa: E731
    assert torch.equal(run(again), run(solver))
    older = LearnedSolver.from_state({k: v for k, v in tensors.items() if k != "log_scales"}, meta)
    assert torch.equal(older.log_scales, torch.zeros(4, dtype=F64))        # states saved before scales existed
    with pytest.raises(ValueError, match="log_scales"):
        LearnedSolver(solver.sigmas, solver.weights, solver.log_shifts, log_scales=torch.zeros(3))
    with pytest.raises(ValueError, match="kind"):
        LearnedSolver.from_state(tensors, {**meta, "kind": "covariance"})
    with pytest.raises(ValueError, match="log_shifts"):
        LearnedSolver.from_state({k: v for k, v in tensors.items() if k != "log_shifts"}, meta)
    with pytest.raises(ValueError, match="shape"):
        samplers.sample(den, torch.zeros(2, 5, dtype=F64), solver.sigmas, solver="learned", params=solver)


def test_hooks_callback_nfe_and_shifts():
    """Hooks run at step ends and what they return is the next state (as in dpmpp_2m); shifts move only the
    denoiser's noise level; the callback and stats count one evaluation per step."""
    den = mixture()
    x = S_MAX * noise(4, den.shape, seed=0)
    grid = schedules.karras(5, S_MIN, S_MAX)
    seen = []

    def hook(state, sigma, step, denoised):
        seen.append((step, sigma))
        return 0.9 * state

    start = LearnedSolver.initial(grid)
    ours = samplers.sample(den, x, grid, solver="learned", params=start, hooks=[hook])
    assert seen == [(i, float(grid[i + 1])) for i in range(5)]
    assert (ours - samplers.sample(den, x, grid, solver="dpmpp_2m", hooks=[hook])).abs().max() < 1e-12

    levels, infos, stats = [], [], {}

    def spy(state, sigma):
        levels.append(float(sigma[0]))
        return den(state, sigma)

    shifted = LearnedSolver(grid, start.weights, torch.linspace(-0.2, 0.2, 5, dtype=F64))
    samplers.sample(spy, x, None, solver="learned", params=shifted, callback=infos.append, stats=stats)
    assert levels == pytest.approx((grid[:-1] * torch.exp(shifted.log_shifts)).tolist(), rel=1e-12)
    assert [info["nfe"] for info in infos] == [1, 2, 3, 4, 5] and stats == {"nfe": 5, "steps": 5}
    assert [info["sigma_next"] for info in infos] == grid[1:].tolist()


def test_guidance_wrapper_composes():
    """A DPS-type wrapper: one vector-Jacobian product per evaluation, and the samples move towards the observation."""
    den = mixture()
    x = S_MAX * noise(16, den.shape, seed=0)
    grid = schedules.karras(6, S_MIN, S_MAX)
    solver = LearnedSolver.initial(grid, history=3)
    target = torch.full(den.shape, 1.5, dtype=F64)
    loss = lambda x0: (x0 - target).pow(2).flatten(1).sum(1)  # noqa: E731
    guided = DPSGuidance(den, loss, weight=0.2)
    free = samplers.sample(den, x, grid, solver="learned", params=solver)
    pulled = samplers.sample(guided, x, grid, solver="learned", params=solver)
    assert guided.calls == 6 and guided.vjp_count == 6
    assert loss(pulled).mean() < 0.5 * loss(free).mean()


def test_errors_are_named():
    grid = schedules.karras(4, S_MIN, S_MAX)
    solver = LearnedSolver.initial(grid)
    den = mixture()
    x = S_MAX * noise(2, den.shape, seed=0)
    with pytest.raises(ValueError, match="own grid"):
        samplers.sample(den, x, schedules.karras(4, S_MIN, 60.0), solver="learned", params=solver)
    with pytest.raises(TypeError, match="params"):
        samplers.sample(den, x, grid, solver="learned")
    with pytest.raises(ValueError, match="weights must be"):
        LearnedSolver(grid, torch.zeros(3, 2, dtype=F64), torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="history"):
        LearnedSolver.initial(grid, "dpmpp_3m", history=2)
    fit = noise(8, den.shape, seed=0)
    with pytest.raises(ValueError, match="steps, nfe"):
        fit_learned_solver(den, fit, fit, nfe=5, sigma_min=S_MIN, sigma_max=S_MAX, init_sigmas=grid)
    with pytest.raises(ValueError, match="sigma_min"):
        fit_learned_solver(den, fit, fit, nfe=4, sigma_min=0.01, sigma_max=S_MAX, init_sigmas=grid)
    with pytest.raises(ValueError, match="sigma_max"):
        fit_learned_solver(den, fit, fit, nfe=4, sigma_min=S_MIN, sigma_max=60.0, init_sigmas=grid)
    with pytest.raises(ValueError, match="unknown parts"):
        fit_learned_solver(den, fit, fit, nfe=4, sigma_min=S_MIN, sigma_max=S_MAX, learn=("grid",))


def test_slack_and_fixed_parts():
    """LD3's slack runs; parts not learned stay at their start (grid only: base weights on the new grid)."""
    den = mixture()
    fit = noise(16, den.shape, seed=2)
    ref = reference(den, S_MAX * fit, (S_MAX, S_MIN))
    start = schedules.karras(3, S_MIN, S_MAX)
    slack = fit_learned_solver(den, fit, ref, nfe=3, sigma_min=S_MIN, sigma_max=S_MAX, steps=6, val_every=2, slack=0.05)
    assert slack.info["slack"] == 0.05 and check_sigmas(slack.sigmas).numel() == 4
    grid_only = fit_learned_solver(den, fit, ref, nfe=3, sigma_min=S_MIN, sigma_max=S_MAX, steps=6, val_fraction=0,
                                   learn=("sigmas",), init_sigmas=start)
    assert (grid_only.log_shifts == 0).all() and not torch.equal(grid_only.sigmas, start)
    assert torch.allclose(grid_only.weights, LearnedSolver.initial(grid_only.sigmas).weights, rtol=0, atol=1e-14)
    above = torch.tensor([S_MAX, 5.0, 0.5, 0.0], dtype=F64)                      # last level free above sigma_min
    moved = fit_learned_solver(den, fit, ref, nfe=3, sigma_min=S_MIN, sigma_max=S_MAX, steps=6, val_fraction=0,
                               learn=("sigmas",), init_sigmas=above, lr=0.05)
    assert moved.sigmas[-2] != 0.5 and moved.sigmas[-2] >= S_MIN
