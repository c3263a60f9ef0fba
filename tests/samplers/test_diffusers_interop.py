"""diffusers schedulers against our solvers and against closed-form Gaussian truth."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser  # noqa: E402
from samplers.denoisers import DiscreteVPTimestep, VPDenoiser  # noqa: E402
from samplers.scheduler_bridge import sample_with_scheduler, sigmas_of  # noqa: E402
from samplers.ode import dpmpp_2m  # noqa: E402

F64 = torch.float64
# diffusers' schedulers call np.array on tensors in a way numpy 2 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")


def _gaussian(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), a @ a.T / d + 0.05 * torch.eye(d, dtype=F64))


def _mixture(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixtureDenoiser(torch.tensor([0.5, 0.3, 0.2], dtype=F64), 1.5 * torch.randn(3, d, generator=g, dtype=F64),
                                   torch.tensor([0.3, 0.5, 0.8], dtype=F64))


def _noise(d=8, batch=4, seed=1):
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _vp_network(denoiser, alphas_cumprod, prediction="epsilon"):
    """The exact network of ``denoiser`` in the VP frame: ``net(x_vp, t)`` with diffusers timesteps."""
    table = DiscreteVPTimestep(alphas_cumprod)

    def net(x_vp, t):
        t = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x_vp.shape[0])
        s = table.sigma(t).reshape(-1, *([1] * (x_vp.ndim - 1)))
        x = x_vp.to(F64) * torch.sqrt(1 + s**2)
        x0 = denoiser(x, s.flatten())
        eps = (x - x0) / s
        return eps if prediction == "epsilon" else (eps - s * x0) / torch.sqrt(1 + s**2)

    return net


def _diffusers_loop(scheduler, net, x_ve, steps):
    """The plain diffusers pipeline loop, started at the VP state of ``x_ve``."""
    scheduler.set_timesteps(steps)
    sigma_max = float(sigmas_of(scheduler, steps)[0])
    latent = (x_ve / (1 + sigma_max**2) ** 0.5).to(torch.float32)
    for t in scheduler.timesteps:
        out = net(scheduler.scale_model_input(latent, t), t).to(torch.float32)
        latent = scheduler.step(out, t, latent).prev_sample
    return latent.to(F64)  # the last level is sigma = 0, where the VP and VE frames coincide


@pytest.mark.parametrize("spacing, steps", [("linspace", 8), ("trailing", 10), ("leading", 20)])
def test_our_dpmpp_2m_matches_diffusers_dpmsolver_pp_2m(spacing, steps):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True,
        euler_at_final=False, timestep_spacing=spacing)
    den = _mixture()
    net = _vp_network(den, scheduler.alphas_cumprod)
    grid = sigmas_of(scheduler, steps)
    x = _noise() * grid[0]
    theirs = _diffusers_loop(scheduler, net, x, steps)
    ours = dpmpp_2m(VPDenoiser(net, "eps", DiscreteVPTimestep(scheduler.alphas_cumprod)), x, grid)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-5, rel
    # and the comparison is sharp: first-order steps on the same grid are far off
    first_order = dpmpp_2m(den, x, torch.cat([grid[:1], grid[-2:]]))
    assert ((first_order - theirs).norm() / theirs.norm()).item() > 1e-3


@pytest.mark.parametrize("make, prediction", [
    (lambda: diffusers.DPMSolverMultistepScheduler(), "epsilon"),
    (lambda: diffusers.DPMSolverMultistepScheduler(prediction_type="v_prediction"), "v_prediction"),
    (lambda: diffusers.UniPCMultistepScheduler(), "epsilon"),
    (lambda: diffusers.DDIMScheduler(clip_sample=False), "epsilon"),
])
def test_sample_with_scheduler_is_the_diffusers_loop(make, prediction):
    den = _mixture()
    scheduler = make()
    steps = 10
    x = _noise() * sigmas_of(scheduler, steps)[0]
    theirs = _diffusers_loop(make(), _vp_network(den, scheduler.alphas_cumprod, prediction), x, steps)
    ours = sample_with_scheduler(den, x, scheduler, steps)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-5


@pytest.mark.parametrize("make, order", [
    (lambda: diffusers.DDIMScheduler(clip_sample=False), 1),
    (lambda: diffusers.EulerDiscreteScheduler(), 1),
    (lambda: diffusers.DPMSolverMultistepScheduler(), 2),
    (lambda: diffusers.HeunDiscreteScheduler(), 2),
    (lambda: diffusers.EDMEulerScheduler(), 1),
])
def test_schedulers_converge_to_the_exact_ode_solution(make, order):
    den, scheduler = _gaussian(), make()
    errors = []
    for steps in (10, 20, 40, 100):
        grid = sigmas_of(scheduler, steps)
        x = _noise() * grid[0]
        exact = den.ode_solution(x, float(grid[0]), 0.0)
        out = sample_with_scheduler(den, x, scheduler, steps)
        errors.append(((out - exact).norm() / exact.norm()).item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < (2e-2 if order == 1 else 2e-3), errors
    # at least first order from 20 to 100 steps (grids differ slightly between step counts)
    assert errors[1] / errors[-1] > (3.0 if order == 1 else 8.0), errors


def test_fresh_state_on_every_call():
    den = _mixture()
    scheduler = diffusers.UniPCMultistepScheduler()
    x = _noise() * sigmas_of(scheduler, 8)[0]
    first = sample_with_scheduler(den, x, scheduler, 8)
    # a used scheduler object (history, step index, other step count) changes nothing
    scheduler.set_timesteps(5)
    latent = torch.randn(4, 8)
    scheduler.step(torch.randn(4, 8), scheduler.timesteps[0], latent)
    second = sample_with_scheduler(den, x, scheduler, 8)
    assert torch.equal(first, second)
    assert scheduler.step_index == 1 and len(scheduler.timesteps) == 5  # the passed object is not touched


def test_sigmas_of_matches_the_scheduler_grid():
    heun = diffusers.HeunDiscreteScheduler()
    grid = sigmas_of(heun, 6)
    assert grid.dtype == F64 and grid.numel() == 7 and grid[-1] == 0
    heun.set_timesteps(6)
    assert torch.equal(torch.unique_consecutive(heun.sigmas.to(F64)), grid)
    with pytest.raises(ValueError, match="not 0"):
        sigmas_of(diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"), 6)
    with pytest.raises(NotImplementedError, match="flow-matching"):
        sigmas_of(diffusers.FlowMatchEulerDiscreteScheduler(), 6)


def test_stats_callback_and_generator():
    den = _mixture()
    infos, stats = [], {}
    heun = diffusers.HeunDiscreteScheduler()
    x = _noise() * sigmas_of(heun, 6)[0]
    sample_with_scheduler(den, x, heun, 6, callback=infos.append, stats=stats)
    assert stats == {"nfe": 11, "steps": 6}
    assert [i["step"] for i in infos] == list(range(6)) and infos[-1]["sigma_next"] == 0.0
    ancestral = diffusers.EulerAncestralDiscreteScheduler()
    x = _noise() * sigmas_of(ancestral, 6)[0]
    a = sample_with_scheduler(den, x, ancestral, 6, generator=torch.Generator().manual_seed(3))
    b = sample_with_scheduler(den, x, ancestral, 6, generator=torch.Generator().manual_seed(3))
    c = sample_with_scheduler(den, x, ancestral, 6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_final_hook_sets_the_output():
    den = _mixture()
    target = torch.arange(8, dtype=F64)

    def project(x, sigma, step, denoised):
        if sigma == 0:
            x = x.clone()
            x[:, 0] = target[0]
        return x

    for scheduler in (diffusers.DPMSolverMultistepScheduler(), diffusers.HeunDiscreteScheduler(), diffusers.DDIMScheduler()):
        x = _noise() * sigmas_of(scheduler, 6)[0]
        out = sample_with_scheduler(den, x, scheduler, 6, hooks=[project])
        assert torch.all(out[:, 0] == target[0])


def _hook_response(scheduler, steps=50, at=25):
    """Change of the output when a hook adds ``sigma * delta`` after step ``at``, relative to the exact response."""
    den = _gaussian()
    grid = sigmas_of(scheduler, steps)
    x = _noise() * grid[0]
    delta = _noise(seed=7)
    s = float(grid[at + 1])

    def kick(y, sigma, step, denoised):
        return y + s * delta if step == at else y

    response = sample_with_scheduler(den, x, scheduler, steps, hooks=[kick]) - sample_with_scheduler(den, x, scheduler, steps)
    zero = torch.zeros_like(x)
    exact = den.ode_solution(zero + s * delta, s, 0.0) - den.ode_solution(zero, s, 0.0)  # the ODE map is affine
    return ((response - exact).norm() / exact.norm()).item()


def test_hooks_respected_by_dpmsolver_but_overridden_by_unipc_corrector():
    # DPM-Solver++ steps from the latent it is given: the hooked state propagates like the exact ODE.
    assert _hook_response(diffusers.DPMSolverMultistepScheduler()) < 0.05
    assert _hook_response(diffusers.EulerDiscreteScheduler()) < 0.05
    # UniPC's corrector rebuilds the state from its stored last_sample: almost all of the change is lost.
    assert _hook_response(diffusers.UniPCMultistepScheduler()) > 0.5
    # without the corrector UniPC respects the hook like the others
    assert _hook_response(diffusers.UniPCMultistepScheduler(disable_corrector=list(range(50)))) < 0.05


def test_scheduler_ending_above_zero_returns_the_state_at_its_last_level():
    # DEIS has no final_sigmas_type: its last step goes from sigma_min to sigma_min, the result stays noisy
    den, deis = _gaussian(), diffusers.DEISMultistepScheduler()
    with pytest.raises(ValueError, match="not 0"):
        sigmas_of(deis, 30)
    deis.set_timesteps(30)
    sigma_max, sigma_last = float(deis.sigmas[0]), float(deis.sigmas[-1])
    assert sigma_last > 0
    x = _noise() * sigma_max
    stats = {}
    out = sample_with_scheduler(den, x, deis, 30, stats=stats)
    exact = den.ode_solution(x, sigma_max, sigma_last)
    assert stats == {"nfe": 30, "steps": 30}
    assert ((out - exact).norm() / exact.norm()).item() < 1e-2


@pytest.mark.parametrize("order, steps", [(2, 8), (2, 20), (3, 10), (3, 20)])
def test_our_unipc_matches_diffusers_unipc(order, steps):
    from samplers.ode import unipc

    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type="bh2", predict_x0=True,
                                                  lower_order_final=True, final_sigmas_type="zero")
    den = _mixture()
    net = _vp_network(den, scheduler.alphas_cumprod)
    grid = sigmas_of(scheduler, steps)
    x = _noise() * grid[0]
    theirs = _diffusers_loop(scheduler, net, x, steps)
    ours = unipc(VPDenoiser(net, "eps", DiscreteVPTimestep(scheduler.alphas_cumprod)), x, grid, order=order)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-5, rel
    solved = unipc(den, x, grid, order=order, solve_rhos=True)
    assert ((solved - theirs).norm() / theirs.norm()).item() > 1e-4
